"""BufferedReporter: batching, retry order on sink failure, overflow and shutdown."""

from __future__ import annotations

import asyncio
import logging

from actors.reporter import BufferedReporter


class RecordingSink:
    """Test double for the monitor/audit actor: records batches, fails while ``failing``."""

    def __init__(self, failing: int = 0):
        self.batches: list[list[dict]] = []
        self.failing = failing
        self.calls = 0

    async def __call__(self, batch: list[dict]) -> None:
        self.calls += 1
        await asyncio.sleep(0)
        if self.failing:
            self.failing -= 1
            raise ConnectionError("actor unavailable")
        self.batches.append(list(batch))

    @property
    def ids(self) -> list[int]:
        return [record["i"] for batch in self.batches for record in batch]


def fill(reporter: BufferedReporter, start: int, stop: int) -> None:
    for i in range(start, stop):
        reporter.add({"i": i})


def test_flush_sends_in_batches_of_max_batch():
    sink = RecordingSink()
    reporter = BufferedReporter(sink, max_batch=4)
    fill(reporter, 0, 10)
    assert asyncio.run(reporter.flush()) == 10
    assert [len(batch) for batch in sink.batches] == [4, 4, 2]
    assert sink.ids == list(range(10))
    assert (reporter.pending, reporter.sent) == (0, 10)


def test_plain_function_sink_is_supported():
    received: list[dict] = []
    reporter = BufferedReporter(received.extend)
    fill(reporter, 0, 3)
    assert asyncio.run(reporter.flush()) == 3
    assert received == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_failing_sink_keeps_order_and_loses_nothing(caplog):
    sink = RecordingSink(failing=1)
    reporter = BufferedReporter(sink, max_batch=3, name="audit-reporter")

    async def scenario() -> tuple[int, int]:
        fill(reporter, 0, 5)
        first = await reporter.flush()
        fill(reporter, 5, 7)
        return first, await reporter.flush()

    with caplog.at_level(logging.WARNING, logger="actors.reporter"):
        assert asyncio.run(scenario()) == (0, 7)
    assert "audit-reporter" in caplog.text and "actor unavailable" in caplog.text
    assert sink.ids == list(range(7))
    assert reporter.last_error is None


def test_failure_midway_returns_what_was_sent():
    sink = RecordingSink()
    reporter = BufferedReporter(sink, max_batch=2)
    fill(reporter, 0, 6)

    async def fail_second_batch(batch: list[dict]) -> None:
        if batch[0]["i"] == 2:
            raise ConnectionError("gone")
        await sink(batch)

    reporter._sink = fail_second_batch
    assert asyncio.run(reporter.flush()) == 2
    assert reporter.pending == 4
    assert isinstance(reporter.last_error, ConnectionError)
    reporter._sink = sink
    assert asyncio.run(reporter.flush()) == 4
    assert sink.ids == list(range(6))


def test_overflow_drops_oldest_and_counts():
    sink = RecordingSink()
    reporter = BufferedReporter(sink, max_batch=100, max_buffer=5)
    fill(reporter, 0, 8)
    assert (reporter.pending, reporter.dropped) == (5, 3)
    asyncio.run(reporter.flush())
    assert sink.ids == [3, 4, 5, 6, 7]


def test_requeue_after_failure_still_drops_oldest():
    reporter = BufferedReporter(RecordingSink(), max_batch=2, max_buffer=4)

    async def slow_failing(batch: list[dict]) -> None:
        fill(reporter, 4, 7)  # arrives while the batch is in flight
        raise ConnectionError("gone")

    fill(reporter, 0, 4)
    reporter._sink = slow_failing
    asyncio.run(reporter.flush())
    assert [record["i"] for record in reporter._buffer] == [3, 4, 5, 6]
    assert reporter.dropped == 3


def test_run_flushes_on_interval_and_early_when_a_batch_is_full():
    sink = RecordingSink()

    async def scenario() -> None:
        reporter = BufferedReporter(sink, max_batch=5, interval_s=0.5)
        reporter.start()
        fill(reporter, 0, 2)
        await asyncio.sleep(0.1)
        assert sink.batches == []  # below max_batch: waits for the interval
        await asyncio.sleep(0.5)
        assert sink.ids == [0, 1]

        fill(reporter, 2, 7)
        await asyncio.sleep(0.1)  # a full batch goes out well before the next interval
        assert sink.ids == list(range(7))
        await reporter.stop()

    asyncio.run(scenario())


def test_stop_flushes_what_is_left():
    sink = RecordingSink()

    async def scenario() -> BufferedReporter:
        reporter = BufferedReporter(sink, max_batch=50, interval_s=60)
        reporter.start()
        fill(reporter, 0, 10)
        await asyncio.sleep(0)
        await reporter.stop()
        return reporter

    reporter = asyncio.run(scenario())
    assert sink.ids == list(range(10))
    assert reporter.pending == 0


def test_stop_during_an_inflight_batch_neither_loses_nor_duplicates():
    sink = RecordingSink()
    started = asyncio.Event()

    async def slow_sink(batch: list[dict]) -> None:
        started.set()
        await asyncio.sleep(0.05)
        await sink(batch)

    async def scenario() -> None:
        reporter = BufferedReporter(slow_sink, max_batch=3, interval_s=60)
        reporter.start()
        fill(reporter, 0, 5)
        await started.wait()
        fill(reporter, 5, 6)
        await reporter.stop()

    asyncio.run(scenario())
    assert sink.ids == list(range(6))


def test_failing_sink_is_retried_after_an_interval_not_in_a_tight_loop():
    sink = RecordingSink(failing=1_000)

    async def scenario() -> None:
        reporter = BufferedReporter(sink, max_batch=2, interval_s=0.1)
        fill(reporter, 0, 10)
        reporter.start()
        await asyncio.sleep(0.35)
        sink.failing = 0
        await reporter.stop()
        assert reporter.pending == 0

    asyncio.run(scenario())
    assert sink.calls - len(sink.batches) <= 6  # about one failed attempt per interval
    assert sink.ids == list(range(10))


def test_add_never_raises_without_a_loop():
    reporter = BufferedReporter(RecordingSink(), max_batch=1, max_buffer=1)
    for i in range(3):
        reporter.add({"i": i})
    assert (reporter.pending, reporter.dropped) == (1, 2)
