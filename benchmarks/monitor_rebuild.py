"""How long a restarted monitor takes to rebuild one hour of outcomes at 50 requests/s
(180,000 outcomes) from its outcome log on a local path, and what holding them costs.

Writes the hour through ``Monitor.record`` in reporter-sized batches (25 outcomes every
0.5 s) under a simulated clock, so checkpoints, compaction and retention run as they would
live; then times new monitors constructed over the same storage.

Run: ``python -m benchmarks.monitor_rebuild [--rate 50] [--hours 1] [--repeats 3] [--uncompacted]``.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import tempfile
import time
import tracemalloc

from actors.monitor import Monitor
from actors.outcome_log import MONITOR_DIR, SEGMENT_DIR
from cluster.storage import Storage

BATCH_INTERVAL_S = 0.5
START = 1_700_000_000.0


class SimulatedClock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def fill(storage: Storage, clock: SimulatedClock, rate: float, hours: float, checkpoint_s: float) -> list[float]:
    """Record ``hours`` of traffic; returns the seconds each record() call took."""
    rng = random.Random(0)
    monitor = Monitor(clock=clock, storage=storage, checkpoint_s=checkpoint_s)
    per_batch = round(rate * BATCH_INTERVAL_S)
    record_s = []
    for batch in range(round(hours * 3600 / BATCH_INTERVAL_S)):
        outcomes = [
            {
                "ts": clock.now - rng.random() * BATCH_INTERVAL_S, "agent": "sentiment", "version": rng.choice(("v1", "v2")),
                "status": 503 if rng.random() < 0.01 else 200, "latency_ms": rng.lognormvariate(3, 0.5),
                "routed_by": "router", "label": rng.choice(("POSITIVE", "NEGATIVE")), "confidence": rng.random(),
                "model": "registry://sentiment:v3", "request_id": f"req-{batch}-{i}", "cpu_s": rng.random() / 50,
                "features": [rng.gauss(0, 1) for _ in range(8)],
            }
            for i in range(per_batch)
        ]
        started = time.perf_counter()
        monitor.record(outcomes, batch_id=f"batch-{batch}")
        record_s.append(time.perf_counter() - started)
        clock.now += BATCH_INTERVAL_S
    return record_s


def rebuild(storage: Storage, clock: SimulatedClock, repeats: int, checkpoint_s: float) -> tuple[list[float], Monitor]:
    times, monitor = [], None
    for _ in range(repeats):
        # A restarted actor is a fresh process: no earlier monitor's objects for the collector to walk.
        monitor = None
        gc.collect()
        started = time.perf_counter()
        monitor = Monitor(clock=clock, storage=storage, checkpoint_s=checkpoint_s, settle_s=0)
        times.append(time.perf_counter() - started)
    return times, monitor


def held_bytes(storage: Storage, clock: SimulatedClock, checkpoint_s: float) -> int:
    gc.collect()
    tracemalloc.start()
    monitor = Monitor(clock=clock, storage=storage, checkpoint_s=checkpoint_s, settle_s=0)
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del monitor
    return size


def timed(call, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def run(rate: float, hours: float, repeats: int, uncompacted: bool) -> None:
    # Without compaction nothing merges: the constructor's own checkpoint compacts, and is timed with it.
    checkpoint_s = hours * 3600 * 10 if uncompacted else 60.0
    with tempfile.TemporaryDirectory() as root:
        storage = Storage(root)
        clock = SimulatedClock(START)
        record_s = fill(storage, clock, rate, hours, checkpoint_s)
        segments = storage.fs.ls(storage.path(MONITOR_DIR, SEGMENT_DIR), detail=False)
        on_disk = sum(storage.fs.size(path) for path in segments)
        clock.now += 5  # the restart
        times, monitor = rebuild(storage, clock, repeats, checkpoint_s)
        held = monitor.window("sentiment", "v1", START - 10)["requests"] + monitor.window("sentiment", "v2", START - 10)["requests"]
        one_hour = timed(lambda: monitor.window("sentiment", "v1", clock.now - 3600))
        one_minute = timed(lambda: monitor.window("sentiment", "v1", clock.now - 60))
        stats_s, prometheus_s = timed(monitor.stats), timed(monitor.prometheus)
        monitor = None
        memory = held_bytes(storage, clock, checkpoint_s)
        print(f"outcomes: {len(record_s) * round(rate * BATCH_INTERVAL_S):,} over {hours:g} h at {rate:g}/s; held after rebuild: {held:,}")
        print(f"record(): {len(record_s):,} batches, median {statistics.median(record_s) * 1e3:.2f} ms, "
              f"p99 {sorted(record_s)[int(0.99 * len(record_s))] * 1e3:.2f} ms (includes checkpoints)")
        print(f"log: {len(segments)} segment files, {on_disk / 2**20:.1f} MiB before the restart"
              f" ({'no compaction while running' if uncompacted else 'compacted every 60 s'})")
        print(f"rebuild: {times[0]:.2f} s the first time (with compacting the files not compacted yet), "
              f"then median {statistics.median(times[1:] or times):.2f} s over {max(repeats - 1, 1)} more")
        print(f"held outcomes + counters: {memory / 2**20:.0f} MiB ({memory / max(held, 1):.0f} B per outcome, tracemalloc)")
        print(f"window() of one version: {one_hour * 1e3:.1f} ms over the hour, {one_minute * 1e3:.2f} ms over the last minute")
        print(f"stats(): {stats_s * 1e3:.1f} ms; prometheus(): {prometheus_s * 1e3:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--hours", type=float, default=1.0, help="hours of outcomes to rebuild")
    parser.add_argument("--repeats", type=int, default=3, help="rebuilds to time")
    parser.add_argument("--uncompacted", action="store_true", help="keep one file per batch until the rebuild")
    args = parser.parse_args()
    run(args.rate, args.hours, args.repeats, args.uncompacted)


if __name__ == "__main__":
    main()
