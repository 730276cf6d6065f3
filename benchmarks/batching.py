"""Router batching in the ingress: ``actors.batching.MicroBatcher`` (what the ingress uses to
batch the router's embeddings since 043bab0) against Ray Serve's ``@serve.batch`` (what it used
before), on the real router, in this process, without HTTP.

``--callers`` concurrent callers each ask for one text's router scores, then wait a random
0..``--think-ms`` before the next (requests reach an ingress replica staggered, not in lockstep;
``--think-ms 0`` is the lockstep case). Both batchers get the config's ``router.batching``
(max batch size and wait). Cells alternate over ``--rounds`` rounds. Print-only.

Run: ``python -m benchmarks.batching [--callers 8] [--think-ms 30] [--seconds 8] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.request_path import DEFAULT_CONFIG, TEXT, load_average, nproc


def build_router(config_path: Path, storage_uri: str):
    """The router as an ingress replica builds it (models pinned, the ingress's torch threads)."""
    from actors.router import build_router as build
    from serve.builder import load, pin_models

    config = pin_models(load(config_path).model_copy(update={"storage": storage_uri}), storage_uri)
    return config, build(config, storage_uri, config.ingress.resources.torch_threads)


class ServeBatch:
    """``@serve.batch`` as the ingress used it before 043bab0 (one batch at a time, its default)."""

    def __init__(self, scores, max_batch_size: int, wait_s: float):
        from ray import serve
        from ray.serve import batching

        # Outside a replica there is no max_ongoing_requests to warn about; the batching is unchanged.
        batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = lambda queue: None
        self.batches = self.items = 0

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=wait_s)
        async def run(texts: list[str]) -> list:
            self.batches += 1
            self.items += len(texts)
            return list(await asyncio.to_thread(scores, texts))

        self.submit = run


async def load(submit, callers: int, seconds: float, think_s: float, seed: int) -> tuple[int, float, float]:
    """(calls, CPU ms of this process per call, calls per second)."""
    stop = time.monotonic() + seconds
    rng = random.Random(seed)
    calls = 0

    async def caller() -> None:
        nonlocal calls
        while time.monotonic() < stop:
            await submit(TEXT)
            calls += 1
            if think_s:
                await asyncio.sleep(rng.uniform(0, think_s))

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return calls, cpu / calls * 1000, calls / wall


async def measure(args: argparse.Namespace, router, batching) -> dict[str, list[tuple[float, float, float]]]:
    from actors.batching import MicroBatcher

    makers = {
        "MicroBatcher (ingress since 043bab0)": lambda: MicroBatcher(router.scores, batching.max_batch_size, batching.batch_wait_timeout_s),
        "@serve.batch (ingress before)": lambda: ServeBatch(router.scores, batching.max_batch_size, batching.batch_wait_timeout_s),
    }
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in makers}
    for round_ in range(args.rounds):
        order = list(makers) if round_ % 2 == 0 else list(reversed(makers))
        for name in order:
            batcher = makers[name]()
            calls, cpu_ms, rate = await load(batcher.submit, args.callers, args.seconds, args.think_ms / 1000, seed=round_)
            size = batcher.items / batcher.batches if batcher.batches else float("nan")
            results[name].append((rate, cpu_ms, size))
            print(f"round {round_ + 1} {name:38s} calls {calls:5d}  {rate:6.1f} calls/s  {cpu_ms:6.2f} CPU ms/call  mean batch {size:5.2f}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batching", description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=8, help="concurrent callers (default 8)")
    parser.add_argument("--think-ms", type=float, default=30.0, help="most ms a caller waits between calls (default 30)")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per cell (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; the order alternates (default 2)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="orchestra file (default configs/orchestra.yaml)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"{nproc()} CPUs, load average {load_average()}; {args.callers} callers, think 0..{args.think_ms:g} ms, {args.seconds:g} s per cell")
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as storage_uri:
        config, router = build_router(args.config, storage_uri)
        router.scores([TEXT])  # load and warm
        results = asyncio.run(measure(args, router, config.router.batching))
    print()
    print("| batcher | calls/s (median) | CPU ms per call (median) | mean batch size (median) |")
    print("| --- | ---: | ---: | ---: |")
    for name, cells in results.items():
        rate, cpu_ms, size = (float(np.median([c[i] for c in cells])) for i in range(3))
        print(f"| {name} | {rate:.1f} | {cpu_ms:.2f} | {size:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
