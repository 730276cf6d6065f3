"""Request-path benchmark: what baton's front door costs on top of the model work.

Measures, in one run and at concurrency 1 and 16, over keep-alive HTTP connections:

  (a) in-process: ``SemanticRouter.decide(text)`` + the sentiment specialist's
      ``predict([text])`` in this process (16 threads share the objects at concurrency 16);
  (b) a bare Ray Serve no-op deployment over HTTP, a second Serve application on
      ``/noop`` in the same Serve instance;
  (c) baton's ``POST /v1/route`` with a text the router sends to the sentiment agent.

Then ``overhead = (p50(c) - p50(a)) / p50(b)`` at concurrency 1 (target <= 1.5) and the
throughput of (c) at concurrency 16 over that at concurrency 1 (target >= 2). Prints a
table and rewrites the "## Request path" section of ``docs/benchmarks.md``.

Run: ``python -m benchmarks.request_path [--requests N] [--warmup N]`` (``make bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shlex
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "orchestra.yaml"
DOC = REPO / "docs" / "benchmarks.md"
SECTION = "## Request path"
DOC_HEADER = (
    "# Benchmarks\n\n"
    "Measurements of baton made with the scripts in `benchmarks/`. Each script rewrites its own\n"
    "section below; numbers depend on the machine and on what else runs on it.\n"
)

AGENT = "sentiment"
TEXT = "I absolutely loved this hotel: the staff were wonderful and the room was spotless."
NOOP_APP, NOOP_PREFIX = "noop", "/noop"
CONCURRENCIES = (1, 16)
OVERHEAD_TARGET = 1.5  # at most
SCALING_TARGET = 2.0  # at least
# The default rate limit (100 req/s, burst 200 per key) would answer 429 within a run;
# raised so the benchmark measures the path, not the limiter (its check still runs).
BENCH_RATE_LIMIT = {"requests_per_s": 1_000_000.0, "burst": 1_000_000}
PATHS = {
    "a": "(a) in-process decide + predict",
    "b": "(b) Serve no-op over HTTP",
    "c": "(c) baton POST /v1/route",
}


@dataclass
class Cell:
    path: str
    concurrency: int
    latencies_s: list[float]
    wall_s: float
    errors: int = 0
    server_ms: list[float] = field(default_factory=list)  # baton's own latency_ms, (c) only
    replicas: dict[str, int] = field(default_factory=dict)  # (c) only: RUNNING replicas during the cell

    @property
    def n(self) -> int:
        return len(self.latencies_s)

    def p(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies_s) * 1000, q))

    @property
    def throughput(self) -> float:
        return self.n / self.wall_s if self.wall_s > 0 else float("nan")


# -- environment -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def package(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return "unknown"


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 0


# -- the orchestra under test --------------------------------------------------------------


def bench_config(config_path: Path, storage_uri: str, drop: list[str]):
    """The default orchestra with storage in a temporary directory, the rate limit raised
    and the agents in ``drop`` removed; router, ingress and the sentiment agent unchanged.
    """
    from serve.builder import load

    config = load(config_path)
    if config.agent(AGENT) is None:
        raise SystemExit(f"{config_path} has no {AGENT!r} agent")
    unknown = sorted(set(drop) - set(config.agent_names()))
    if unknown or AGENT in drop:
        raise SystemExit(f"--drop: cannot drop {sorted(set(drop) & {AGENT}) or unknown}")
    auth = config.auth.model_copy(update={"rate_limit": config.auth.rate_limit.model_copy(update=BENCH_RATE_LIMIT)})
    agents = [a for a in config.agents if a.name not in drop]
    return config.model_copy(update={"storage": storage_uri, "auth": auth, "agents": agents})


def noop_application():
    from ray import serve

    @serve.deployment(name="NoOp", ray_actor_options={"num_cpus": 0.1})
    class NoOp:
        async def __call__(self, request) -> dict:
            return {"ok": True}

    return NoOp.bind()


def replica_counts(app: str) -> dict[str, int]:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return {}
    return {
        name: sum(n for state, n in d.replica_states.items() if str(getattr(state, "value", state)) == "RUNNING")
        for name, d in status.deployments.items()
    }


def app_settled(app: str) -> bool:
    """No deployment of ``app`` is scaling or has replicas starting or stopping."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return False
    for deployment in status.deployments.values():
        if str(getattr(deployment.status, "value", deployment.status)) != "HEALTHY":
            return False
        for state, count in deployment.replica_states.items():
            if count and str(getattr(state, "value", state)) != "RUNNING":
                return False
    return True


# -- measuring -------------------------------------------------------------------------


def run_threads(fn: Callable[[], None], concurrency: int, n: int, advance: Callable[[], None]) -> tuple[list[float], float]:
    """``n`` calls of ``fn`` from ``concurrency`` threads; per-call latencies and wall time."""
    counter = itertools.count()
    latencies: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = []
        while next(counter) < n:
            started = time.perf_counter()
            fn()
            mine.append(time.perf_counter() - started)
            advance()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, name=f"bench-{i}") for i in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - started


async def run_async(
    call: Callable[[], Awaitable[Any]],
    concurrency: int,
    n: int | None,
    advance: Callable[[], None],
    stop: asyncio.Event | None = None,
) -> tuple[list[float], float, list[Any]]:
    """``n`` awaits of ``call`` (or until ``stop``) from ``concurrency`` tasks."""
    counter = itertools.count()
    latencies: list[float] = []
    results: list[Any] = []

    async def worker() -> None:
        while (n is None or next(counter) < n) and not (stop is not None and stop.is_set()):
            started = time.perf_counter()
            result = await call()
            latencies.append(time.perf_counter() - started)
            results.append(result)
            advance()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started, results


class Bench:
    def __init__(self, args: argparse.Namespace, console: Console, config):
        self.args = args
        self.config = config
        self.console = console
        self.cells: list[Cell] = []
        self.stages: dict[str, float] = {}
        self.notes: list[str] = []

    def progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            refresh_per_second=4,
            transient=False,
        )

    # (a) ------------------------------------------------------------------------------

    def in_process(self, router, specialist) -> None:
        def once() -> None:
            router.decide(TEXT)
            specialist.predict([TEXT])

        with self.progress() as progress:
            for concurrency in CONCURRENCIES:
                task = progress.add_task(f"{PATHS['a']} c={concurrency}", total=self.args.warmup + self.args.requests)
                advance = lambda: progress.advance(task)  # noqa: E731
                run_threads(once, concurrency, self.args.warmup, advance)
                latencies, wall = run_threads(once, concurrency, self.args.requests, advance)
                self.cells.append(Cell("a", concurrency, latencies, wall))

    # (b) and (c) ----------------------------------------------------------------------

    async def over_http(self, base_url: str, key: str, autoscaled: bool) -> None:
        import aiohttp

        body = json.dumps({"text": TEXT}).encode()
        headers = {"Content-Type": "application/json"}
        auth = {**headers, "Authorization": f"Bearer {key}"}
        connector = aiohttp.TCPConnector(limit=max(CONCURRENCIES) * 2, keepalive_timeout=60)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as session:

            async def noop() -> tuple[int, dict | None]:
                async with session.post(NOOP_PREFIX, data=body, headers=headers) as response:
                    await response.read()
                    return response.status, None

            async def route() -> tuple[int, dict | None]:
                async with session.post("/v1/route", data=body, headers=auth) as response:
                    payload = await response.read()
                    return response.status, (json.loads(payload) if response.status == 200 else payload[:300])

            status, payload = await route()
            if status != 200 or payload.get("agent") != AGENT or payload.get("routed_by") != "router":
                raise SystemExit(f"baton did not route the benchmark text to {AGENT!r}: {status} {payload}")

            with self.progress() as progress:
                for path, call in (("b", noop), ("c", route)):
                    for concurrency in CONCURRENCIES:
                        total = self.args.warmup + self.args.requests
                        task = progress.add_task(f"{PATHS[path]} c={concurrency}", total=total)
                        advance = lambda: progress.advance(task)  # noqa: E731
                        await run_async(call, concurrency, self.args.warmup, advance)
                        if path == "c" and concurrency > 1 and autoscaled:
                            await self.settle(call, concurrency, progress)
                        before = await asyncio.to_thread(replica_counts, "baton") if path == "c" else {}
                        latencies, wall, results = await run_async(call, concurrency, self.args.requests, advance)
                        cell = Cell(path, concurrency, latencies, wall)
                        for status, payload in results:
                            ok = status == 200 and (path == "b" or payload.get("agent") == AGENT)
                            cell.errors += not ok
                            if path == "c" and ok and "latency_ms" in payload:
                                cell.server_ms.append(payload["latency_ms"])
                        if path == "c":
                            after = await asyncio.to_thread(replica_counts, "baton")
                            cell.replicas = after
                            if before != after:
                                self.notes.append(
                                    f"(c) c={concurrency}: replicas changed during the cell: {before} -> {after}"
                                )
                        self.cells.append(cell)

    async def settle(self, call, concurrency: int, progress: Progress) -> None:
        """Keep load on until the autoscaler has reacted (upscale delay) and no replica is
        starting, so the measured cell does not include a replica start-up.
        """
        from serve.builder import APP_NAME

        stop = asyncio.Event()
        task = progress.add_task(f"    settling autoscaling under c={concurrency} load", total=None)
        load = asyncio.create_task(run_async(call, concurrency, None, lambda: progress.advance(task), stop))
        started = time.monotonic()
        try:
            while time.monotonic() - started < self.args.settle_max:
                await asyncio.sleep(1.0)
                if time.monotonic() - started >= self.args.settle_min and await asyncio.to_thread(app_settled, APP_NAME):
                    break
            else:
                self.notes.append(f"autoscaling had not settled after {self.args.settle_max:.0f} s of load")
        finally:
            stop.set()
            await load
        counts = await asyncio.to_thread(replica_counts, APP_NAME)
        self.notes.append(
            f"(c) c={concurrency} was measured after {time.monotonic() - started:.0f} s of settling load; "
            f"RUNNING replicas then: {counts}"
        )
        progress.update(task, description=f"    settled after {time.monotonic() - started:.0f} s: {counts}", total=1, completed=1)

    # stages ---------------------------------------------------------------------------

    def measure_stages(self, embedder, router, specialist, n: int) -> None:
        """Single-threaded p50 of the parts of the path, to see where (c)'s time goes."""
        from ray import serve

        from serve.builder import APP_NAME, deployment_name

        first = self.config.agent(AGENT).versions[0].version
        sentiment = serve.get_deployment_handle(deployment_name(AGENT, first), app_name=APP_NAME)
        noop = serve.get_deployment_handle("NoOp", app_name=NOOP_APP)
        embedding = embedder([TEXT])[0]
        stages: dict[str, Callable[[], Any]] = {
            "embed 1 text (MiniLM, in-process)": lambda: embedder([TEXT]),
            "decide given the embedding (in-process)": lambda: router.decide(TEXT, embedding=embedding),
            "sentiment predict (in-process)": lambda: specialist.predict([TEXT]),
            f"DeploymentHandle call to {AGENT}.{first}.predict (from the driver)": lambda: sentiment.predict.remote(
                TEXT, {}
            ).result(),
            "DeploymentHandle call to the no-op (from the driver)": lambda: noop.remote(None).result(),
        }
        for name, fn in stages.items():
            for _ in range(max(5, n // 5)):
                fn()
            latencies, _ = run_threads(fn, 1, n, lambda: None)
            self.stages[name] = float(np.percentile(np.asarray(latencies) * 1000, 50))


# -- reporting -------------------------------------------------------------------------


def cell_of(cells: list[Cell], path: str, concurrency: int) -> Cell:
    return next(c for c in cells if c.path == path and c.concurrency == concurrency)


def ratios(cells: list[Cell]) -> tuple[float, float]:
    a1, b1, c1, c16 = (cell_of(cells, p, c) for p, c in (("a", 1), ("b", 1), ("c", 1), ("c", max(CONCURRENCIES))))
    overhead = (c1.p(50) - a1.p(50)) / b1.p(50)
    scaling = c16.throughput / c1.throughput
    return overhead, scaling


def verdict(met: bool) -> str:
    return "met" if met else "not met"


def rich_table(cells: list[Cell]) -> Table:
    table = Table(title="Request path: latency and throughput")
    for column in ("path", "concurrency", "requests", "p50 ms", "p95 ms", "req/s", "errors"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for cell in cells:
        table.add_row(
            PATHS[cell.path], str(cell.concurrency), str(cell.n), f"{cell.p(50):.2f}", f"{cell.p(95):.2f}",
            f"{cell.throughput:.1f}", str(cell.errors),
        )
    return table


def markdown_section(bench: Bench, meta: dict[str, str]) -> str:
    cells = bench.cells
    overhead, scaling = ratios(cells)
    a1, b1, c1 = cell_of(cells, "a", 1), cell_of(cells, "b", 1), cell_of(cells, "c", 1)
    c16 = cell_of(cells, "c", max(CONCURRENCIES))
    lines = [
        SECTION,
        "",
        "What baton's HTTP front door adds to the work of routing and answering one request.",
        "(a) runs `SemanticRouter.decide(text)` + the sentiment specialist's `predict([text])` in the",
        "benchmark process (concurrency 16 = 16 threads sharing the objects, so the GIL and the",
        "embedder's lock serialise them); (b) is a bare Ray Serve deployment whose `__call__` returns",
        "`{\"ok\": true}`, a second Serve application on `/noop` in the same Serve instance; (c) is",
        f"`POST /v1/route` with `{{\"text\": {json.dumps(TEXT)}}}`, which the router sends to the",
        "`sentiment` agent. HTTP clients: one aiohttp session, keep-alive, pool of 32 connections,",
        "running in the benchmark process on the same cores.",
        "",
        f"- Command: `{meta['command']}` (`make bench` runs it with the defaults)",
        f"- Date: {meta['date']}",
        f"- Machine: {meta['nproc']} CPUs (nproc), {meta['cpu']}, {meta['memory']} RAM; "
        f"load average before the run {meta['load']}",
        f"- Versions: ray {meta['ray']}, Python {meta['python']}, torch {meta['torch']}, "
        f"sentence-transformers {meta['st']}, fastapi {meta['fastapi']}, aiohttp {meta['aiohttp']}",
        f"- Cluster: `ray.init(num_cpus=2)`, `serve.start` on 127.0.0.1; orchestra: {meta['orchestra']}",
        f"- Each cell: {meta['warmup']} warm-up requests, then {meta['requests']} measured; req/s = "
        "measured requests / wall time of the cell.",
        "",
        "| path | concurrency | requests | p50 ms | p95 ms | req/s | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for cell in cells:
        lines.append(
            f"| {PATHS[cell.path]} | {cell.concurrency} | {cell.n} | {cell.p(50):.2f} | {cell.p(95):.2f} | "
            f"{cell.throughput:.1f} | {cell.errors} |"
        )
    lines += [
        "",
        "| ratio | value | target | |",
        "| --- | ---: | --- | --- |",
        f"| overhead = (p50(c) − p50(a)) / p50(b), concurrency 1 | {overhead:.2f} | ≤ {OVERHEAD_TARGET} | "
        f"{verdict(overhead <= OVERHEAD_TARGET)} |",
        f"| throughput of (c) at concurrency {max(CONCURRENCIES)} / at concurrency 1 | {scaling:.2f} | "
        f"≥ {SCALING_TARGET} | {verdict(scaling >= SCALING_TARGET)} |",
        "",
    ]
    if bench.stages:
        lines += [
            "Where the time goes (single-threaded p50, measured after the cells):",
            "",
            "| stage | p50 ms |",
            "| --- | ---: |",
        ]
        lines += [f"| {name} | {ms:.2f} |" for name, ms in bench.stages.items()]
        lines += [
            f"| baton's own `latency_ms` (route handler: embedding batch + decide + agent call), (c) c=1 | "
            f"{np.median(c1.server_ms):.2f} |" if c1.server_ms else "",
            f"| (c) c=1 client p50 minus baton's `latency_ms` (proxy, FastAPI, middleware, auth) | "
            f"{c1.p(50) - float(np.median(c1.server_ms)):.2f} |" if c1.server_ms else "",
            "",
        ]
    lines += [f"- {note}" for note in bench.notes]
    lines += [
        f"- (c) − (a) at concurrency 1: {c1.p(50) - a1.p(50):.2f} ms p50 of serving around the same work; "
        f"one bare Serve HTTP hop (b) is {b1.p(50):.2f} ms.",
        f"- (c) at concurrency {c16.concurrency}: p50 {c16.p(50):.2f} ms, {c16.throughput:.1f} req/s "
        f"(concurrency 1: {c1.throughput:.1f} req/s).",
        "",
    ]
    return "\n".join(line for line in _drop_blank_runs(lines))


def _drop_blank_runs(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if line == "" and out and out[-1] == "":
            continue
        out.append(line)
    return out


def write_section(section: str, doc: Path = DOC) -> None:
    """Replace the section (up to the next ``## `` heading) or append it; keep the rest."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else DOC_HEADER
    pattern = re.compile(rf"^{re.escape(SECTION)}[ \t]*\n.*?(?=^## |\Z)", re.M | re.S)
    block = section.rstrip("\n") + "\n\n"
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.request_path", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="measured requests per cell (default 400)")
    parser.add_argument("--warmup", type=int, default=40, help="warm-up requests per cell, not measured (default 40)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="orchestra file (default configs/orchestra.yaml)")
    parser.add_argument(
        "--drop", action="append", default=[], metavar="AGENT",
        help="leave this agent out of the orchestra (repeatable), e.g. --drop language",
    )
    parser.add_argument("--settle-min", type=float, default=None,
                        help="least seconds of c=16 load on baton before measuring, so the autoscaler has reacted "
                        "(default: the largest upscale_delay_s of the ingress and sentiment + 5)")
    parser.add_argument("--settle-max", type=float, default=60.0, help="most seconds of settling load (default 60)")
    parser.add_argument("--stages", type=int, default=200, help="calls per stage in the breakdown; 0 skips it (default 200)")
    parser.add_argument("--no-doc", action="store_true", help="print only; do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.warmup < 0:
        parser.error("--requests must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"), ("RAY_USAGE_STATS_ENABLED", "0")):
        os.environ.setdefault(name, value)
    console = Console()
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    meta = {
        "command": " ".join(["python -m benchmarks.request_path", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(nproc()),
        "cpu": cpu_model(),
        "memory": memory_gib(),
        "load": load,
        "ray": package("ray"),
        "python": sys.version.split()[0],
        "torch": package("torch"),
        "st": package("sentence-transformers"),
        "fastapi": package("fastapi"),
        "aiohttp": package("aiohttp"),
        "requests": str(args.requests),
        "warmup": str(args.warmup),
    }
    console.rule("baton request-path benchmark")
    console.print(f"{meta['nproc']} CPUs ({meta['cpu']}), load average {load}; ray {meta['ray']}")

    import ray
    from ray import serve

    from actors.router import Embedder, SemanticRouter
    from actors.specialists.registry import create_specialist
    from cluster.keys import KeyStore
    from cluster.storage import Storage
    from serve.builder import APP_NAME, build_application, cluster_env

    if __name__ != "__main__":  # imported (not run with -m): ship this module's classes by value
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    with tempfile.TemporaryDirectory(prefix="baton-bench-") as storage_uri:
        config = bench_config(args.config, storage_uri, args.drop)
        sentiment = config.agent(AGENT)
        dropped = f", without {', '.join(args.drop)}" if args.drop else ""
        meta["orchestra"] = (
            f"`{args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config}`{dropped} "
            f"(agents: {', '.join(config.agent_names())}), storage in a temporary directory, "
            f"rate limit raised to {BENCH_RATE_LIMIT['requests_per_s']:.0f} req/s so no request is answered 429; "
            "router, ingress and the sentiment agent as configured"
        )
        autoscaled = any(
            s.autoscaling.max_replicas > s.autoscaling.min_replicas
            for s in [config.ingress, *sentiment.versions]
        )
        if args.settle_min is None:
            delays = [config.ingress.autoscaling.upscale_delay_s, *(v.autoscaling.upscale_delay_s for v in sentiment.versions)]
            args.settle_min = max(delays) + 5.0
        key, _ = KeyStore(Storage(storage_uri)).create("invoke", "benchmark")

        os.environ.update(cluster_env())
        os.environ.pop("RAY_ADDRESS", None)  # our own cluster, never a `make up` one
        port = free_port()
        started = time.monotonic()
        with console.status("starting Ray, Serve, the no-op app and baton (about a minute on 2 cores)..."):
            ray.init(
                num_cpus=2,
                object_store_memory=256 * 1024 * 1024,
                include_dashboard=False,
                namespace="baton-bench",
                log_to_driver=False,
            )
            try:
                serve.start(http_options={"host": "127.0.0.1", "port": port})
                serve.run(noop_application(), name=NOOP_APP, route_prefix=NOOP_PREFIX)
                serve.run(build_application(config, storage_uri), name=APP_NAME, route_prefix="/")
            except BaseException:
                ray.shutdown()
                raise
        console.print(f"cluster up in {time.monotonic() - started:.1f} s; Serve on http://127.0.0.1:{port}")

        bench = Bench(args, console, config)
        try:
            # The same objects the ingress builds (its torch thread count included).
            embedder = Embedder(config.router.model_path, config.ingress.resources.torch_threads)
            router = SemanticRouter(config.agents, config.router, embedder)
            specialist = create_specialist(sentiment.kind, sentiment.versions[0].params)
            specialist.load()
            decision = router.decide(TEXT)
            if decision.agent != AGENT:
                raise SystemExit(f"the router sends the benchmark text to {decision.agent!r}, not {AGENT!r}")
            bench.in_process(router, specialist)
            asyncio.run(bench.over_http(f"http://127.0.0.1:{port}", key, autoscaled))
            if args.stages > 0:
                with console.status("timing the stages..."):
                    bench.measure_stages(embedder, router, specialist, args.stages)
        finally:
            with console.status("shutting down..."):
                serve.shutdown()
                ray.shutdown()

    console.print(rich_table(bench.cells))
    overhead, scaling = ratios(bench.cells)
    console.print(
        f"overhead (p50(c) − p50(a)) / p50(b) at c=1: [bold]{overhead:.2f}[/] (target ≤ {OVERHEAD_TARGET}: "
        f"{verdict(overhead <= OVERHEAD_TARGET)})"
    )
    console.print(
        f"throughput (c) c={max(CONCURRENCIES)} / c=1: [bold]{scaling:.2f}[/] (target ≥ {SCALING_TARGET}: "
        f"{verdict(scaling >= SCALING_TARGET)})"
    )
    if bench.stages:
        stages = Table(title="Stages (single-threaded p50)")
        stages.add_column("stage")
        stages.add_column("p50 ms", justify="right")
        for name, ms in bench.stages.items():
            stages.add_row(name, f"{ms:.2f}")
        c1 = cell_of(bench.cells, "c", 1)
        if c1.server_ms:
            stages.add_row("baton latency_ms (route handler), (c) c=1", f"{np.median(c1.server_ms):.2f}")
        console.print(stages)
    for note in bench.notes:
        console.print(f"note: {note}")
    if not args.no_doc:
        write_section(markdown_section(bench, meta))
        console.print(f"wrote the {SECTION!r} section of {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
