"""A small asyncio micro-batcher: concurrent callers' items are gathered for up to a few
milliseconds (or until the batch is full) and handed to one blocking function in a thread.

The router's embeddings use it in the ingress; unlike ``@serve.batch`` it needs no Serve
replica around it, so the ingress runs the same way in a unit test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any


class MicroBatcher:
    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], max_batch_size: int = 32, wait_s: float = 0.002):
        if max_batch_size < 1 or wait_s < 0:
            raise ValueError(f"need max_batch_size >= 1 and wait_s >= 0, got {max_batch_size}, {wait_s}")
        self.run_batch, self.max_batch_size, self.wait_s = run_batch, max_batch_size, wait_s
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self.max_batch_size:
            self._start(0.0)
        elif self._flusher is None:
            self._start(self.wait_s)
        return await future

    def _start(self, wait_s: float) -> None:
        batch, self._pending = (self._pending, []) if wait_s == 0.0 else ([], self._pending)
        if wait_s == 0.0:
            asyncio.get_running_loop().create_task(self._run(batch))
            return
        self._flusher = asyncio.get_running_loop().create_task(self._flush_after(wait_s))

    async def _flush_after(self, wait_s: float) -> None:
        await asyncio.sleep(wait_s)
        self._flusher = None
        batch, self._pending = self._pending, []
        if batch:
            await self._run(batch)

    async def _run(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            results = await asyncio.to_thread(self.run_batch, [item for item, _ in batch])
        except Exception as error:  # every caller of the batch sees the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)
