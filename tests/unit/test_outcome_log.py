"""Outcome log: segments round trip, appear whole, compact, expire, survive a crash mid-compaction."""

from __future__ import annotations

import posixpath
import uuid
from types import SimpleNamespace

import pytest

from actors.outcome_log import OUTCOME_COLUMNS, OutcomeLog
from cluster.storage import Storage


def outcome(ts: float, latency_ms: float = 10.0, **fields) -> SimpleNamespace:
    row = dict.fromkeys(OUTCOME_COLUMNS)
    row.update({"kind": "request", "ts": ts, "agent": "sentiment", "version": "v1", "status": 200, "latency_ms": latency_ms})
    row.update(fields)
    return SimpleNamespace(**row)


def files(storage: Storage) -> list[str]:
    directory = storage.path("monitor", "outcomes")
    return sorted(posixpath.basename(p) for p in storage.fs.ls(directory, detail=False))


@pytest.fixture(params=["local", "memory"])
def storage(request, tmp_path) -> Storage:
    """A local path, and fsspec's memory filesystem standing in for an object store."""
    if request.param == "local":
        return Storage(str(tmp_path / "store"))
    return Storage(f"memory://outcome-log-{uuid.uuid4().hex}")


def opened(storage: Storage, **options) -> OutcomeLog:
    log = OutcomeLog(storage, **options)
    log.recover()
    return log


def test_batches_round_trip_in_order_with_their_seq_and_batch_id(storage):
    log = opened(storage)
    log.append(1, "batch-a", [outcome(5.0, 12.5, label="POSITIVE", correct=None), outcome(6.0, cpu_s=0.25, input_tokens=7)])
    log.append(2, None, [outcome(4.0, 3.0, kind="feedback", status=None, correct=True)])

    recovered = OutcomeLog(storage).recover()
    rows = recovered.table.to_pylist()
    assert [(r["seq"], r["batch_id"], r["ts"]) for r in rows] == [(1, "batch-a", 5.0), (1, "batch-a", 6.0), (2, None, 4.0)]
    assert rows[0]["label"] == "POSITIVE" and rows[0]["latency_ms"] == 12.5
    assert (rows[1]["cpu_s"], rows[1]["input_tokens"]) == (0.25, 7)
    assert (rows[2]["kind"], rows[2]["status"], rows[2]["correct"]) == ("feedback", None, True)
    assert recovered.checkpoint is None and recovered.unreadable == []
    # Only whole segments are visible: no temp file is left beside them.
    assert files(storage) == ["seg-000000000001-000000000001.parquet", "seg-000000000002-000000000002.parquet"]


def test_a_write_that_died_before_its_rename_is_cleared(storage):
    log = opened(storage)
    log.append(1, None, [outcome(1.0)])
    storage.fs.pipe_file(storage.path("monitor", "outcomes") + "/.seg-000000000002-000000000002.parquet.0a1b2c3d.tmp", b"half")
    assert OutcomeLog(storage).recover().table.column("ts").to_pylist() == [1.0]
    assert files(storage) == ["seg-000000000001-000000000001.parquet"]


def test_empty_storage_recovers_nothing(storage):
    recovered = OutcomeLog(storage).recover()
    assert recovered.table.num_rows == 0 and recovered.checkpoint is None


def test_checkpoint_round_trip(storage):
    log = opened(storage)
    log.write_checkpoint({"seq": 3, "origin": 1.5})
    assert OutcomeLog(storage).recover().checkpoint == {"seq": 3, "origin": 1.5}


def test_compaction_merges_small_neighbours_and_keeps_every_row(storage):
    log = opened(storage, compact_rows=5, compact_span_s=100.0)
    for seq in range(1, 8):
        log.append(seq, f"b{seq}", [outcome(float(seq), float(seq)), outcome(seq + 0.5, seq + 0.5)])
    before = OutcomeLog(storage).recover().table

    assert log.compact() == 3  # (1,2), (3,4) and (5,6) merge; 7 waits for a partner
    assert files(storage) == [
        "seg-000000000001-000000000002.parquet",
        "seg-000000000003-000000000004.parquet",
        "seg-000000000005-000000000006.parquet",
        "seg-000000000007-000000000007.parquet",
    ]
    assert [(s.first_seq, s.last_seq, s.rows) for s in log.segments] == [(1, 2, 4), (3, 4, 4), (5, 6, 4), (7, 7, 2)]
    after = OutcomeLog(storage).recover().table
    assert after.equals(before)


def test_compaction_keeps_segments_apart_across_a_long_span(storage):
    """A merged segment is expired whole, so it may not stretch far in outcome time."""
    log = opened(storage, compact_rows=100, compact_span_s=10.0)
    log.append(1, None, [outcome(0.0)])
    log.append(2, None, [outcome(5.0)])
    log.append(3, None, [outcome(50.0)])
    log.append(4, None, [outcome(52.0)])
    log.compact()
    assert [(s.first_seq, s.last_seq) for s in log.segments] == [(1, 2), (3, 4)]


def test_a_crash_between_merge_and_cleanup_counts_nothing_twice(storage):
    log = opened(storage, compact_rows=100)
    for seq in (1, 2, 3):
        log.append(seq, None, [outcome(float(seq))])
    inputs = {s.path: storage.fs.cat_file(s.path) for s in log.segments}
    log.compact()
    for path, data in inputs.items():  # what a compaction leaves when it dies before removing its inputs
        storage.fs.pipe_file(path, data)

    recovered = OutcomeLog(storage).recover()
    assert recovered.table.column("ts").to_pylist() == [1.0, 2.0, 3.0]
    assert files(storage) == ["seg-000000000001-000000000003.parquet"]


def test_expire_removes_only_old_segments_a_checkpoint_covers(storage):
    log = opened(storage)
    log.append(1, None, [outcome(10.0), outcome(20.0)])
    log.append(2, None, [outcome(30.0)])
    log.append(3, None, [outcome(15.0)])

    assert log.expire(before_ts=25.0, through_seq=2) == 1  # seq 3 is old too, but no checkpoint has it yet
    assert [s.first_seq for s in log.segments] == [2, 3]
    assert log.expire(before_ts=25.0, through_seq=3) == 1
    assert [s.first_seq for s in log.segments] == [2]
    assert OutcomeLog(storage).recover().table.column("ts").to_pylist() == [30.0]


def test_an_unreadable_segment_is_set_aside_and_reported(storage):
    log = opened(storage)
    log.append(1, None, [outcome(1.0)])
    broken = storage.path("monitor", "outcomes", "seg-000000000002-000000000002.parquet")
    storage.fs.pipe_file(broken, b"not parquet")
    log.append(3, None, [outcome(3.0)])

    recovered = OutcomeLog(storage).recover()
    assert recovered.unreadable == [broken]
    assert recovered.table.column("ts").to_pylist() == [1.0, 3.0]
    assert "seg-000000000002-000000000002.parquet.unreadable" in files(storage)
    assert OutcomeLog(storage).recover().unreadable == []  # reported once, not on every restart


def test_bad_options_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="compact_rows"):
        OutcomeLog(Storage(str(tmp_path)), compact_rows=0)
