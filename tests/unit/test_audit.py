"""Audit: the Parquet record round trip, redaction, day partitions, filters and write failures."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone

import pyarrow.dataset as ds
import pytest

from actors.audit import AUDIT_SCHEMA, AuditWriter, read_audit
from cluster.storage import Storage

DAY1 = datetime(2024, 3, 1, 23, 59, 0, tzinfo=timezone.utc)
DAY2 = DAY1 + timedelta(minutes=2)


def redact(text: str) -> str:
    """Test double for the PII specialist: hides every digit."""
    return "".join("#" if char.isdigit() else char for char in text)


class FakeClock:
    def __init__(self, now: float = DAY1.timestamp()):
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(request_id: str, ts: datetime | float | str = DAY1, **fields) -> dict:
    return {"request_id": request_id, "ts": ts, "endpoint": "/v1/route", "agent": "sentiment", **fields}


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> Storage:
    if request.param == "s3":
        return Storage(request.getfixturevalue("s3_uri"))
    return Storage(str(tmp_path / "store"))


@pytest.fixture
def writer(storage) -> AuditWriter:
    return AuditWriter(storage, batch_size=1_000, flush_interval_s=3_600, redactor=redact, clock=FakeClock())


def audit_files(storage: Storage) -> list[str]:
    return sorted(storage.fs.find(storage.path("audit")))


def test_round_trip_keeps_every_field_and_type(storage, writer):
    text = "call me at 555-0100 ✓"
    full = record(
        "r-1", principal="key-7", version="v2", routed_by="router", confidence=0.91, status_code=200,
        latency_ms=12.5, text=text, output={"label": "POSITIVE", "scores": {"POSITIVE": 0.97}}, error=None,
        metadata={"channel": "call 555-0100"}, trace=[{"step": "sentiment", "status": "ok"}],
    )
    assert writer.write([full]) == 1
    assert writer.flush() == 1

    [row] = read_audit(storage)
    assert row == {
        "request_id": "r-1", "ts": "2024-03-01T23:59:00+00:00", "principal": "key-7", "endpoint": "/v1/route",
        "agent": "sentiment", "version": "v2", "routed_by": "router", "confidence": 0.91, "status_code": 200,
        "latency_ms": 12.5, "input_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "input_chars": len(text), "input_text": "call me at ###-#### ✓",
        "output": json.dumps({"label": "POSITIVE", "scores": {"POSITIVE": 0.97}}, sort_keys=True), "error": None,
        "metadata": json.dumps({"channel": "call ###-####"}), "trace": json.dumps([{"status": "ok", "step": "sentiment"}]),
    }
    [path] = audit_files(storage)
    assert ds.dataset(path, format="parquet", filesystem=storage.fs).schema.equals(AUDIT_SCHEMA)


def test_missing_optional_fields_are_null_and_ts_forms_agree(storage, writer):
    writer.write([record("a", DAY1.timestamp()), record("b", "2024-03-01T23:59:00Z"), record("c", DAY1.replace(tzinfo=None))])
    writer.flush()
    rows = read_audit(storage)
    assert [row["ts"] for row in rows] == ["2024-03-01T23:59:00+00:00"] * 3
    optional = ("principal", "confidence", "status_code", "input_text", "output")
    assert all(row[name] is None for row in rows for name in optional)


def test_store_input_text_false_keeps_hash_but_not_text(storage):
    writer = AuditWriter(storage, store_input_text=False)
    writer.write([record("r-1", text="secret 123")])
    writer.flush()
    [row] = read_audit(storage)
    assert row["input_text"] is None
    assert row["input_sha256"] == hashlib.sha256(b"secret 123").hexdigest()
    assert row["input_chars"] == 10


def test_text_without_redactor_is_refused(storage):
    with pytest.raises(ValueError, match="redactor"):
        AuditWriter(storage)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"input_text": "raw"}, "input_text"),
        ({"colour": "red", "mood": 1}, r"\['colour', 'mood'\]"),
        ({"request_id": None}, "request_id"),
        ({"status_code": 200.5}, "integer"),
        ({"confidence": "high"}, "confidence"),
        ({"ts": "yesterday"}, "yesterday"),
    ],
)
def test_invalid_records_are_rejected_whole(writer, bad, message):
    with pytest.raises(ValueError, match=message):
        writer.write([record("ok"), {**record("bad"), **bad}])
    assert writer.buffered == 0


def test_one_file_per_day_in_day_partitions(storage, writer):
    writer.write([record("a", DAY1), record("b", DAY2), record("c", DAY1)])
    assert writer.flush() == 3
    files = audit_files(storage)
    assert [path.split("/")[-2] for path in files] == ["day=2024-03-01", "day=2024-03-02"]
    assert all(path.split("/")[-1].startswith("part-2024") and path.endswith(".parquet") for path in files)
    assert [row["request_id"] for row in read_audit(storage)] == ["a", "c", "b"]


def test_filters_since_until_agent_endpoint_ids_and_limit(storage, writer):
    start = datetime(2024, 3, 1, tzinfo=timezone.utc)
    writer.write(
        [record(f"r-{i}", start + timedelta(hours=12 * i), agent="sentiment" if i % 2 else "language") for i in range(8)]
        + [record("op-1", start + timedelta(hours=1), endpoint="admin.weights", agent=None)]
    )
    writer.flush()

    def ids(**filters) -> list[str]:
        return [row["request_id"] for row in read_audit(storage, **filters)]

    assert ids(limit=3) == ["r-5", "r-6", "r-7"]
    assert ids(since=start + timedelta(hours=36)) == ["r-3", "r-4", "r-5", "r-6", "r-7"]
    assert ids(since=start + timedelta(hours=12), until=start + timedelta(hours=36)) == ["r-1", "r-2"]
    assert ids(agent="sentiment", limit=2) == ["r-5", "r-7"]
    assert ids(endpoint="admin.weights") == ["op-1"]
    assert ids(request_ids=["r-0", "op-1", "missing"]) == ["r-0", "op-1"]
    assert ids(since=start + timedelta(days=30)) == []


def test_reading_before_anything_was_written(storage):
    assert read_audit(storage) == []


def test_batch_size_and_interval_trigger_flushes(storage):
    clock = FakeClock()
    writer = AuditWriter(storage, batch_size=3, flush_interval_s=10, redactor=redact, clock=clock)
    assert writer.write([record("a"), record("b")]) == 2
    assert writer.maybe_flush() == 0
    assert writer.write([record("c")]) == 0
    assert len(audit_files(storage)) == 1

    writer.write([record("d")])
    clock.now += 10
    assert writer.maybe_flush() == 1
    writer.write([record("e")])
    clock.now += 10
    assert writer.write([record("f")]) == 0
    assert writer.close() == 0
    assert len(read_audit(storage)) == 6


def test_failed_write_keeps_records_until_a_later_flush(storage, writer, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk on fire")

    writer.write([record("a", DAY1), record("b", DAY2)])
    monkeypatch.setattr(storage.fs, "pipe_file", broken)
    with pytest.raises(OSError, match="disk on fire"):
        writer.flush()
    assert writer.buffered == 2
    assert read_audit(storage) == []

    monkeypatch.undo()
    assert writer.flush() == 2
    assert writer.buffered == 0
    assert [row["request_id"] for row in read_audit(storage)] == ["a", "b"]


def test_automatic_flush_failure_does_not_fail_write(storage, monkeypatch):
    writer = AuditWriter(storage, batch_size=1, redactor=redact)
    monkeypatch.setattr(storage.fs, "pipe_file", lambda *args, **kwargs: (_ for _ in ()).throw(OSError("full")))
    assert writer.write([record("a")]) == 1
    monkeypatch.undo()
    assert writer.write([record("b")]) == 0
    assert [row["request_id"] for row in read_audit(storage)] == ["a", "b"]


def test_two_writers_share_a_partition(storage):
    clock = FakeClock()
    first, second = (AuditWriter(storage, redactor=redact, clock=clock) for _ in range(2))
    first.write([record("from-first", DAY1)])
    second.write([record("from-second", DAY1 + timedelta(seconds=1))])
    first.flush()
    second.flush()  # same clock, same second: only the uuid tells the names apart

    files = audit_files(storage)
    assert len(files) == 2 and len({path.rsplit("/", 2)[-2] for path in files}) == 1
    assert [row["request_id"] for row in read_audit(storage)] == ["from-first", "from-second"]


def test_hidden_temp_files_are_ignored_by_readers(storage, writer):
    writer.write([record("a")])
    writer.flush()
    partition = audit_files(storage)[0].rsplit("/", 1)[0]
    storage.fs.pipe_file(f"{partition}/.part-half-written.parquet.tmp", b"PAR1 truncated")
    assert [row["request_id"] for row in read_audit(storage)] == ["a"]


def test_an_object_store_gets_whole_files_without_a_rename(s3_uri):
    """On S3 a PUT is atomic, so no hidden temp file is written and renamed."""
    storage = Storage(s3_uri)
    assert not storage.is_local
    writer = AuditWriter(storage, redactor=redact)
    writer.write([record("a", DAY1), record("b", DAY2)])
    assert writer.flush() == 2
    assert [row["request_id"] for row in read_audit(storage, since=DAY2)] == ["b"]
    assert len(audit_files(storage)) == 2 and not any("/." in path for path in audit_files(storage))


class BatchRedactor:
    """Test double of a redactor with ``many``: hides digits and keeps each batch it got."""

    def __init__(self):
        self.batches: list[list[str]] = []

    def __call__(self, text: str) -> str:
        raise AssertionError("a redactor with many() must get the whole batch at once")

    def many(self, texts: list[str]) -> list[str]:
        self.batches.append(list(texts))
        return [redact(text) for text in texts]


def test_a_batch_redactor_gets_every_string_of_a_write_in_one_call(storage):
    redactor = BatchRedactor()
    writer = AuditWriter(storage, batch_size=1_000, flush_interval_s=3_600, redactor=redactor, clock=FakeClock())
    writer.write([
        record("r-1", text="call 555-0100", output={"label": "POSITIVE", "echo": ["room 12"]}, metadata={"ref": "A-7"}),
        record("r-2", text="call 555-0100", output={"label": "POSITIVE"}, trace=[{"step": "n 3"}]),
    ])
    writer.flush()
    assert redactor.batches == [["call 555-0100", "POSITIVE", "room 12", "A-7", "n 3"]]
    rows = {row["request_id"]: row for row in read_audit(storage)}
    assert rows["r-1"]["input_text"] == rows["r-2"]["input_text"] == "call ###-####"
    assert json.loads(rows["r-1"]["output"]) == {"label": "POSITIVE", "echo": ["room ##"]}
    assert json.loads(rows["r-1"]["metadata"]) == {"ref": "A-#"}
    assert json.loads(rows["r-2"]["trace"]) == [{"step": "n #"}]


def test_a_bad_record_leaves_the_batch_unredacted_and_unbuffered(storage):
    redactor = BatchRedactor()
    writer = AuditWriter(storage, batch_size=1_000, flush_interval_s=3_600, redactor=redactor, clock=FakeClock())
    with pytest.raises(ValueError, match="text"):
        writer.write([record("r-1", text="fine"), record("r-2", text=42)])
    assert redactor.batches == [] and writer.buffered == 0


def test_files_of_several_writers_merge_on_read(storage):
    """Audit writers sharded over nodes write files of their own into the same day partitions."""
    clocks = [FakeClock(), FakeClock()]
    writers = [AuditWriter(storage, batch_size=1_000, flush_interval_s=3_600, redactor=redact, clock=clock) for clock in clocks]
    for index in range(6):
        writers[index % 2].write([record(f"r-{index}", ts=DAY1 + timedelta(seconds=index), text=f"call {index}")])
    for writer in writers:
        writer.flush()
    assert len(audit_files(storage)) == 2
    rows = read_audit(storage, limit=4)
    assert [row["request_id"] for row in rows] == ["r-2", "r-3", "r-4", "r-5"]
    assert [row["input_text"] for row in rows] == ["call #"] * 4


def deduping_writer(storage: Storage, clock: FakeClock) -> AuditWriter:
    return AuditWriter(storage, batch_size=1_000, flush_interval_s=3_600, redactor=redact, dedupe_window_s=600, clock=clock)


def test_a_resent_record_is_written_once_and_a_reused_request_id_twice(storage):
    clock = FakeClock()
    writer = deduping_writer(storage, clock)
    assert len(writer.accept([record("a"), record("b")], "batch-1")) == 2
    assert writer.status(["batch-1", "batch-2"]) == {"batch-1": "pending", "batch-2": "unknown"}
    writer.flush()
    # The same batch again (its ack was lost), plus a new request that reuses the id "a".
    fresh = writer.accept([record("a"), record("b"), record("a", DAY1 + timedelta(seconds=5))], "batch-1-again")
    assert [(r["request_id"], r["ts"]) for r in fresh] == [("a", DAY1 + timedelta(seconds=5))]
    writer.flush()
    assert writer.status(["batch-1", "batch-1-again"]) == {"batch-1": "durable", "batch-1-again": "durable"}
    rows = read_audit(storage)
    assert sorted((row["request_id"], row["ts"]) for row in rows) == [
        ("a", DAY1.isoformat()), ("a", (DAY1 + timedelta(seconds=5)).isoformat()), ("b", DAY1.isoformat())
    ]


def test_a_restarted_writer_reads_back_the_keys_written_within_its_window(storage):
    clock = FakeClock()
    first = deduping_writer(storage, clock)
    first.accept([record("a", ts=1_709_337_540.123456), record("b")], "batch-1")
    first.flush()
    clock.now += 30
    # The writer died after the write and before the reporter heard of it: the batch comes again.
    second = deduping_writer(storage, clock)
    assert second.status(["batch-1"]) == {"batch-1": "unknown"}
    assert second.accept([record("a", ts=1_709_337_540.123456), record("b"), record("c")], "batch-1") == [
        {**record("c"), "ts": DAY1}
    ]
    second.flush()
    assert sorted(row["request_id"] for row in read_audit(storage)) == ["a", "b", "c"]

    clock.now += 601  # past the window, a third writer reads nothing back
    assert len(deduping_writer(storage, clock).accept([record("a", ts=1_709_337_540.123456)])) == 1


def test_a_failed_flush_keeps_its_batches_pending(storage, monkeypatch):
    writer = deduping_writer(storage, FakeClock())
    writer.accept([record("a", DAY1), record("b", DAY2)], "batch-1")
    real_pipe = storage.fs.pipe_file
    calls = []

    def second_day_fails(path, data, **kwargs):
        calls.append(path)
        if "2024-03-02" in path and len(calls) < 3:
            raise OSError("disk on fire")
        return real_pipe(path, data, **kwargs)

    monkeypatch.setattr(storage.fs, "pipe_file", second_day_fails)
    with pytest.raises(OSError):
        writer.flush()
    assert writer.status(["batch-1"]) == {"batch-1": "pending"} and writer.buffered == 1
    writer.flush()
    assert writer.status(["batch-1"]) == {"batch-1": "durable"}
    # The day written before the failure is not written again.
    assert sorted(row["request_id"] for row in read_audit(storage)) == ["a", "b"]


def test_a_batch_of_records_already_taken_is_reported_durable_at_the_next_timed_flush(storage):
    clock = FakeClock()
    writer = AuditWriter(storage, batch_size=1_000, flush_interval_s=1, redactor=redact, dedupe_window_s=600, clock=clock)
    writer.accept([record("a")], "first")
    clock.now += 1
    assert writer.maybe_flush() == 1
    assert writer.accept([record("a")], "resent") == []  # its records were all written already
    clock.now += 1
    assert writer.maybe_flush() == 0 and writer.status(["resent"]) == {"resent": "durable"}
