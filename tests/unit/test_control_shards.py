"""Shards of the control actors read as one (serve.control): audit batches spread over the
writers and a query reads after every writer has flushed; monitor outcomes spread over the
intake shards and reads merge every shard's share."""

from __future__ import annotations

import asyncio

import pytest

from actors.monitor import Monitor
from serve.control import AuditShards, ControlPlane, MonitorShards


class FakeMethod:
    """Test double of a Ray actor method: ``.remote`` runs it and returns an awaitable."""

    def __init__(self, function):
        self.function = function

    def remote(self, *args, **kwargs):
        async def result():
            return self.function(*args, **kwargs)

        return result()


class FakeWriter:
    """Test double of an AuditActor handle: keeps its batches, counts flushes."""

    def __init__(self, log: list[str], name: str):
        self.batches: list[list[dict]] = []
        self.write = FakeMethod(self.batches.append)
        self.flush = FakeMethod(lambda: log.append(f"flush {name}"))
        self.query = FakeMethod(lambda **filters: log.append(f"query {name} {filters}") or ["rows"])


def shards(count: int) -> tuple[AuditShards, list[FakeWriter], list[str]]:
    log: list[str] = []
    writers = [FakeWriter(log, str(index)) for index in range(count)]
    return AuditShards(writers), writers, log


def test_batches_go_to_each_writer_in_turn():
    sink, writers, _ = shards(3)
    for batch in range(9):
        asyncio.run(sink.write([{"batch": batch}]))
    assert [len(writer.batches) for writer in writers] == [3, 3, 3]
    assert sorted(b[0]["batch"] for writer in writers for b in writer.batches) == list(range(9))


def test_a_query_flushes_every_other_writer_before_reading():
    sink, _, log = shards(3)
    assert asyncio.run(sink.query(agent="sentiment", limit=5)) == ["rows"]
    # The first writer flushes its own buffer inside query (AuditActor.query).
    assert sorted(log[:2]) == ["flush 1", "flush 2"]
    assert log[2] == "query 0 {'agent': 'sentiment', 'limit': 5}"


def test_the_control_plane_reaches_the_shards_through_its_sink_and_call():
    sink, writers, log = shards(2)
    plane = ControlPlane(monitor=None, audit=sink, traffic=None)
    asyncio.run(plane.sink(plane.audit, "write")([{"batch": 0}]))
    asyncio.run(plane.sink(plane.audit, "write")([{"batch": 1}]))
    assert [len(writer.batches) for writer in writers] == [1, 1]
    assert asyncio.run(plane.call(plane.audit, "query", limit=1)) == ["rows"]
    assert log[-1] == "query 0 {'limit': 1}"


def test_shards_need_a_writer():
    with pytest.raises(ValueError, match="at least one"):
        AuditShards([])


class FakeMonitorActor:
    """Test double of a MonitorActor handle over a real Monitor: its methods through ``.remote``."""

    def __init__(self, monitor: Monitor, log: list[str], name: str):
        self.monitor = monitor
        self.record = FakeMethod(monitor.record)
        self.export = FakeMethod(monitor.export)
        self.window = FakeMethod(lambda *args: log.append(f"window {name}") or monitor.window(*args))
        self.stats = FakeMethod(monitor.stats)


SETTINGS = {"monitor": {"window_s": 60.0}, "cost": {}}


def outcome(ts: float, latency_ms: float) -> dict:
    return {"ts": ts, "agent": "sentiment", "version": "v1", "status": 200, "latency_ms": latency_ms, "routed_by": "router", "label": "POSITIVE"}


def test_outcomes_spread_over_the_intake_shards_and_reads_merge_every_shard():
    log: list[str] = []
    now = 1_000.0
    actors = [FakeMonitorActor(Monitor(clock=lambda: now), log, str(index)) for index in range(3)]
    # A third shard left from a deploy with more: read, but given no new outcomes.
    shards = MonitorShards(actors, SETTINGS, intake=2)
    whole = Monitor(clock=lambda: now)
    actors[2].monitor.record([outcome(now - 1, 99.0)])
    whole.record([outcome(now - 1, 99.0)])
    for batch in range(8):
        outcomes = [outcome(now - batch, 10.0 + batch + i) for i in range(5)]
        asyncio.run(shards.record(outcomes))
        whole.record(outcomes)
    assert [a.monitor.stats()["agents"]["sentiment"]["v1"]["since_start"]["requests"] for a in actors] == [20, 20, 1]
    merged = asyncio.run(shards.window("sentiment", "v1", now - 30))
    assert {k: v for k, v in merged.items() if k != "until"} == {k: v for k, v in whole.window("sentiment", "v1", now - 30).items() if k != "until"}
    assert log == []  # merged from the shares, not asked of one shard


def test_one_monitor_shard_is_asked_directly():
    log: list[str] = []
    shards = MonitorShards([FakeMonitorActor(Monitor(), log, "0")], SETTINGS)
    asyncio.run(shards.window("sentiment", "v1", 0.0))
    assert log == ["window 0"]


class ConfirmingWriter:
    """Test double of an AuditActor handle for ConfirmedReporter: remembers the batch ids it
    took; ``down`` makes its calls fail as a dead actor's would."""

    def __init__(self):
        self.taken: list[str] = []
        self.down = False
        self.receive = FakeMethod(self._receive)
        self.status = FakeMethod(self._status)

    def _receive(self, batch_id, records):
        self.taken.append(batch_id)
        return len(records)

    def _status(self, batch_ids):
        if self.down:
            raise ConnectionError("actor died")
        return {batch_id: "durable" if batch_id in self.taken else "unknown" for batch_id in batch_ids}


def test_a_resent_batch_goes_back_to_its_first_writer_and_a_dead_writer_reads_as_pending():
    writers = [ConfirmingWriter(), ConfirmingWriter()]
    sink = AuditShards(writers)

    async def scenario():
        for batch in ("b1", "b2", "b3", "b1"):
            await sink.receive(batch, [{"i": 0}])
        first = next(writer for writer in writers if "b1" in writer.taken)
        assert first.taken.count("b1") == 2 and sum(len(w.taken) for w in writers) == 4
        first.down = True
        states = await sink.status(["b1", "b2", "b3"])
        other = writers[1 - writers.index(first)]
        assert {b: s for b, s in states.items() if b in first.taken} == dict.fromkeys(set(first.taken), "pending")
        assert {b: s for b, s in states.items() if b in other.taken} == dict.fromkeys(other.taken, "durable")

    asyncio.run(scenario())
