"""Saturation of the monitor and audit paths: simulated ingress replicas, each with the real
``BufferedReporter``, flood the real named actors (made by ``serve/control.py``) with
sentiment-request records for a fixed time; we count what becomes durable and visible.

Cells: (1) one monitor actor, (2) one audit writer, on ``ray.init(num_cpus=2)``; ``--two-node``:
1 against 2 monitor shards and 1 against 2 audit writers on a two-node ``cluster_utils``
cluster (1 CPU each);
``--profile``: only where one record's time goes, in-process, without Ray.

Run: ``python -m benchmarks.control_saturation [--seconds 15] [--replicas 8] [--max-batch 200 1000] [--two-node] [--profile]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pickle
import posixpath
import pstats
import random
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import ray

from actors.audit import AUDIT_DIR
from actors.reporter import BufferedReporter
from cluster.config import OrchestraConfig, load_orchestra
from cluster.storage import Storage
from serve import control

REPO = Path(__file__).resolve().parents[1]
WARMUP_S = 4.0
FIRST = ("Maria", "John", "Aisha", "Wei", "Carlos", "Emma", "Olga", "Ravi", "Lucas", "Sofia", "Tom", "Yuki")
LAST = ("Garcia", "Smith", "Khan", "Chen", "Rossi", "Muller", "Novak", "Patel", "Silva", "Brown", "Ito", "Dubois")
# About 80 characters, with the personal data a review or a complaint carries.
TEMPLATES = (
    "I'm {first} {last}, my order #{n} arrived broken. Call me at +1 415 555 {p4}, thanks.",
    "Great service from your Berlin team! Email me at {first_l}.{last_l}{n}@example.com please.",
    "The app keeps crashing since update {n}; {first} here, reach me on (020) 7946 {p4}.",
    "Refund still missing after {n} days. Contact {first} {last}, {first_l}@mail.net, so annoyed.",
)
LABELS = ("POSITIVE", "NEGATIVE", "NEUTRAL", "MIXED")


def review_text(rng: random.Random) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return rng.choice(TEMPLATES).format(
        first=first, last=last, first_l=first.lower(), last_l=last.lower(), n=rng.randrange(1000, 99999), p4=f"{rng.randrange(10_000):04d}"
    )


def audit_record(rng: random.Random) -> dict:
    """What ``Gateway.report`` hands the audit reporter for one /v1/route to sentiment."""
    label = rng.choice(LABELS)
    scores = {name: round(rng.random() / 10, 4) for name in LABELS} | {label: round(0.6 + rng.random() / 3, 4)}
    return {
        "request_id": uuid.uuid4().hex, "ts": time.time(), "principal": "key_3f9a", "endpoint": "POST /v1/route",
        "agent": "sentiment", "version": "v2", "routed_by": "embedding", "confidence": rng.random(), "status_code": 200,
        "latency_ms": rng.lognormvariate(3.5, 0.3), "text": review_text(rng), "input_sha256": None,
        "output": {"label": label, "scores": scores}, "error": None, "metadata": None, "trace": None,
    }


def monitor_outcome(rng: random.Random) -> dict:
    """What ``Gateway.report`` hands the monitor reporter for the same request."""
    return {
        "ts": time.time(), "agent": "sentiment", "version": "v2", "status": 200, "latency_ms": rng.lognormvariate(3.5, 0.3),
        "routed_by": "embedding", "label": rng.choice(LABELS), "confidence": rng.random(), "features": None,
        "model": "registry://sentiment:v2", "request_id": uuid.uuid4().hex,
    }


RECORDS: dict[str, Callable[[random.Random], dict]] = {"monitor": monitor_outcome, "audit": audit_record}


@ray.remote(num_cpus=0)
class SimulatedReplica:
    """One ingress replica's reporter, kept full: it always has a batch ready to send."""

    def __init__(self, kind: str, shards: list, settings: dict, reporting: dict, seed: int):
        target = control.MonitorShards(shards, settings) if kind == "monitor" else control.AuditShards(shards)
        plane = control.ControlPlane(monitor=target, audit=target, traffic=None)
        self.reporter = BufferedReporter(plane.sink(target, "record" if kind == "monitor" else "write"), name=kind, **reporting)
        self.make, self.rng, self.added = RECORDS[kind], random.Random(seed), 0

    async def flood(self, seconds: float) -> None:
        self.reporter.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            while self.reporter.pending < 2 * self.reporter.max_batch:
                self.reporter.add(self.make(self.rng))
                self.added += 1
            await asyncio.sleep(0.002)

    def progress(self) -> dict:
        return {"added": self.added, "sent": self.reporter.sent, "dropped": self.reporter.dropped}


def requests_in(stats: dict) -> int:
    return sum(entry["since_start"]["requests"] for versions in stats["agents"].values() for entry in versions.values())


def monitor_count(shards: list) -> int:
    """Requests the monitor shards count since start, each asked for its own stats."""
    return sum(requests_in(stats) for stats in ray.get([shard.stats.remote() for shard in shards]))


def audit_count(storage: Storage) -> int:
    """Audit rows a reader can see: the rows of every Parquet file written so far."""
    root = storage.path(AUDIT_DIR)
    if not storage.fs.exists(root):
        return 0
    paths = [p for p in storage.fs.find(root) if p.endswith(".parquet") and not posixpath.basename(p).startswith(".")]
    return sum(pq.read_metadata(p, filesystem=storage.fs).num_rows for p in paths)


def flood(kind: str, shards: list, settings: dict, count: Callable[[], int], replicas: int, seconds: float, reporting: dict) -> dict:
    """Records absorbed per second by the ``shards`` while ``replicas`` simulated replicas flood them."""
    senders = [
        SimulatedReplica.options(scheduling_strategy="SPREAD").remote(kind, shards, settings, reporting, seed) for seed in range(replicas)
    ]
    runs = [sender.flood.remote(WARMUP_S + seconds + 5) for sender in senders]
    time.sleep(WARMUP_S)
    first, started = count(), time.monotonic()
    time.sleep(seconds)
    last, elapsed = count(), time.monotonic() - started
    progress = ray.get([sender.progress.remote() for sender in senders])
    for sender in senders:
        ray.kill(sender)
    del runs
    return {"rate": (last - first) / elapsed, "absorbed": last - first, "elapsed_s": elapsed, "dropped": sum(p["dropped"] for p in progress)}


def config_with(audit_writers: int = 1, monitor_shards: int = 1) -> OrchestraConfig:
    config = load_orchestra(REPO / "configs" / "orchestra.yaml")
    return config.model_copy(update={
        "audit": config.audit.model_copy(update={"writers": audit_writers}),
        "monitor": config.monitor.model_copy(update={"shards": monitor_shards}),
    })


def reporting_of(config: OrchestraConfig, max_batch: int) -> dict:
    """BufferedReporter's arguments as the ingress passes them."""
    reporter = config.reporter
    return {"max_batch": max_batch, "interval_s": reporter.interval_s, "max_buffer": reporter.max_buffer}


def nodes_of(handles: list) -> int:
    return len({ray._private.state.actors(handle._actor_id.hex())["Address"]["NodeID"] for handle in handles})


def kill_named(handles: list, names: list[str]) -> None:
    for handle in handles:
        ray.kill(handle, no_restart=True)
    for name in names:
        control._wait_until_gone(name)


def monitor_cell(replicas: int, seconds: float, max_batch: int | None, shards: int = 1) -> dict:
    with tempfile.TemporaryDirectory() as root:
        config = config_with(monitor_shards=shards)
        monitor = control.monitor_shards(config, root)
        reporting = reporting_of(config, max_batch or config.reporter.max_batch)
        settings = control.monitoring_settings(config)
        result = flood("monitor", monitor.shards, settings, lambda: monitor_count(monitor.shards), replicas, seconds, reporting)
        # The merged read (what GET /v1/admin/stats answers) counts what the shards count.
        merged = requests_in(asyncio.run(monitor.stats()))
        result |= {"nodes": nodes_of(monitor.shards), "merged_read": merged, "shard_sum": monitor_count(monitor.shards)}
        kill_named(monitor.shards, [control.shard_name(control.MONITOR, i) for i in range(shards)])
    return result | {"shards": shards}


def audit_cell(replicas: int, seconds: float, max_batch: int | None, writers: int) -> dict:
    with tempfile.TemporaryDirectory() as root:
        config = config_with(writers)
        shards = control.audit_writers(config, root)
        reporting = reporting_of(config, max_batch or config.reporter.audit_max_batch)
        storage = Storage(root)
        result = flood("audit", shards.writers, {}, lambda: audit_count(storage), replicas, seconds, reporting)
        result["nodes"] = nodes_of(shards.writers)
        kill_named(shards.writers, [control.audit_writer_name(i) for i in range(writers)])
    return result | {"writers": writers}


def print_row(name: str, result: dict) -> None:
    print(f"| {name} | {result['rate']:,.0f} | {result['absorbed']:,} in {result['elapsed_s']:.1f} s | {result['dropped']} |", flush=True)


def single_node(args: argparse.Namespace) -> None:
    # "local": a cluster of our own even where another one runs on this machine.
    ray.init(address="local", num_cpus=2, object_store_memory=500 * 2**20, include_dashboard=False)
    try:
        print("| path | records/s absorbed | counted | dropped by reporters |\n| --- | --- | --- | --- |")
        for max_batch in args.max_batch:
            print_row(f"monitor, 1 actor, reporter max_batch={max_batch}", monitor_cell(args.replicas, args.seconds, max_batch))
        for max_batch in args.max_batch:
            result = audit_cell(args.replicas, args.seconds, max_batch, writers=1)
            print_row(f"audit, 1 writer, reporter max_batch={max_batch}", result)
    finally:
        ray.shutdown()


def two_node(args: argparse.Namespace) -> None:
    from ray.cluster_utils import Cluster

    head = {"num_cpus": 1, "object_store_memory": 300 * 2**20, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    cluster.add_node(num_cpus=1, object_store_memory=300 * 2**20)
    ray.init(address=cluster.address)
    try:
        print("| two nodes of 1 CPU | records/s absorbed | counted | dropped by reporters |\n| --- | --- | --- | --- |")
        for shards in (1, 2):
            result = monitor_cell(args.replicas, args.seconds, None, shards)
            print_row(f"monitor, {shards} shard(s) on {result['nodes']} node(s)", result)
            print(f"|   merged read after the flood: {result['merged_read']:,} requests; shards' own stats: {result['shard_sum']:,} | | | |")
        for writers in (1, 2):
            result = audit_cell(args.replicas, args.seconds, None, writers)
            print_row(f"audit, {writers} writer(s) on {result['nodes']} node(s)", result)
    finally:
        ray.shutdown()
        cluster.shutdown()


def profile(n: int = 2000) -> None:
    """Per-record cost of each step, in this process, with the actors' own classes."""
    from actors.audit import AuditWriter
    from actors.monitor import Monitor, parse_outcome
    from actors.pii import CachedRedactor, PiiRedactor

    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as root:
        redactor = CachedRedactor(PiiRedactor())
        redactor("warm up, John Smith in Berlin")
        writer = AuditWriter(Storage(root), redactor=redactor)
        records = [audit_record(rng) for _ in range(n)]
        audit_s = _profiled(lambda: [writer.write(records[i : i + 200]) for i in range(0, n, 200)] and writer.flush())
        monitor = Monitor(storage=Storage(posixpath.join(root, "m")))
        outcomes = [monitor_outcome(rng) for _ in range(n)]
        monitor_s = _profiled(lambda: [monitor.record_parsed([parse_outcome(o, time.time()) for o in outcomes[i : i + 200]]) for i in range(0, n, 200)])
        serialise = {kind: _pickle_s([RECORDS[kind](rng) for _ in range(200)]) / 200 for kind in RECORDS}
        texts = [review_text(rng) for _ in range(400)]
        plain = PiiRedactor()
        one_by_one = _timed(lambda: [plain(text) for text in texts[:200]]) / 200
        batched = _timed(lambda: plain.many(texts[200:])) / 200
    print(f"redaction of one text: {one_by_one * 1e6:.0f} µs one call each, {batched * 1e6:.0f} µs in one batch (nlp.pipe)")
    audit_parts = {
        "NER (spaCy, nlp.pipe over the batch)": "_named_entities", "patterns": "find_pattern_entities",
        "Arrow table": "_to_table", "Parquet encoding": "write_table", "file write + rename": "_put_atomic",
    }
    monitor_parts = {
        "parse_outcome": "parse_outcome", "outcome log: columns + Arrow": "append", "outcome log: Parquet + file": "_write",
        "since-start counters": "_count", "window hold": "_hold", "drift observer": "_observe_drift",
    }
    print("\n| path | step | µs per record |\n| --- | --- | --- |")
    for path, (stats, total), parts in (("audit", audit_s, audit_parts), ("monitor", monitor_s, monitor_parts)):
        print(f"| {path} | all (in-process) | {total / n * 1e6:.1f} |")
        for label, function in parts.items():
            print(f"| {path} | {label} | {_cumulative(stats, function) / n * 1e6:.1f} |")
        print(f"| {path} | pickle round trip of the batch (Ray's serialisation) | {serialise[path] * 1e6:.1f} |")


def _profiled(work: Callable[[], object]) -> tuple[pstats.Stats, float]:
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.runcall(work)
    return pstats.Stats(profiler), time.perf_counter() - started


def _cumulative(stats: pstats.Stats, function: str) -> float:
    """Cumulative time of the outermost function of that name (pyarrow nests one write_table in another)."""
    return max((entry[3] for (_, _, name), entry in stats.stats.items() if name == function), default=0.0)


def _timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _pickle_s(batch: list[dict], repeats: int = 50) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        pickle.loads(pickle.dumps(batch, protocol=5))
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per cell, after a warm-up")
    parser.add_argument("--replicas", type=int, default=8, help="simulated ingress replicas")
    parser.add_argument(
        "--max-batch", type=int, nargs="+", default=[200, 1000], help="reporter max_batch values to compare on one node (two nodes: the defaults)"
    )
    parser.add_argument("--two-node", action="store_true", help="1 against 2 audit writers on a two-node cluster")
    parser.add_argument("--profile", action="store_true", help="only where one record's time goes, in-process (no Ray)")
    args = parser.parse_args()
    if args.profile:
        profile()
    elif args.two_node:
        two_node(args)
    else:
        single_node(args)


if __name__ == "__main__":
    main()
