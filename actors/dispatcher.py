"""The one way an agent is called: version choice by weight (sticky), the call under the
request's deadline, typed errors, streaming, step reports and a hook for shadow copies.

The ingress, supervisors and pipelines all hold a Dispatcher; Serve handles hide behind
the ``Target`` protocol, so this module runs and tests without Ray.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from actors.invocation import Chunk, Failure, Invocation, Result, StreamItem, finish
from actors.traffic import TrafficTable
from cluster.errors import BatonError, NotFound, Unavailable

logger = logging.getLogger(__name__)


class Target(Protocol):
    """One agent version as the dispatcher reaches it (a Serve handle, or a composite in-process)."""

    streams: bool

    async def call(self, invocation: Invocation) -> Result | Failure: ...

    def stream(self, invocation: Invocation) -> AsyncIterator[StreamItem]: ...


@dataclass
class Called:
    """A finished call: who answered, how long it took, and the Result or the error."""

    agent: str
    version: str
    latency_ms: float
    result: Result | None = None
    error: BatonError | None = None
    # When the call finished: a trace lists steps in order of completion.
    finished: float = field(default_factory=time.perf_counter)

    @property
    def ok(self) -> bool:
        return self.error is None

    def trace_entry(self, step: str) -> dict:
        """A step of API.md §8's ``trace``."""
        return {
            "step": step,
            "agent": self.agent,
            "version": self.version,
            "latency_ms": round(self.latency_ms, 3),
            "status": "ok" if self.ok else "error",
            "error": None if self.ok else self.error.as_dict(),
        }

    def outcome(self) -> dict:
        """What the monitor records for this call."""
        return {
            "ts": time.time(),
            "agent": self.agent,
            "version": self.version,
            "status": 200 if self.ok else self.error.status,
            "latency_ms": self.latency_ms,
            "label": self.result.label if self.result is not None else None,
        }


# Called with (agent, primary version, invocation) after each pick; may start a copy and
# return a callback that receives the primary's finished call, to compare the two.
ShadowHook = Callable[[str, str, Invocation], "Callable[[Called], None] | None"]
StepSink = Callable[[Called], None]


class Dispatcher:
    """Calls agents by name. ``targets[agent][version]`` reaches each deployed version.

    ``default_timeout_s`` bounds a call when the invocation carries no deadline.
    ``on_call`` sees every finished call (the monitor's per-step outcomes);
    ``shadow`` is called with (agent, primary version, invocation) after each primary
    pick and may start a fire-and-forget copy (the lifecycle's shadow traffic); the
    callback it returns gets the primary's ``Called`` for the comparison.
    """

    def __init__(
        self,
        targets: Mapping[str, Mapping[str, Target]],
        traffic: TrafficTable,
        *,
        default_timeout_s: float = 30.0,
        on_call: StepSink | None = None,
        shadow: ShadowHook | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.targets = targets
        self.traffic = traffic
        self.default_timeout_s = default_timeout_s
        self.on_call = on_call
        self.shadow = shadow
        self._clock = clock

    def reporting_to(self, on_call: StepSink | None) -> Dispatcher:
        """The same agents and weights, with every finished call also sent to ``on_call``
        (a composite reports its steps; the ingress reports the request as a whole)."""
        twin = Dispatcher(self.targets, self.traffic, default_timeout_s=self.default_timeout_s, on_call=on_call, clock=self._clock)
        twin.shadow = self.shadow
        return twin

    def knows(self, agent: str) -> bool:
        return agent in self.targets

    def streams(self, agent: str) -> bool:
        return any(target.streams for target in self._versions(agent).values())

    def pick(self, agent: str, invocation: Invocation) -> str:
        versions = self._versions(agent)
        if len(versions) == 1:  # pipelines have no traffic split
            return next(iter(versions))
        return self.traffic.pick(agent, invocation.sticky_key)

    def _versions(self, agent: str) -> Mapping[str, Target]:
        if agent not in self.targets:
            raise NotFound(f"agent {agent!r} does not exist (agents: {sorted(self.targets)})")
        return self.targets[agent]

    def _target(self, agent: str, version: str) -> Target:
        versions = self._versions(agent)
        if version not in versions:
            raise NotFound(f"agent {agent!r} has no version {version!r} (versions: {sorted(versions)})")
        return versions[version]

    def _timeout(self, invocation: Invocation) -> float:
        remaining = invocation.remaining_s(self._clock)
        return self.default_timeout_s if remaining is None else min(remaining, self.default_timeout_s)

    def _timed_out(self, agent: str, version: str, timeout_s: float) -> Unavailable:
        return Unavailable(f"agent {agent!r} {version} did not answer within {timeout_s:.3g}s", retry_after_s=5)

    async def invoke(self, agent: str, invocation: Invocation, version: str | None = None) -> Called:
        """Call one agent to completion; errors come back in ``Called.error``, never raised."""
        started = time.perf_counter()
        try:
            version = version or self.pick(agent, invocation)
        except BatonError as error:
            return self._done(Called(agent, version or "none", 0.0, error=error))
        compare = self._start_shadow(agent, version, invocation)
        timeout_s = self._timeout(invocation)
        try:
            target = self._target(agent, version)
            item = await asyncio.wait_for(target.call(invocation), timeout=max(timeout_s, 1e-3))
            called = Called(agent, version, _ms(started), result=finish(item))
        except asyncio.TimeoutError:
            called = Called(agent, version, _ms(started), error=self._timed_out(agent, version, timeout_s))
        except BatonError as error:
            called = Called(agent, version, _ms(started), error=error)
        return self._done(called, compare)

    async def stream(self, agent: str, invocation: Invocation, version: str | None = None) -> AsyncIterator[StreamItem | Called]:
        """Chunks as the agent produces them, then one ``Called`` with the whole outcome.

        An agent that does not stream yields only the ``Called``. Errors before or after
        the first chunk end the stream as a ``Called`` with its error; nothing is raised.
        """
        started = time.perf_counter()
        try:
            version = version or self.pick(agent, invocation)
            target = self._target(agent, version)
        except BatonError as error:
            yield self._done(Called(agent, version or "none", 0.0, error=error))
            return
        if not target.streams:
            yield await self.invoke(agent, invocation, version)
            return
        compare = self._start_shadow(agent, version, invocation)
        timeout_s = self._timeout(invocation)
        deadline = time.monotonic() + timeout_s
        final: StreamItem | None = None
        iterator = target.stream(invocation).__aiter__()
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise asyncio.TimeoutError
                try:
                    item = await asyncio.wait_for(iterator.__anext__(), timeout=left)
                except StopAsyncIteration:
                    break
                if isinstance(item, Chunk):
                    yield item
                else:
                    final = item
            called = Called(agent, version, _ms(started), result=finish(final))
        except asyncio.TimeoutError:
            called = Called(agent, version, _ms(started), error=self._timed_out(agent, version, timeout_s))
        except BatonError as error:
            called = Called(agent, version, _ms(started), error=error)
        finally:
            await _close(iterator)
        yield self._done(called, compare)

    def _start_shadow(self, agent: str, version: str, invocation: Invocation) -> Callable[[Called], None] | None:
        if self.shadow is None:
            return None
        try:
            return self.shadow(agent, version, invocation)
        except Exception:  # a shadow copy must never hurt the primary request
            logger.exception("shadow hook failed for %s %s", agent, version)
            return None

    def _done(self, called: Called, compare: Callable[[Called], None] | None = None) -> Called:
        if compare is not None:
            compare(called)
        if self.on_call is not None:
            self.on_call(called)
        return called


async def _close(iterator: Any) -> None:
    closer = getattr(iterator, "aclose", None)
    if closer is not None:
        try:
            await closer()
        except Exception:  # closing an already failed generator
            pass


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
