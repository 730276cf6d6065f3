"""MicroBatcher: concurrent submissions share one call, a full batch runs at once, and an
error reaches every caller of its batch."""

from __future__ import annotations

import asyncio

import pytest

from actors.batching import MicroBatcher


def test_concurrent_items_form_batches_and_keep_their_order():
    calls = []

    def double(items):
        calls.append(list(items))
        return [2 * item for item in items]

    async def main():
        batcher = MicroBatcher(double, max_batch_size=4, wait_s=0.05)
        return await asyncio.gather(*(batcher.submit(i) for i in range(10))), batcher

    results, batcher = asyncio.run(main())
    assert results == [2 * i for i in range(10)]
    assert [len(call) for call in calls] == [4, 4, 2]
    assert (batcher.batches, batcher.items) == (3, 10)


def test_a_lone_item_waits_at_most_the_window():
    async def main():
        batcher = MicroBatcher(lambda items: items, max_batch_size=32, wait_s=0.01)
        return await asyncio.wait_for(batcher.submit("x"), timeout=1)

    assert asyncio.run(main()) == "x"


def test_an_error_reaches_every_caller_of_the_batch():
    def broken(items):
        raise RuntimeError("model crashed")

    async def main():
        batcher = MicroBatcher(broken, max_batch_size=8, wait_s=0.01)
        return await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)

    assert [str(error) for error in asyncio.run(main())] == ["model crashed", "model crashed"]
    with pytest.raises(ValueError):
        MicroBatcher(broken, max_batch_size=0)
