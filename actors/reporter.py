"""Bounded in-process buffers that hand records to a sink (the monitor or audit actors) in
batches from a background task: at least once (monitor), or confirmed durable (audit).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

logger = logging.getLogger(__name__)

Sink = Callable[[list[dict]], Awaitable[Any] | Any]


class ReporterLoop:
    """What both reporters share: their settings, and the background task that runs ``pump``
    whenever work is signalled (``_work``) or ``interval_s`` passes; ``start``/``stop`` around
    the event loop's lifetime."""

    def __init__(self, *, max_batch: int, interval_s: float, max_buffer: int, name: str):
        if max_batch < 1 or max_buffer < 1 or interval_s <= 0:
            raise ValueError(
                f"need max_batch >= 1, max_buffer >= 1, interval_s > 0; got {max_batch}, {max_buffer}, {interval_s}"
            )
        self.max_batch, self.interval_s, self.max_buffer, self.name = max_batch, interval_s, max_buffer, name
        self.dropped = 0
        self.last_error: Exception | None = None
        self._work = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def pump(self) -> None:
        raise NotImplementedError

    async def _wait_for_work(self) -> None:
        if self.last_error is not None:
            # Back off a whole interval, or a full buffer would hammer a failing sink.
            await asyncio.sleep(self.interval_s)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), timeout=self.interval_s)
        self._work.clear()

    async def run(self) -> None:
        try:
            while True:
                await self._wait_for_work()
                # Shielded: a cancel must not abandon a batch the sink may already have taken.
                await asyncio.shield(self.pump())
        except asyncio.CancelledError:
            await self.pump()
            raise

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name=self.name)

    async def stop(self) -> None:
        """Stop the loop after handing over what waits."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.pump()


class BufferedReporter(ReporterLoop):
    """``add`` from request handlers; ``start``/``stop`` around the event loop's lifetime.

    Delivery is at least once: a batch the sink rejects goes back to the front of the buffer.
    Memory is bounded by ``max_buffer``; past it the oldest records are dropped and counted.
    """

    def __init__(
        self, sink: Sink, *, max_batch: int = 200, interval_s: float = 1.0, max_buffer: int = 100_000, name: str = "reporter"
    ):
        super().__init__(max_batch=max_batch, interval_s=interval_s, max_buffer=max_buffer, name=name)
        self._sink = sink
        self.sent = 0
        self._buffer: deque[dict] = deque()
        # One flush at a time, or a retried batch could overtake records behind it.
        self._flushing = asyncio.Lock()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def add(self, record: dict) -> None:
        self._buffer.append(record)
        self._drop_overflow()
        if len(self._buffer) >= self.max_batch:
            self._work.set()

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

    async def pump(self) -> None:
        await self.flush()


class ConfirmingSink(Protocol):
    """Where a ConfirmedReporter delivers: ``receive`` holds a batch (not yet durable) and
    ``status`` tells each batch's fate, as ``AuditWriter.status`` does."""

    async def receive(self, batch_id: str, records: list[dict]) -> Any: ...

    async def status(self, batch_ids: list[str]) -> dict[str, str]: ...


class ConfirmedReporter(ReporterLoop):
    """A reporter that loses nothing when either end dies, one at a time.

    ``add`` returns a receipt that resolves once the sink holds the record; a request awaits it
    before it is answered, so an answered request lives in two processes. Records are sent as
    soon as they arrive (one call in flight; what comes meanwhile makes the next batch), and kept
    here until the sink says their batch is durable. A batch the sink no longer knows (it
    restarted) is sent again; the sink drops records it has already taken.
    Memory is bounded by ``max_buffer`` records, held or waiting; past it the oldest waiting
    records are dropped and counted.
    """

    def __init__(self, sink: ConfirmingSink, *, max_batch: int = 200, interval_s: float = 0.5, max_buffer: int = 100_000, name: str = "reporter"):
        super().__init__(max_batch=max_batch, interval_s=interval_s, max_buffer=max_buffer, name=name)
        self._sink = sink
        self._waiting: deque[tuple[dict, asyncio.Future | None]] = deque()
        # Batches formed but not yet taken by the sink, then taken but not yet durable.
        self._outbox: dict[str, list[tuple[dict, asyncio.Future | None]]] = {}
        self._held: dict[str, list[dict]] = {}
        self._pumping = asyncio.Lock()

    @property
    def pending(self) -> int:
        """Records not yet known to be durable."""
        return len(self._waiting) + sum(len(entries) for entries in self._outbox.values()) + sum(map(len, self._held.values()))

    def add(self, record: dict) -> asyncio.Future:
        receipt = asyncio.get_running_loop().create_future()
        self._waiting.append((record, receipt))
        self._drop_overflow()
        self._work.set()
        return receipt

    def _drop_overflow(self) -> None:
        while self._waiting and self.pending > self.max_buffer:
            _, receipt = self._waiting.popleft()
            if receipt is not None and not receipt.done():
                receipt.set_exception(RuntimeError(f"{self.name}: buffer full, record dropped"))
                receipt.exception()  # retrieved here, so an unawaited receipt logs nothing
            self.dropped += 1

    async def pump(self) -> None:
        """Send what waits, then ask after what is held; stops at the first sink error."""
        async with self._pumping:
            try:
                await self._send()
                await self._confirm_held()
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = exc
                logger.warning("%s: sink failed (%s); %d records kept for retry", self.name, exc, self.pending)

    async def _send(self) -> None:
        """Batches that failed or were lost go first, under their own ids, so a sharded sink can
        send each to the writer that may hold part of it; then what waits, in new batches."""
        while self._outbox or self._waiting:
            if not self._outbox:  # one batch formed at a time: what waits can still be dropped
                self._outbox[uuid.uuid4().hex] = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
            batch_id, entries = next(iter(self._outbox.items()))
            await self._sink.receive(batch_id, [record for record, _ in entries])
            del self._outbox[batch_id]
            self._held[batch_id] = [record for record, _ in entries]
            for _, receipt in entries:
                if receipt is not None and not receipt.done():
                    receipt.set_result(batch_id)

    async def _confirm_held(self) -> None:
        if not self._held:
            return
        states = await self._sink.status(list(self._held))
        for batch_id, state in states.items():
            if state == "durable":
                self._held.pop(batch_id, None)
            elif state == "unknown" and batch_id in self._held:
                # Lost with a restarted sink: sent again, with no receipt (its requests were
                # answered when the first copy arrived).
                self._outbox[batch_id] = [(record, None) for record in self._held.pop(batch_id)]
                self._work.set()
