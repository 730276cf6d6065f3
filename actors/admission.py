"""Admission control for one ingress replica: at most ``limit`` requests run at once, a few
more wait in a short first-come queue whose wait is bounded by a configured maximum and the
request's own deadline, and the rest are refused at once with ``Overloaded`` (503, Retry-After).
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Callable

from cluster.config import AdmissionSettings
from cluster.errors import Overloaded

# Weight of the newest service time in the running mean: about the last 20 requests count.
SMOOTHING = 0.1


class AdmissionGate:
    """A concurrency limit with a bounded wait in front of it.

    A request is admitted at once while fewer than ``limit`` run and nobody waits. Otherwise it
    waits its turn, first come first served, for at most ``max_wait_s`` and never past its
    deadline; one that would wait longer, by the queue's length and the mean service time seen
    so far, or that finds ``max_queue`` already waiting, is refused at once rather than after
    the wait. A refusal's Retry-After is the time the current backlog takes to drain (at least
    one second, at most ``max_retry_after_s``). Plain asyncio: one gate per event loop.
    """

    def __init__(
        self,
        limit: int,
        max_queue: int,
        max_wait_s: float,
        *,
        max_retry_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if limit < 1 or max_queue < 0 or max_wait_s < 0:
            raise ValueError(f"limit must be >= 1, max_queue and max_wait_s >= 0; got {limit}, {max_queue}, {max_wait_s}")
        self.limit, self.max_queue, self.max_wait_s = limit, max_queue, max_wait_s
        self.max_retry_after_s = max_retry_after_s
        self._clock = clock
        self._running = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._service_s: float | None = None  # running mean of how long an admitted request holds its slot
        self.admitted = 0
        self.refused = 0

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def service_s(self) -> float | None:
        return self._service_s

    @asynccontextmanager
    async def slot(self, deadline: float | None = None) -> AsyncIterator[None]:
        """Hold a slot for the body of the ``async with``; raises ``Overloaded`` when refused.
        ``deadline`` is on the gate's clock; the slot is given back however the body ends."""
        await self.enter(deadline)
        started = self._clock()
        try:
            yield
        finally:
            self.leave(self._clock() - started)

    async def enter(self, deadline: float | None = None) -> None:
        """Take a slot, waiting for one within the budget; raises ``Overloaded`` otherwise."""
        if self._running < self.limit and not self._waiters:
            self._running += 1
            self.admitted += 1
            return
        budget = self._budget(deadline)
        if len(self._waiters) >= self.max_queue or budget <= 0 or self.expected_wait_s(len(self._waiters) + 1) > budget:
            raise self._refusal()
        turn = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            await asyncio.wait((turn,), timeout=budget)
        except asyncio.CancelledError:
            self._give_up(turn)
            raise
        if not turn.done():
            self._give_up(turn)
            raise self._refusal()
        self.admitted += 1

    def leave(self, held_s: float) -> None:
        """Give a slot back after holding it ``held_s`` seconds: to the longest waiter, if any."""
        self._service_s = held_s if self._service_s is None else self._service_s + SMOOTHING * (held_s - self._service_s)
        self._hand_over()

    def expected_wait_s(self, position: int) -> float:
        """How long the request at ``position`` (1 = next) in the queue can expect to wait: each
        of the ``limit`` slots frees once per mean service time. 0 before any request finished."""
        return 0.0 if self._service_s is None else position * self._service_s / self.limit

    def retry_after_s(self) -> float:
        """When a refused request may expect room: the time the running and waiting requests take
        to drain, at least a second, at most ``max_retry_after_s``."""
        drain = self.expected_wait_s(self._running + len(self._waiters))
        return min(self.max_retry_after_s, max(1.0, math.ceil(drain)))

    def _budget(self, deadline: float | None) -> float:
        if deadline is None:
            return self.max_wait_s
        return min(self.max_wait_s, deadline - self._clock())

    def _refusal(self) -> Overloaded:
        self.refused += 1
        return Overloaded(
            f"baton is at capacity ({self._running} running, {len(self._waiters)} waiting on this replica); retry later",
            retry_after_s=self.retry_after_s(),
        )

    def _give_up(self, turn: asyncio.Future) -> None:
        """A waiter leaves (refused or cancelled); a slot handed to it just now goes on to the next."""
        if turn.done() and not turn.cancelled():
            self._hand_over()
            return
        turn.cancel()
        try:
            self._waiters.remove(turn)
        except ValueError:
            pass

    def _hand_over(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes on: the running count stays the same
                return
        self._running -= 1


def admission_gate(settings: AdmissionSettings) -> AdmissionGate | None:
    """The gate an ingress replica builds from ``ingress.admission``; None when shedding is off."""
    if not settings.enabled:
        return None
    return AdmissionGate(
        settings.max_concurrent, settings.max_queue, settings.max_queue_wait_s, max_retry_after_s=settings.max_retry_after_s
    )
