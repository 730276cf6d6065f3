"""ConfirmedReporter: a receipt once the sink holds a record, records kept until durable,
batches resent under their own ids when the sink fails or forgets them, bounded memory."""

from __future__ import annotations

import asyncio

import pytest

from actors.reporter import ConfirmedReporter


class HoldingSink:
    """Test double of the audit writers: takes batches (``receive``), makes them durable on
    ``settle``, forgets the undurable ones on ``restart``, and fails ``failing`` receives."""

    def __init__(self, failing: int = 0):
        self.failing = failing
        self.received: list[tuple[str, list[int]]] = []
        self.pending: set[str] = set()
        self.durable: set[str] = set()

    async def receive(self, batch_id: str, records: list[dict]) -> None:
        await asyncio.sleep(0)
        if self.failing:
            self.failing -= 1
            raise ConnectionError("writer unavailable")
        self.received.append((batch_id, [record["i"] for record in records]))
        self.pending.add(batch_id)

    async def status(self, batch_ids: list[str]) -> dict[str, str]:
        return {b: "durable" if b in self.durable else "pending" if b in self.pending else "unknown" for b in batch_ids}

    def settle(self) -> None:
        self.durable |= self.pending
        self.pending = set()

    def restart(self) -> None:
        self.pending = set()


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_receipt_resolves_when_the_sink_holds_the_record_and_the_record_stays_until_durable():
    async def scenario():
        sink = HoldingSink()
        reporter = ConfirmedReporter(sink, max_batch=10)
        receipts = [reporter.add({"i": i}) for i in range(3)]
        assert not any(r.done() for r in receipts)
        await reporter.pump()
        batch_id = sink.received[0][0]
        assert [r.result() for r in receipts] == [batch_id] * 3
        assert sink.received == [(batch_id, [0, 1, 2])]
        assert reporter.pending == 3  # held: the sink has not written them yet
        await reporter.pump()
        assert reporter.pending == 3 and len(sink.received) == 1
        sink.settle()
        await reporter.pump()
        assert reporter.pending == 0

    run(scenario())


def test_a_failed_receive_keeps_the_receipt_open_and_resends_the_same_batch():
    async def scenario():
        sink = HoldingSink(failing=2)
        reporter = ConfirmedReporter(sink, max_batch=2)
        receipts = [reporter.add({"i": i}) for i in range(3)]
        await reporter.pump()
        assert isinstance(reporter.last_error, ConnectionError) and not any(r.done() for r in receipts)
        reporter.add({"i": 3})
        await reporter.pump()
        await reporter.pump()
        assert reporter.last_error is None
        # The batch formed before the failures keeps its id and goes first.
        assert [ids for _, ids in sink.received] == [[0, 1], [2, 3]]
        assert receipts[0].result() == receipts[1].result() == sink.received[0][0]
        assert receipts[2].result() == sink.received[1][0]

    run(scenario())


def test_a_batch_the_sink_lost_in_a_restart_is_sent_again_under_its_id():
    async def scenario():
        sink = HoldingSink()
        reporter = ConfirmedReporter(sink, max_batch=10)
        receipt = reporter.add({"i": 7})
        await reporter.pump()
        first_id = sink.received[0][0]
        sink.restart()
        await reporter.pump()  # status says unknown: queued again
        await reporter.pump()
        assert sink.received == [(first_id, [7]), (first_id, [7])]
        assert receipt.result() == first_id and reporter.pending == 1
        sink.settle()
        await reporter.pump()
        assert reporter.pending == 0

    run(scenario())


def test_overflow_drops_the_oldest_waiting_records_and_fails_their_receipts():
    async def scenario():
        sink = HoldingSink(failing=100)
        reporter = ConfirmedReporter(sink, max_batch=2, max_buffer=3)
        receipts = [reporter.add({"i": i}) for i in range(5)]
        assert reporter.dropped == 2 and reporter.pending == 3
        with pytest.raises(RuntimeError, match="buffer full"):
            receipts[0].result()
        assert not receipts[4].done()

    run(scenario())


def test_the_loop_sends_at_once_and_stop_hands_over_what_waits():
    async def scenario():
        sink = HoldingSink()
        reporter = ConfirmedReporter(sink, interval_s=30)
        reporter.start()
        receipt = reporter.add({"i": 1})
        # No interval to wait for: a record is sent as soon as it arrives.
        assert await asyncio.wait_for(receipt, 2) == sink.received[0][0]
        late = reporter.add({"i": 2})
        await reporter.stop()
        assert late.done() and [ids for _, ids in sink.received] == [[1], [2]]

    run(scenario())


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_batch"):
        ConfirmedReporter(HoldingSink(), max_batch=0)
