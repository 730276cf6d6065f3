"""The audit record of API.md §7: one row per request or operator action, buffered and
written as Parquet under ``<storage>/audit/day=YYYY-MM-DD/``, read back with pyarrow.dataset.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import json
import logging
import operator
import posixpath
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from cluster.storage import Storage

logger = logging.getLogger(__name__)

AUDIT_DIR = "audit"
TS_TYPE = pa.timestamp("us", tz="UTC")
AUDIT_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("principal", pa.string()),
        pa.field("endpoint", pa.string(), nullable=False),
        pa.field("agent", pa.string()),
        pa.field("version", pa.string()),
        pa.field("routed_by", pa.string()),
        pa.field("confidence", pa.float64()),
        pa.field("status_code", pa.int32()),
        pa.field("latency_ms", pa.float64()),
        pa.field("input_sha256", pa.string()),
        pa.field("input_chars", pa.int32()),
        pa.field("input_text", pa.string()),
        pa.field("output", pa.string()),
        pa.field("error", pa.string()),
        # Additions to API.md §7: the request's metadata and a composite's steps (JSON text).
        pa.field("metadata", pa.string()),
        pa.field("trace", pa.string()),
    ]
)
REQUIRED_KEYS = frozenset({"request_id", "endpoint"})
# Callers hand over the raw text; the input_* columns are derived from it so that
# unredacted text can never reach the input_text column directly.
# A document request gives its bytes' hash as input_sha256; a text request gives the text.
ACCEPTED_KEYS = frozenset(AUDIT_SCHEMA.names) - {"input_chars", "input_text"} | {"text"}


def to_utc(value: float | int | str | datetime) -> datetime:
    """An aware UTC datetime from epoch seconds, an ISO 8601 string or a datetime (naive = UTC)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, timezone.utc)
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if not isinstance(moment, datetime):
        raise ValueError(f"expected epoch seconds, ISO 8601 or datetime, got {value!r}")
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _status_code(value: Any) -> int | None:
    # Arrow would silently truncate 200.5 to 200, so only true integers pass.
    try:
        return None if value is None else operator.index(value)
    except TypeError as exc:
        raise ValueError(f"audit field 'status_code' must be an integer, got {value!r}") from exc


def _output_text(output: Any) -> str | None:
    if output is None or isinstance(output, str):
        return output
    return json.dumps(output, sort_keys=True)


def _collect_strings(value: Any, into: list[str]) -> None:
    """Outputs quote their input (entity texts, echoes), so every string in them is redacted too."""
    if isinstance(value, str):
        into.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _collect_strings(item, into)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_strings(item, into)


def _replace_strings(value: Any, redacted: dict[str, str]) -> Any:
    """``value`` with each string swapped for its redaction; unchanged without a redactor."""
    if not redacted or value is None:
        return value
    if isinstance(value, str):
        return redacted[value]
    if isinstance(value, dict):
        return {key: _replace_strings(item, redacted) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_replace_strings(item, redacted) for item in value]
    return value


RecordKey = tuple[str, str, datetime]
STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"


def record_key(record: dict[str, Any]) -> RecordKey:
    """What makes two audit records the same one: a resent record repeats all three, while a
    caller reusing an X-Request-ID for a new request gets a new ``ts``."""
    return (record["request_id"], record["endpoint"], record["ts"])


def _input_fields(text: str | None, document_sha256: str | None, redacted: dict[str, str] | None) -> dict[str, Any]:
    """The input_* columns; the text itself only redacted, and only given ``redacted``."""
    if text is None:
        return {"input_sha256": document_sha256, "input_chars": None, "input_text": None}
    return {
        "input_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "input_chars": len(text),
        "input_text": None if redacted is None else redacted[text],
    }


def _to_table(rows: list[dict[str, Any]]) -> pa.Table:
    columns = []
    for column in AUDIT_SCHEMA:
        try:
            columns.append(pa.array([row[column.name] for row in rows], type=column.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ValueError(f"audit field {column.name!r}: {exc}") from exc
    return pa.Table.from_arrays(columns, schema=AUDIT_SCHEMA)


def _put_atomic(storage: Storage, path: str, data: bytes) -> None:
    """Readers list partitions while writers add files, so a file must appear whole or not at all:
    object-store PUTs are atomic; local files go to a hidden temp name (skipped by
    pyarrow.dataset) and are renamed."""
    if not storage.is_local:
        storage.fs.pipe_file(path, data)
        return
    directory, name = posixpath.split(path)
    storage.fs.makedirs(directory, exist_ok=True)
    tmp = posixpath.join(directory, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    storage.fs.pipe_file(tmp, data)
    storage.fs.mv(tmp, path)


class AuditWriter:
    """Takes audit records in (``accept``) and writes them, redacted, as one Parquet file per
    UTC day on each flush.

    A record is known by its ``(request_id, endpoint, ts)``: one seen within ``dedupe_window_s``
    is taken once, so a reporter may resend a batch whose fate it does not know. With a window,
    the keys of the files written within it are read back at start, so the dedupe survives a
    restart. Batches given a ``batch_id`` can be asked after (``status``): pending, or durable
    once their file is written.

    ``write`` accepts and flushes by itself when ``batch_size`` records wait or
    ``flush_interval_s`` has passed; if that flush fails the records stay buffered and ``write``
    does not raise, since the caller's records were accepted. ``flush``, ``maybe_flush`` and
    ``close`` re-raise write errors, keeping what was not written buffered.
    A redactor with a ``many`` method gets every string of a flush in one call.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 1.0,
        store_input_text: bool = True,
        redactor: Callable[[str], str] | None = None,
        dedupe_window_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ):
        if store_input_text and redactor is None:
            raise ValueError("store_input_text=True needs a redactor: unredacted input must never be written")
        if batch_size < 1 or flush_interval_s < 0 or dedupe_window_s < 0:
            raise ValueError(
                f"batch_size must be >= 1, flush_interval_s and dedupe_window_s >= 0; got {batch_size}, {flush_interval_s}, {dedupe_window_s}"
            )
        self._storage = storage
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.dedupe_window_s = dedupe_window_s
        self._redactor = redactor
        self._store_input_text = store_input_text
        self._clock = clock
        # Callers add records while a timer thread flushes; the flush lock keeps files in order
        # without holding up accept() during redaction and the write.
        self._lock = threading.RLock()
        self._flush_lock = threading.RLock()
        self._pending: list[dict[str, Any]] = []
        self._pending_batches: list[str] = []
        self._in_flight: list[str] = []
        self._durable: dict[str, float] = {}
        self._seen: dict[RecordKey, float] = {}
        self._last_flush = clock()
        if dedupe_window_s:
            self._seen.update(dict.fromkeys(recent_keys(storage, clock() - dedupe_window_s), clock()))

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def accept(self, records: list[dict[str, Any]], batch_id: str | None = None) -> list[dict[str, Any]]:
        """Validate the records and keep the new ones for the next flush; returns those, with
        ``ts`` as a UTC datetime. One invalid record refuses the whole batch."""
        stamped = [self._stamped(record) for record in records]
        _to_table([self._row(record, {}, validate_only=True) for record in stamped])
        now = self._clock()
        with self._lock:
            self._forget_before(now - self.dedupe_window_s)
            fresh = []
            for record in stamped:
                key = record_key(record)
                if key not in self._seen:
                    self._seen[key] = now
                    fresh.append(record)
            self._pending.extend(fresh)
            if batch_id is not None:
                self._pending_batches.append(batch_id)
        return fresh

    def status(self, batch_ids: list[str]) -> dict[str, str]:
        """Each batch's fate: ``durable`` (written), ``pending`` (accepted, not yet written) or
        ``unknown`` (never accepted here, or accepted before a restart and lost)."""
        with self._lock:
            pending = set(self._pending_batches) | set(self._in_flight)
            return {
                batch_id: "durable" if batch_id in self._durable else "pending" if batch_id in pending else "unknown"
                for batch_id in batch_ids
            }

    def write(self, records: list[dict[str, Any]]) -> int:
        """Accept the records and flush if the batch is full or due; returns what stays buffered."""
        self.accept(records)
        if self.buffered >= self.batch_size or self._interval_elapsed():
            self._flush_keeping_errors()
        return self.buffered

    def flush(self) -> int:
        with self._flush_lock:
            with self._lock:
                self._last_flush = self._clock()
                records, self._pending = self._pending, []
                self._in_flight, self._pending_batches = self._pending_batches, []
            try:
                written = self._write_records(records)
            except BaseException:
                with self._lock:
                    self._pending[:0] = records
                    self._pending_batches[:0] = self._in_flight
                    self._in_flight = []
                raise
            with self._lock:
                now = self._clock()
                self._durable.update(dict.fromkeys(self._in_flight, now))
                self._in_flight = []
            return written

    def maybe_flush(self) -> int:
        # A batch of records already taken waits for no file, but its reporter waits to hear it is durable.
        waiting = self.buffered or self._pending_batches
        return self.flush() if waiting and self._interval_elapsed() else 0

    def close(self) -> int:
        return self.flush()

    def _write_records(self, records: list[dict[str, Any]]) -> int:
        if not records:
            return 0
        redacted = self._redact_batch(records)
        tables = self._tables_by_day([self._row(record, redacted) for record in records])
        for day in sorted(tables):
            self._write_file(day, tables[day])
            # A day written stays written if a later day's file fails: its records leave the retry.
            records[:] = [record for record in records if record["ts"].date().isoformat() != day]
        return sum(table.num_rows for table in tables.values())

    def _forget_before(self, horizon: float) -> None:
        for remembered in (self._seen, self._durable):
            while remembered and next(iter(remembered.values())) < horizon:
                del remembered[next(iter(remembered))]

    def _interval_elapsed(self) -> bool:
        return self._clock() - self._last_flush >= self.flush_interval_s

    def _flush_keeping_errors(self) -> None:
        try:
            self.flush()
        except Exception:
            logger.warning("audit flush failed; %d records stay buffered for the next flush", self.buffered, exc_info=True)

    def _stamped(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record checked, with its ``ts`` as a UTC datetime (now if it has none), which
        makes it the same record when a reporter resends it."""
        unknown = set(record) - ACCEPTED_KEYS
        if unknown:
            raise ValueError(f"unknown audit field(s) {sorted(unknown)}; accepted: {sorted(ACCEPTED_KEYS)}")
        missing = sorted(key for key in REQUIRED_KEYS if record.get(key) is None)
        if missing:
            raise ValueError(f"audit record lacks required field(s) {missing}")
        text = record.get("text")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"audit field 'text' must be a string, got {type(text).__name__}")
        ts = record.get("ts")
        return {**record, "ts": to_utc(self._clock() if ts is None else ts)}

    def _redact_batch(self, records: list[dict[str, Any]]) -> dict[str, str]:
        """Every string of the batch that gets written, redacted in one call: NER runs over
        the batch at once where the redactor can (``many``)."""
        if self._redactor is None:
            return {}
        strings: list[str] = []
        for record in records:
            if self._store_input_text and record.get("text") is not None:
                strings.append(record["text"])
            for name in ("output", "metadata", "trace"):
                _collect_strings(record.get(name), strings)
        unique = list(dict.fromkeys(strings))
        many = getattr(self._redactor, "many", None)
        return dict(zip(unique, many(unique) if many is not None else map(self._redactor, unique)))

    def _row(self, record: dict[str, Any], redacted: dict[str, str], validate_only: bool = False) -> dict[str, Any]:
        """The record as a row of AUDIT_SCHEMA; ``validate_only`` leaves strings unredacted and
        the input text out, for checking types before anything is kept."""
        row = {name: record.get(name) for name in AUDIT_SCHEMA.names}
        row["status_code"] = _status_code(row["status_code"])
        for name in ("output", "metadata", "trace"):
            row[name] = _output_text(_replace_strings(record.get(name), redacted))
        store_text = self._store_input_text and not validate_only
        row.update(_input_fields(record.get("text"), record.get("input_sha256"), redacted if store_text else None))
        return row

    @staticmethod
    def _tables_by_day(rows: list[dict[str, Any]]) -> dict[str, pa.Table]:
        by_day: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_day[row["ts"].date().isoformat()].append(row)
        return {day: _to_table(day_rows) for day, day_rows in by_day.items()}

    def _write_file(self, day: str, table: pa.Table) -> None:
        stamp = datetime.fromtimestamp(self._clock(), timezone.utc).strftime(STAMP_FORMAT)
        # The uuid keeps files of concurrent writers (several replicas, one partition) apart.
        name = f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        _put_atomic(self._storage, self._storage.path(AUDIT_DIR, f"day={day}", name), sink.getvalue().to_pybytes())


OPERATOR_OUTPUT_KEYS = frozenset({"before", "after"})


def operator_record(
    principal: str,
    action: str,
    *,
    before: Any = None,
    after: Any = None,
    status: int = 200,
    agent: str | None = None,
    version: str | None = None,
    error: str | None = None,
    request_id: str | None = None,
    extra: dict[str, Any] | None = None,
    ts: float | str | datetime | None = None,
) -> dict[str, Any]:
    """The audit row (AuditWriter's input) of one operator action, whoever makes it: the HTTP
    API, the CLI or a controller. ``action`` names it (``admin.models.promote``, ``rollout.step``);
    ``output`` holds ``before`` and ``after`` plus ``extra``; a refused action gives its
    ``status`` and ``error``. ``ts`` defaults to now, the moment of the action, not of the write.
    """
    if not principal or not action:
        raise ValueError(f"an operator action needs a principal and an action, got {principal!r}, {action!r}")
    clash = OPERATOR_OUTPUT_KEYS & set(extra or {})
    if clash:
        raise ValueError(f"extra may not set {sorted(clash)}: pass them as before=/after=")
    return {
        "request_id": request_id or uuid.uuid4().hex,
        "ts": time.time() if ts is None else ts,
        "principal": principal,
        "endpoint": action,
        "agent": agent,
        "version": version,
        "status_code": _status_code(status),
        "output": {"before": before, "after": after, **(extra or {})},
        "error": error,
    }


def write_now(storage: Storage, records: list[dict[str, Any]]) -> None:
    """Write operator records straight to storage, durably before returning: for writers that
    have no reporter to keep them until an audit actor has written them (the CLI, the rollout
    controller, the drift forwarder). They hold no request text, so no redactor is needed."""
    writer = AuditWriter(storage, store_input_text=False)
    writer.accept(records)
    writer.close()


def write_operator_action(storage: Storage, principal: str, action: str, **fields: Any) -> dict[str, Any]:
    """Write one operator action's record durably (``write_now``). Takes operator_record's arguments."""
    record = operator_record(principal, action, **fields)
    write_now(storage, [record])
    return record


def cli_principal() -> str:
    """Who makes a CLI action: ``cli:<login name>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container with an unnamed uid)
        user = "unknown"
    return f"cli:{user}"


def _days_newest_first(storage: Storage, root: str, since: datetime | None, until: datetime | None) -> list[str]:
    names = (posixpath.basename(path.rstrip("/")) for path in storage.fs.ls(root, detail=False))
    days = sorted((name.removeprefix("day=") for name in names if name.startswith("day=")), reverse=True)
    low = since.date().isoformat() if since else ""
    high = until.date().isoformat() if until else "9999-12-31"
    return [day for day in days if low <= day <= high]


def recent_keys(storage: Storage, since: float) -> list[RecordKey]:
    """The keys of the records in the audit files written at or after ``since`` (epoch seconds),
    found by the stamp in each file's name; records are filed by their own day, so the
    partitions from the day before ``since`` on are looked at."""
    root = storage.path(AUDIT_DIR)
    if not storage.fs.exists(root):
        return []
    moment = datetime.fromtimestamp(since, timezone.utc)
    floor = f"part-{moment.strftime(STAMP_FORMAT)}"
    files = [
        path
        for day in _days_newest_first(storage, root, moment - timedelta(days=1), None)
        for path in storage.fs.ls(posixpath.join(root, f"day={day}"), detail=False)
        if posixpath.basename(path) >= floor and path.endswith(".parquet")
    ]
    if not files:
        return []
    table = ds.dataset(files, format="parquet", filesystem=storage.fs, schema=AUDIT_SCHEMA).to_table(
        columns=["request_id", "endpoint", "ts"]
    )
    return list(zip(*(table[name].to_pylist() for name in ("request_id", "endpoint", "ts"))))


def _row_filter(
    since: datetime | None, until: datetime | None, agent: str | None, endpoint: str | None, request_ids: list[str] | None
) -> ds.Expression | None:
    conditions = []
    if since is not None:
        conditions.append(ds.field("ts") >= pa.scalar(since, TS_TYPE))
    if until is not None:
        conditions.append(ds.field("ts") < pa.scalar(until, TS_TYPE))
    if agent is not None:
        conditions.append(ds.field("agent") == agent)
    if endpoint is not None:
        conditions.append(ds.field("endpoint") == endpoint)
    if request_ids is not None:
        conditions.append(ds.field("request_id").isin(request_ids))
    return functools.reduce(operator.and_, conditions) if conditions else None


def read_audit(
    storage: Storage,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    agent: str | None = None,
    endpoint: str | None = None,
    request_ids: list[str] | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The ``limit`` most recent records with ``since <= ts < until`` that match every filter,
    oldest first, ``ts`` as ISO 8601.

    Day partitions are read newest first and reading stops once ``limit`` records are found,
    so only the partitions inside [since, until] are ever listed (each is a hive-style
    ``day=`` directory, readable as one dataset by any hive-aware tool).
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    since = to_utc(since) if since is not None else None
    until = to_utc(until) if until is not None else None
    root = storage.path(AUDIT_DIR)
    if not storage.fs.exists(root):
        return []
    row_filter = _row_filter(since, until, agent, endpoint, request_ids)
    tables, found = [], 0
    for day in _days_newest_first(storage, root, since, until):
        partition = ds.dataset(
            posixpath.join(root, f"day={day}"), format="parquet", filesystem=storage.fs, schema=AUDIT_SCHEMA
        )
        tables.append(partition.to_table(filter=row_filter))
        found += tables[-1].num_rows
        if found >= limit:
            break
    if not found:
        return []
    newest = pa.concat_tables(tables).sort_by([("ts", "descending"), ("request_id", "descending")]).slice(0, limit)
    rows = newest.sort_by([("ts", "ascending"), ("request_id", "ascending")]).to_pylist()
    return [{**row, "ts": row["ts"].isoformat()} for row in rows]
