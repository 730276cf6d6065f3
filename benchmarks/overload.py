"""Overload benchmark: past capacity, baton refuses early (503 ``overloaded`` with Retry-After)
instead of letting requests wait out their deadline, and serves normally again once load drops.

On a fresh Ray instance with the default orchestra (deployed as ``benchmarks.request_path``
deploys it), ``POST /v1/route`` (a text the router sends to ``sentiment``):

  1. capacity: a closed loop of ``--concurrency`` clients, after the autoscaler has settled
     under that load; capacity = answered requests per second;
  2. an open loop (one request per scheduled time, whatever the answers) at 3x capacity for
     ``--overload-s``, then at 0.5x for ``--drop-s``;
  3. with ``--baseline``: the same load once more with shedding switched off
     (``ingress.admission.enabled: false`` and an unbounded proxy queue), for comparison; with
     ``--variant``, once more with other ingress settings (e.g. ``admission.max_concurrent=8``).

Reports the share answered 200, the share refused 503 ``overloaded`` (and whether each had a
Retry-After), anything else (must be none: a 500, a client timeout at the deadline, a dropped
connection), p50/p99 of the answered, and per second after the drop the share answered and its
p50 (recovery). Writes the "### Overload: shedding at 3× capacity" section of docs/benchmarks.md.

Run: ``python -m benchmarks.overload [--baseline] [--variant FIELD=VALUE ...] [--overload-s 20] [--drop-s 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from benchmarks.request_path import (
    AGENT,
    DEFAULT_CONFIG,
    DOC,
    REPO,
    TEXT,
    app_settled,
    bench_config,
    deployed_config,
    ensure_sentiment_model,
    free_port,
    markdown_table,
    package,
    render_table,
    replica_counts,
    run_async,
    seed_registry,
    start_run,
)

HEADING = "### Overload: shedding at 3× capacity"
PARENT = "## Load shedding"
OVERLOAD_FACTOR = 3.0
DROP_FACTOR = 0.5
# Without shedding the Serve proxy's queue for the ingress is unbounded (Serve's default).
UNBOUNDED_QUEUE = 1_000_000


@dataclass
class Shot:
    """One open-loop request: when it was due, how long until its answer (from when it was due,
    so a late send counts), and what the answer was; status 0 = no answer (timeout, connection)."""

    phase: str
    due_s: float  # seconds after its phase began
    latency_s: float
    status: int
    code: str | None = None
    retry_after: str | None = None
    by_ingress: bool = False  # an ingress replica answered (X-Served-By), not the Serve proxy alone
    failure: str | None = None


@dataclass
class Run:
    name: str
    capacity_rps: float
    shots: list[Shot]
    replicas: dict[str, int]
    replicas_after: dict[str, int]
    capacity_latencies_s: list[float]  # the closed loop's answered requests (first condition only)

    def phase(self, name: str) -> list[Shot]:
        return [s for s in self.shots if s.phase == name]


# -- load ------------------------------------------------------------------------------------


async def shoot(session, body: bytes, headers: dict, phase: str, due: float, phase_start: float) -> Shot:
    import aiohttp

    shot = Shot(phase, due - phase_start, 0.0, 0)
    try:
        async with session.post("/v1/route", data=body, headers=headers) as response:
            payload = await response.read()
            shot.status = response.status
            shot.retry_after = response.headers.get("Retry-After")
            shot.by_ingress = "X-Served-By" in response.headers
            if response.status != 200:
                try:
                    shot.code = json.loads(payload)["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    shot.code = f"not API.md's shape: {payload[:80]!r}"
            elif (agent := json.loads(payload).get("agent")) != AGENT:
                shot.status, shot.failure = 0, f"answered by {agent!r}"
    except asyncio.TimeoutError:
        shot.failure = "client timeout at the deadline"
    except aiohttp.ClientError as error:
        shot.failure = f"connection: {type(error).__name__}"
    shot.latency_s = time.perf_counter() - due
    return shot


async def open_loop(url: str, key: str, phases: list[tuple[str, float, float]], deadline_s: float) -> list[Shot]:
    """Send requests at fixed arrival rates, phase after phase, without waiting for answers."""
    import aiohttp

    body = json.dumps({"text": TEXT}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=deadline_s)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
        tasks = []
        start = time.perf_counter() + 0.1
        for name, rate, duration in phases:
            for i in range(int(rate * duration)):
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(shoot(session, body, headers, name, due, start)))
            start += duration
        return list(await asyncio.gather(*tasks))


async def closed_loop(url: str, key: str, concurrency: int, duration_s: float) -> tuple[int, float, list[float]]:
    """``concurrency`` clients for ``duration_s``: answered 200s, wall time, their latencies."""
    import aiohttp

    body = json.dumps({"text": TEXT}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=2 * concurrency, keepalive_timeout=60)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def call() -> int:
            async with session.post("/v1/route", data=body, headers=headers) as response:
                await response.read()
                return response.status

        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(duration_s, stop.set)
        latencies, wall, statuses = await run_async(call, concurrency, None, lambda: None, stop)
    ok = [lat for lat, status in zip(latencies, statuses) if status == 200]
    return len(ok), wall, ok


async def settle(url: str, key: str, concurrency: int, max_s: float, ingress_max: int) -> float:
    """Keep a closed loop on until the ingress is at its max replicas and nothing starts or stops."""
    from serve.builder import APP_NAME, INGRESS

    started = time.monotonic()
    while time.monotonic() - started < max_s:
        await closed_loop(url, key, concurrency, 3.0)
        counts = await asyncio.to_thread(replica_counts, APP_NAME)
        if counts.get(INGRESS, 0) >= ingress_max and await asyncio.to_thread(app_settled, APP_NAME):
            break
    return time.monotonic() - started


# -- one condition ---------------------------------------------------------------------------


def measure(console: Console, url: str, key: str, name: str, args, deadline_s: float, ingress_max: int, capacity: float | None) -> Run:
    from serve.builder import APP_NAME

    with console.status(f"[{name}] settling the autoscaler under {args.concurrency} clients (up to {args.settle_max:.0f} s)..."):
        took = asyncio.run(settle(url, key, args.concurrency, args.settle_max, ingress_max))
    console.print(f"[{name}] settled after {took:.0f} s: {replica_counts(APP_NAME)}")
    latencies: list[float] = []
    if capacity is None:
        with console.status(f"[{name}] capacity: closed loop of {args.concurrency} for {args.capacity_s:.0f} s..."):
            ok, wall, latencies = asyncio.run(closed_loop(url, key, args.concurrency, args.capacity_s))
        capacity = ok / wall
        console.print(
            f"[{name}] capacity {capacity:.1f} req/s (closed loop, {args.concurrency} clients; "
            f"p50 {np.percentile(latencies, 50) * 1000:.0f} ms, p99 {np.percentile(latencies, 99) * 1000:.0f} ms)"
        )
    replicas = replica_counts(APP_NAME)
    phases = [("overload", OVERLOAD_FACTOR * capacity, args.overload_s), ("drop", DROP_FACTOR * capacity, args.drop_s)]
    with console.status(
        f"[{name}] open loop: {phases[0][1]:.0f} req/s for {args.overload_s:.0f} s, then {phases[1][1]:.0f} req/s for {args.drop_s:.0f} s..."
    ):
        shots = asyncio.run(open_loop(url, key, phases, deadline_s))
    return Run(name, capacity, shots, replicas, replica_counts(APP_NAME), latencies)


# -- reporting -------------------------------------------------------------------------------


def share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"


def ms(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q) * 1000:.0f}" if values else "–"


def others(shots: list[Shot]) -> list[Shot]:
    """Anything but a 200 or a 503 overloaded: must be none."""
    return [s for s in shots if not (s.status == 200 or (s.status == 503 and s.code == "overloaded"))]


def outcome_row(run: Run, phase: str, deadline_s: float) -> list[str]:
    shots = run.phase(phase)
    answered = [s.latency_s for s in shots if s.status == 200]
    refused = [s for s in shots if s.status == 503 and s.code == "overloaded"]
    with_retry = [s for s in refused if s.retry_after and s.retry_after.isdigit() and int(s.retry_after) >= 1]
    late = [s for s in shots if s.latency_s >= deadline_s]
    rate = (OVERLOAD_FACTOR if phase == "overload" else DROP_FACTOR) * run.capacity_rps
    return [
        f"{run.name}, {phase} ({rate:.0f} req/s)",
        str(len(shots)),
        share(len(answered), len(shots)),
        share(len(refused), len(shots)),
        f"{len(with_retry)}/{len(refused)}",
        f"{sum(s.by_ingress for s in refused)}/{len(refused) - sum(s.by_ingress for s in refused)}",
        str(len(others(shots))),
        str(len(late)),
        ms(answered, 50),
        ms(answered, 99),
        ms([s.latency_s for s in refused], 99),
    ]


OUTCOME_COLUMNS = (
    "condition, phase (offered)", "requests", "200", "503 overloaded", "with Retry-After",
    "refused by ingress / proxy", "other (500, timeout, ...)", "waited ≥ deadline", "p50 200 ms", "p99 200 ms", "p99 503 ms",
)


def recovery_rows(run: Run, seconds: int) -> list[list[str]]:
    """Each of the first seconds after the drop: requests due then, share 200, p50 of those."""
    drop = run.phase("drop")
    start = min((s.due_s for s in drop), default=0.0)
    rows = []
    for second in range(seconds):
        due = [s for s in drop if second <= s.due_s - start < second + 1]
        answered = [s.latency_s for s in due if s.status == 200]
        rows.append([f"{run.name}, {second}–{second + 1} s after the drop", str(len(due)), share(len(answered), len(due)), ms(answered, 50), ms(answered, 99)])
    return rows


RECOVERY_COLUMNS = ("condition, when", "requests", "200", "p50 200 ms", "p99 200 ms")


def retry_after_values(run: Run) -> str:
    values = Counter(s.retry_after for s in run.shots if s.status == 503)
    return ", ".join(f"{value} s × {n}" for value, n in sorted(values.items(), key=lambda kv: str(kv[0]))) or "none"


def failures(run: Run) -> str:
    bad = Counter(s.failure or f"{s.status} {s.code}" for s in others(run.shots))
    return ", ".join(f"{what} × {n}" for what, n in bad.most_common()) or "none"


def markdown_section(runs: list[Run], meta: dict[str, str], settings: dict[str, str], deadline_s: float, seconds: int) -> str:
    shedding = runs[0]
    lines = [
        HEADING,
        "",
        "`POST /v1/route` with a text the router sends to `sentiment`, on a fresh Ray instance with the default",
        "orchestra. Capacity is the answered rate of a closed loop of "
        f"{meta['concurrency']} clients once the autoscaler has settled under it; then an open loop (one request",
        f"per scheduled time, whatever the answers) offers 3× capacity for {meta['overload_s']} s and 0.5× for "
        f"{meta['drop_s']} s. Latencies count from the time a request was due. The client gives up at the deadline, "
        f"`limits.agent_timeout_s` = {deadline_s:.0f} s.",
        "",
        f"- Command: `{meta['command']}`",
        f"- Date: {meta['date']}",
        f"- Machine: {meta['nproc']} CPUs, {meta['cpu']}, {meta['memory']} RAM; load average {meta['load_before']} before the run"
        " (the machine is shared; the client runs on the same cores)",
        f"- Versions: ray {meta['ray']}, aiohttp {meta['aiohttp']}; orchestra: {meta['orchestra']}",
        f"- Shedding settings: {settings['shedding']}",
        f"- Capacity: **{shedding.capacity_rps:.1f} req/s** (closed loop: p50 {ms(shedding.capacity_latencies_s, 50)} ms, "
        f"p99 {ms(shedding.capacity_latencies_s, 99)} ms); RUNNING replicas at the overload: {shedding.replicas}, after: {shedding.replicas_after}",
        "",
        *markdown_table(OUTCOME_COLUMNS, [outcome_row(r, p, deadline_s) for r in runs for p in ("overload", "drop")]),
        "",
        "Recovery: requests due in each of the first seconds after the load dropped to 0.5×:",
        "",
        *markdown_table(RECOVERY_COLUMNS, [row for r in runs for row in recovery_rows(r, seconds)]),
        "",
    ]
    for run in runs:
        lines.append(f"- {run.name}: Retry-After values: {retry_after_values(run)}; anything else: {failures(run)}")
    if len(runs) > 1:
        lines.append("- Every condition after the first is a redeploy of the same application, offered the first one's rates")
    if any(r.name == "without shedding" for r in runs):
        lines.append(f"- without shedding: {settings['baseline']}")
    lines.append("")
    return "\n".join(lines)


def write_subsection(section: str, doc: Path = DOC) -> None:
    """Replace this section (up to the next ##/### heading), or add it under its own ``##``
    heading right after the "## Request path" section (whose script rewrites only that one)."""
    text = doc.read_text(encoding="utf-8")
    block = section.rstrip("\n") + "\n\n"
    mine = re.compile(rf"^{re.escape(HEADING)}[ \t]*\n.*?(?=^##+ |\Z)", re.M | re.S)
    if mine.search(text):
        text = mine.sub(lambda _: block, text, count=1)
    else:
        after_request_path = re.compile(r"^## Request path[ \t]*\n.*?(?=^## |\Z)", re.M | re.S)
        match = after_request_path.search(text)
        at = match.end() if match else len(text)
        text = text[:at].rstrip("\n") + f"\n\n{PARENT}\n\n{block}" + text[at:]
    doc.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overload", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="orchestra file (default configs/orchestra.yaml)")
    parser.add_argument("--drop", action="append", default=[], metavar="AGENT", help="leave this agent out (repeatable)")
    parser.add_argument("--models-from", type=Path, default=REPO / ".baton", metavar="DIR", help="storage whose registry models are copied (default .baton)")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients that find the capacity (default 32)")
    parser.add_argument("--capacity-s", type=float, default=12.0, help="seconds of closed loop that measure capacity (default 12)")
    parser.add_argument("--settle-max", type=float, default=45.0, help="most seconds of load for the autoscaler to settle (default 45)")
    parser.add_argument("--overload-s", type=float, default=20.0, help="seconds at 3x capacity (default 20)")
    parser.add_argument("--drop-s", type=float, default=10.0, help="seconds at 0.5x capacity after the overload (default 10)")
    parser.add_argument("--recovery-s", type=int, default=4, help="seconds after the drop shown one by one (default 4)")
    parser.add_argument("--baseline", action="store_true", help="also run the same load with shedding switched off")
    parser.add_argument(
        "--variant", action="append", default=[], metavar="FIELD=VALUE[,FIELD=VALUE]",
        help="also run the same load with these ingress settings changed, e.g. admission.max_concurrent=8 (repeatable)",
    )
    parser.add_argument("--no-doc", action="store_true", help="print only; do not write docs/benchmarks.md")
    parser.add_argument("--doc", type=Path, default=DOC, help="the Markdown file to write (default docs/benchmarks.md)")
    return parser.parse_args(argv)


def with_ingress(config, overrides: str):
    """The config with ``ingress`` fields changed: ``max_ongoing_requests=32,admission.max_queue=8``."""
    import yaml

    ingress = config.ingress.model_dump()
    for assignment in overrides.split(","):
        path, _, value = assignment.partition("=")
        *parents, leaf = path.strip().split(".")
        target = ingress
        for name in parents:
            target = target[name]
        if leaf not in target:
            raise SystemExit(f"--variant: ingress has no field {path!r}")
        target[leaf] = yaml.safe_load(value)
    return config.model_validate({**config.model_dump(), "ingress": ingress})


def without_shedding(config):
    ingress = config.ingress.model_copy(update={
        "admission": config.ingress.admission.model_copy(update={"enabled": False}),
        "max_queued_requests": UNBOUNDED_QUEUE,
    })
    return config.model_copy(update={"ingress": ingress})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console, meta = start_run(
        "benchmarks.overload", argv, aiohttp=package("aiohttp"),
        concurrency=str(args.concurrency), overload_s=f"{args.overload_s:g}", drop_s=f"{args.drop_s:g}",
    )
    console.rule("baton overload benchmark")
    console.print(f"{meta['nproc']} CPUs ({meta['cpu']}), load average {meta['load_before']}; ray {meta['ray']}")

    import ray
    from ray import serve

    from cluster.keys import KeyStore
    from cluster.storage import Storage
    from serve.builder import APP_NAME, build_application, cluster_env

    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="baton-overload-") as storage_uri:
        config = bench_config(args.config, storage_uri, args.drop)
        seed_registry(config, storage_uri, args.models_from)
        key, _ = KeyStore(Storage(storage_uri)).create("invoke", "benchmark")
        os.environ.update(cluster_env())
        os.environ.pop("RAY_ADDRESS", None)  # our own instance, never a `make up` one
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        ray.init(address="local", num_cpus=2, object_store_memory=256 * 1024 * 1024, include_dashboard=False,
                 namespace="baton-overload", log_to_driver=False)
        try:
            model = ensure_sentiment_model(config, storage_uri, console)
            deployed = deployed_config(config, storage_uri)
            meta["orchestra"] = (
                f"`{args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config}`"
                + (f" without {', '.join(args.drop)}" if args.drop else "")
                + f", sentiment serving {model}, per-key rate limit raised"
            )
            admission = deployed.ingress.admission
            settings = {
                "shedding": (
                    f"`ingress.admission` max_concurrent {admission.max_concurrent}, max_queue {admission.max_queue}, "
                    f"max_queue_wait_s {admission.max_queue_wait_s} per replica; `ingress.max_ongoing_requests` "
                    f"{deployed.ingress.max_ongoing_requests}, `ingress.max_queued_requests` {deployed.ingress.max_queued_requests} "
                    f"(the Serve proxy's queue), autoscaling {deployed.ingress.autoscaling.min_replicas}–{deployed.ingress.autoscaling.max_replicas} ingress replicas"
                ),
                "baseline": "`ingress.admission.enabled: false` and the proxy's queue unbounded (Serve's default)",
            }
            deadline_s = deployed.limits.agent_timeout_s
            ingress_max = deployed.ingress.autoscaling.max_replicas
            started = time.monotonic()
            with console.status("starting Serve and baton (about a minute on 2 cores)..."):
                serve.start(http_options={"host": "127.0.0.1", "port": port})
                serve.run(build_application(config, storage_uri), name=APP_NAME, route_prefix="/")
            console.print(f"baton up in {time.monotonic() - started:.0f} s on {url}")
            with console.status("warm-up..."):
                asyncio.run(closed_loop(url, key, 1, 5.0))
            runs.append(measure(console, url, key, "with shedding", args, deadline_s, ingress_max, None))
            conditions = [(f"with shedding, {v}", with_ingress(config, v)) for v in args.variant]
            if args.baseline:
                conditions.append(("without shedding", without_shedding(config)))
            for name, changed in conditions:
                with console.status(f"redeploying: {name}..."):
                    serve.run(build_application(changed, storage_uri), name=APP_NAME, route_prefix="/")
                runs.append(measure(console, url, key, name, args, deadline_s, ingress_max, runs[0].capacity_rps))
        finally:
            with console.status("shutting down..."):
                serve.shutdown()
                ray.shutdown()

    console.print(render_table("Overload: outcomes", OUTCOME_COLUMNS, [outcome_row(r, p, deadline_s) for r in runs for p in ("overload", "drop")]))
    console.print(render_table("Recovery after the drop", RECOVERY_COLUMNS, [row for r in runs for row in recovery_rows(r, args.recovery_s)]))
    for run in runs:
        console.print(f"{run.name}: Retry-After values: {retry_after_values(run)}; anything else: {failures(run)}")
    if not args.no_doc:
        write_subsection(markdown_section(runs, meta, settings, deadline_s, args.recovery_s), args.doc)
        console.print(f"wrote {HEADING!r} in {args.doc}")
    shedding = runs[0]
    return 0 if not others(shedding.shots) and all(s.latency_s < deadline_s for s in shedding.shots) else 1


if __name__ == "__main__":
    sys.exit(main())
