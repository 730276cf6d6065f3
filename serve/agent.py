"""One Serve deployment per agent version: loads its specialist once per replica and runs
invocations, batching unary text calls (``MicroBatcher``, from the queue) where the model gains from it
and streaming chunks for agents that stream. Errors leave the replica as ``Failure`` data;
each Result carries the CPU- and GPU-seconds its call used in the replica (``UsageMeter``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from actors.batching import MicroBatcher
from actors.dispatcher import Dispatcher
from actors.invocation import Failure, Invocation, Result, StreamItem, drain
from actors.peers import Peers
from actors.specialists.registry import create_specialist
from actors.traffic import TrafficTable
from cluster.errors import BatonError
from serve.targets import ServeTarget

logger = logging.getLogger(__name__)
_END = object()
# A peer call without a deadline of its own (the caller's deadline applies when it has one).
PEER_TIMEOUT_S = 120.0


class Span:
    """One metered call: ``stop()`` ends it (once; later calls return the same usage)."""

    def __init__(self, meter: UsageMeter, cpu_share: float, wall_share: float):
        self._meter, self.cpu_share, self.wall_share = meter, cpu_share, wall_share
        self.usage: dict[str, float] | None = None

    def stop(self) -> dict[str, float]:
        if self.usage is None:
            self.usage = self._meter.end(self)
        return self.usage


class UsageMeter:
    """The replica's CPU time and reserved GPU time, shared among the calls in flight.

    While n calls run, each is charged 1/n of the CPU the whole process burns (so torch and
    ONNX Runtime pool threads count, which a per-thread clock would miss) and 1/n of the wall
    time times the GPUs Ray reserved for the replica. A replica serves one agent version, so
    the version's totals are exact; one call's figure is exact when it ran alone and an equal
    share when calls overlapped. CPU burnt while no call runs (Ray's own threads) is not charged.
    """

    def __init__(self, gpus: float = 0.0, cpu_clock: Callable[[], float] = time.process_time,
                 wall_clock: Callable[[], float] = time.monotonic):
        self.gpus = gpus
        self._cpu_clock, self._wall_clock = cpu_clock, wall_clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._cpu_last, self._wall_last = cpu_clock(), wall_clock()
        # Per-call shares accumulated since the replica was last idle (a "virtual clock"):
        # a call's charge is the difference between their values at its end and its start.
        self._cpu_share = self._wall_share = 0.0

    def start(self) -> Span:
        """A call begins: from now on it shares what the replica burns."""
        with self._lock:
            self._advance()
            self._in_flight += 1
            return Span(self, self._cpu_share, self._wall_share)

    def end(self, span: Span) -> dict[str, float]:
        """A call ends (through ``Span.stop``): its ``cpu_s``, and ``gpu_s`` where GPUs are reserved."""
        with self._lock:
            self._advance()
            self._in_flight -= 1
            usage = {"cpu_s": self._cpu_share - span.cpu_share}
            if self.gpus:
                usage["gpu_s"] = (self._wall_share - span.wall_share) * self.gpus
            if not self._in_flight:  # no span holds a base any more: restart near 0 to keep precision
                self._cpu_share = self._wall_share = 0.0
            return usage

    @contextmanager
    def measure(self) -> Iterator[Span]:
        span = self.start()
        try:
            yield span
        finally:
            span.stop()

    def _advance(self) -> None:
        cpu, wall = self._cpu_clock(), self._wall_clock()
        if self._in_flight:
            self._cpu_share += (cpu - self._cpu_last) / self._in_flight
            self._wall_share += (wall - self._wall_last) / self._in_flight
        self._cpu_last, self._wall_last = cpu, wall


def charged(result: Result, usage: dict[str, float]) -> Result:
    """``result`` with ``usage`` added to what it already declares (tokens, or a peer's seconds)."""
    declared = result.usage or {}
    return replace(result, usage={**declared, **{key: declared.get(key, 0.0) + value for key, value in usage.items()}})


def charged_evenly(answers: list[Result | Failure], usage: dict[str, float]) -> list[Result | Failure]:
    """A batch's answers, each Result charged an equal share of the batch's usage."""
    share = {key: value / len(answers) for key, value in usage.items()}
    return [charged(answer, share) if isinstance(answer, Result) else answer for answer in answers]


def reserved_gpus() -> float:
    """The GPUs (fractions included) Ray reserved for this replica; 0 outside a Ray actor."""
    import ray

    # Checked first: get_runtime_context() would start a local Ray instance if none runs.
    if not ray.is_initialized():
        return 0.0
    context = ray.get_runtime_context()
    if context.get_actor_id() is None:
        return 0.0
    return float(context.get_assigned_resources().get("GPU", 0.0))


def deployment_name(agent: str, version: str) -> str:
    return f"{agent}.{version}"


def internal_failure(where: str) -> Failure:
    logger.exception("unexpected error in %s", where)
    return Failure(BatonError(f"internal error in {where}; see its replica log"))


async def iterate_in_thread(produce: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    """Items of a blocking iterator, produced on a worker thread so the replica's event loop
    keeps serving; an exception in the iterator is raised here, after the items before it."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def pump() -> None:
        try:
            for item in produce():
                loop.call_soon_threadsafe(queue.put_nowait, item)
                if stop.is_set():  # the caller went away: stop generating
                    break
            loop.call_soon_threadsafe(queue.put_nowait, _END)
        except BaseException as error:  # handed to the consumer, raised there
            loop.call_soon_threadsafe(queue.put_nowait, error)

    loop.run_in_executor(None, pump)
    try:
        while True:
            item = await queue.get()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        # The worker notices at its next item and stops; nothing waits for it here.
        stop.set()


def peer_dispatcher(peers: dict[str, dict[str, DeploymentHandle]], traffic: dict, timeout_s: float) -> Dispatcher:
    """The Dispatcher a replica calls its ``uses`` agents through."""
    targets = {
        name: {version: ServeTarget(handle, False, f"agent {name} {version}") for version, handle in versions.items()}
        for name, versions in peers.items()
    }
    return Dispatcher(targets, TrafficTable(traffic), default_timeout_s=timeout_s)


@serve.deployment
class AgentVersion:
    def __init__(
        self, agent: str, version: str, kind: str, params: dict, torch_threads: int, batching: dict,
        peers: dict[str, dict[str, DeploymentHandle]] | None = None, peer_traffic: dict | None = None,
    ):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch

        torch.set_num_threads(torch_threads)
        self.agent, self.version = agent, version
        self.where = f"agent {agent} {version}"
        self.meter = UsageMeter(gpus=reserved_gpus())
        self.specialist = create_specialist(kind, params)
        self.peers = Peers(peer_dispatcher(peers, peer_traffic or {}, PEER_TIMEOUT_S)) if peers else None
        if self.peers is not None:
            self.specialist.connect(self.peers)
        self.specialist.load()
        # Batches form from the queue (see MicroBatcher): none wait when the replica is idle.
        self._batcher = MicroBatcher(self._predict_metered, batching["max_batch_size"], batching["batch_wait_timeout_s"])

    async def invoke(self, invocation: Invocation) -> Result | Failure:
        """The whole answer to one invocation (a streaming agent's stream, drained)."""
        if self.peers is not None:
            self.peers.attach(asyncio.get_running_loop())
        if self.specialist.batchable and invocation.text is not None:
            return await self._batcher.submit(invocation)
        return await asyncio.to_thread(self._run_to_end, invocation)

    async def stream(self, invocation: Invocation) -> AsyncIterator[StreamItem]:
        """Chunks as the specialist yields them, then its Result, or a Failure as the last item."""
        if self.peers is not None:
            self.peers.attach(asyncio.get_running_loop())
        try:
            async for item in iterate_in_thread(lambda: self._metered(self.specialist.stream(invocation))):
                yield item
        except BatonError as error:
            yield Failure(error)
        except Exception:
            yield internal_failure(self.where)

    def _run_to_end(self, invocation: Invocation) -> Result | Failure:
        try:
            return drain(self._metered(self.specialist.stream(invocation)))
        except BatonError as error:
            return Failure(error)
        except Exception:
            return internal_failure(self.where)

    def _metered(self, items: Iterable[StreamItem]) -> Iterator[StreamItem]:
        """The stream, its Result charged with the usage of the whole stream up to it."""
        with self.meter.measure() as span:
            for item in items:
                yield charged(item, span.stop()) if isinstance(item, Result) else item

    def _predict_metered(self, invocations: list[Invocation]) -> list[Result | Failure]:
        with self.meter.measure() as span:
            answers = self._predict_isolated(invocations)
        return charged_evenly(answers, span.usage)

    def _predict_isolated(self, invocations: list[Invocation]) -> list[Result | Failure]:
        """Predict the batch; if one item is bad, answer the others and fail only that one."""
        try:
            outputs = self.specialist.predict([i.text for i in invocations], [i.options for i in invocations])
            return [self.specialist.result(output) for output in outputs]
        except BatonError as error:
            if len(invocations) == 1:
                return [Failure(error)]
        except Exception:
            if len(invocations) == 1:
                return [internal_failure(self.where)]
        return [self._predict_isolated([invocation])[0] for invocation in invocations]

    def describe(self) -> dict[str, Any]:
        return {"agent": self.agent, "version": self.version, "streams": self.specialist.streams, **self.specialist.describe()}
