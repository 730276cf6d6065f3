"""MicroBatcher: concurrent submissions share one call, a full batch runs at once, requests
that arrive while a batch runs form the next one, and an error reaches every caller of its batch."""

from __future__ import annotations

import asyncio
import threading

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


def first_batch_blocks():
    """A batch function that records each batch and holds the first one until released."""
    release, calls = threading.Event(), []

    def slow(items):
        calls.append(list(items))
        if len(calls) == 1:
            release.wait(5)
        return items

    return release, calls, slow


def test_requests_arriving_while_a_batch_runs_form_the_next_batch():
    """Batching by the queue: the lone first request runs at once; the five that arrive while
    it runs go together, then the batcher is idle again."""
    release, calls, slow = first_batch_blocks()

    async def main():
        batcher = MicroBatcher(slow, max_batch_size=32)
        first = asyncio.ensure_future(batcher.submit(0))
        while not calls:
            await asyncio.sleep(0.001)
        later = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0.01)
        queued = batcher.queued
        release.set()
        results = await asyncio.gather(first, *later)
        return results, queued, await batcher.submit(9)

    results, queued, alone = asyncio.run(main())
    assert results == [0, 1, 2, 3, 4, 5] and queued == 5 and alone == 9
    assert calls == [[0], [1, 2, 3, 4, 5], [9]]


def test_a_caller_that_gave_up_is_left_out_of_the_batch():
    release, calls, slow = first_batch_blocks()

    async def main():
        batcher = MicroBatcher(slow, max_batch_size=8)
        first = asyncio.ensure_future(batcher.submit("a"))
        while not calls:
            await asyncio.sleep(0.001)
        impatient = asyncio.ensure_future(batcher.submit("b"))
        patient = asyncio.ensure_future(batcher.submit("c"))
        await asyncio.sleep(0.01)
        impatient.cancel()
        release.set()
        return await asyncio.gather(first, patient)

    assert asyncio.run(main()) == ["a", "c"]
    assert calls == [["a"], ["c"]]
