"""A bounded in-process buffer that hands records to a sink (the monitor or audit actor)
in batches from a background task, keeping those calls off the request's critical path.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)

Sink = Callable[[list[dict]], Awaitable[Any] | Any]


class BufferedReporter:
    """``add`` from request handlers; ``start``/``stop`` around the event loop's lifetime.

    Delivery is at least once: a batch the sink rejects goes back to the front of the buffer.
    Memory is bounded by ``max_buffer``; past it the oldest records are dropped and counted.
    """

    def __init__(
        self, sink: Sink, *, max_batch: int = 200, interval_s: float = 1.0, max_buffer: int = 100_000, name: str = "reporter"
    ):
        if max_batch < 1 or max_buffer < 1 or interval_s <= 0:
            raise ValueError(
                f"need max_batch >= 1, max_buffer >= 1, interval_s > 0; got {max_batch}, {max_buffer}, {interval_s}"
            )
        self._sink = sink
        self.max_batch = max_batch
        self.interval_s = interval_s
        self.max_buffer = max_buffer
        self.name = name
        self.dropped = 0
        self.sent = 0
        self.last_error: Exception | None = None
        self._buffer: deque[dict] = deque()
        self._batch_ready = asyncio.Event()
        # One flush at a time, or a retried batch could overtake records behind it.
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task | None = None

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def add(self, record: dict) -> None:
        self._buffer.append(record)
        self._drop_overflow()
        if len(self._buffer) >= self.max_batch:
            self._batch_ready.set()

    def _drop_overflow(self) -> None:
        while len(self._buffer) > self.max_buffer:
            self._buffer.popleft()
            self.dropped += 1

    def _requeue(self, batch: list[dict]) -> None:
        self._buffer.extendleft(reversed(batch))
        self._drop_overflow()

    async def _send(self, batch: list[dict]) -> None:
        result = self._sink(batch)
        if inspect.isawaitable(result):
            await result

    async def flush(self) -> int:
        """Send what is buffered now, in batches of ``max_batch``; stop at the first sink error."""
        sent = 0
        async with self._flushing:
            # Bounded by what was there at the start so a busy producer cannot keep us here.
            remaining = len(self._buffer)
            while remaining > 0 and self._buffer:
                batch = [self._buffer.popleft() for _ in range(min(self.max_batch, remaining, len(self._buffer)))]
                try:
                    await self._send(batch)
                except asyncio.CancelledError:
                    self._requeue(batch)
                    raise
                except Exception as exc:
                    self._requeue(batch)
                    self.last_error = exc
                    logger.warning("%s: sink failed (%s); %d records kept for retry", self.name, exc, len(self._buffer))
                    break
                self.last_error = None
                sent += len(batch)
                remaining -= len(batch)
        self.sent += sent
        return sent

    async def _wait_for_work(self) -> None:
        if self.last_error is not None:
            # Back off a whole interval, or a full buffer would hammer a failing sink.
            await asyncio.sleep(self.interval_s)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._batch_ready.wait(), timeout=self.interval_s)
        self._batch_ready.clear()

    async def run(self) -> None:
        try:
            while True:
                await self._wait_for_work()
                # Shielded: a cancel must not abandon a batch the sink may already have taken.
                await asyncio.shield(self.flush())
        except asyncio.CancelledError:
            await self.flush()
            raise

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
