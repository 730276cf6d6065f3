"""An asyncio micro-batcher that batches by the queue, not by the clock: one batch runs at a
time in a thread, and the requests that arrive meanwhile form the next batch.

Idle, a request runs at once (no wait); under load batches grow with the queue, up to
``max_batch_size``. The router's embeddings (in the ingress) and batchable agents use it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any


class MicroBatcher:
    """``wait_s`` > 0 lets the first request of a batch, arriving at an idle model, wait that
    long for company; 0 (the default) never waits. Ray Serve's ``@serve.batch`` forms each batch
    before the previous one finishes, so under load it runs batches of one or two behind each other."""

    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], max_batch_size: int = 32, wait_s: float = 0.0):
        if max_batch_size < 1 or wait_s < 0:
            raise ValueError(f"need max_batch_size >= 1 and wait_s >= 0, got {max_batch_size}, {wait_s}")
        self.run_batch, self.max_batch_size, self.wait_s = run_batch, max_batch_size, wait_s
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self._arrived: asyncio.Event | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((item, future))
        if self._arrived is not None and len(self._pending) >= self.max_batch_size:
            self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await future

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (not counting the one running)."""
        return len(self._pending)

    async def _drain(self) -> None:
        """Run batches until nothing is pending; each takes what queued while the last ran."""
        first = True
        while self._pending:
            if first and self.wait_s > 0 and len(self._pending) < self.max_batch_size:
                await self._gather_company()
            first = False
            batch, self._pending = self._pending[: self.max_batch_size], self._pending[self.max_batch_size :]
            await self._run(batch)

    async def _gather_company(self) -> None:
        self._arrived = asyncio.Event()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout=self.wait_s)
        except asyncio.TimeoutError:
            pass
        finally:
            self._arrived = None

    async def _run(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        live = [(item, future) for item, future in batch if not future.done()]  # callers that gave up are skipped
        if not live:
            return
        self.batches += 1
        self.items += len(live)
        try:
            results = await asyncio.to_thread(self.run_batch, [item for item, _ in live])
        except Exception as error:  # every caller of the batch sees the error
            for _, future in live:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(live, results):
            if not future.done():
                future.set_result(result)
