"""The monitor's durable state on storage: each batch of outcomes a Parquet segment under
``<storage>/monitor/outcomes/``, compacted and expired, beside a JSON checkpoint of its counters.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from actors.audit import _put_atomic
from cluster.storage import Storage

logger = logging.getLogger(__name__)

MONITOR_DIR = "monitor"
SEGMENT_DIR = "outcomes"
CHECKPOINT_NAME = "checkpoint.json"
# A segment holds the batches first..last; a compaction's output names the range it replaces.
SEGMENT_NAME = re.compile(r"^seg-(\d{12})-(\d{12})\.parquet$")
UNREADABLE_SUFFIX = ".unreadable"
SHARD_PREFIX = "shard-"


def shard_dir(shard: int) -> tuple[str, ...]:
    """Where a monitor shard keeps its log; the first keeps the place a single monitor always had."""
    return (MONITOR_DIR,) if shard == 0 else (MONITOR_DIR, f"{SHARD_PREFIX}{shard}")


def stored_shards(storage: Storage) -> int:
    """How many monitor shards have kept a log on ``storage`` (at least 1)."""
    root = storage.path(MONITOR_DIR)
    names = [posixpath.basename(p.rstrip("/")) for p in storage.fs.ls(root, detail=False)] if storage.fs.exists(root) else []
    found = [int(n[len(SHARD_PREFIX):]) for n in names if n.startswith(SHARD_PREFIX) and n[len(SHARD_PREFIX):].isdigit()]
    return max(found, default=0) + 1


OUTCOME_SCHEMA = pa.schema(
    [
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("batch_id", pa.string()),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("ts", pa.float64(), nullable=False),
        pa.field("agent", pa.string(), nullable=False),
        pa.field("version", pa.string(), nullable=False),
        pa.field("status", pa.int32()),
        pa.field("latency_ms", pa.float64()),
        pa.field("routed_by", pa.string()),
        pa.field("label", pa.string()),
        pa.field("confidence", pa.float64()),
        pa.field("model", pa.string()),
        pa.field("request_id", pa.string()),
        pa.field("cpu_s", pa.float64()),
        pa.field("gpu_s", pa.float64()),
        pa.field("input_tokens", pa.int64()),
        pa.field("output_tokens", pa.int64()),
        pa.field("primary_version", pa.string()),
        pa.field("primary_status", pa.int32()),
        pa.field("primary_latency_ms", pa.float64()),
        pa.field("agreement", pa.float64()),
        pa.field("correct", pa.bool_()),
        pa.field("reward", pa.float64()),
    ]
)
# Read from each outcome by attribute name; seq and batch_id belong to the log.
OUTCOME_COLUMNS = tuple(OUTCOME_SCHEMA.names[2:])
_GETTERS = {name: attrgetter(name) for name in OUTCOME_COLUMNS}


@dataclass(frozen=True)
class Segment:
    """One file of the log: the batches it holds, its rows and the time its outcomes span."""

    path: str
    first_seq: int
    last_seq: int
    rows: int
    min_ts: float
    max_ts: float


class Recovered(NamedTuple):
    checkpoint: dict | None  # the last state given to write_checkpoint, None if there is none
    table: pa.Table  # every logged outcome once, in the order it was appended
    unreadable: list[str]  # segments that could not be read, renamed with UNREADABLE_SUFFIX


class OutcomeLog:
    """Append-only batches numbered by a sequence the caller keeps, one file per batch.

    A file appears whole or not at all (temp name + rename locally, one PUT on object
    stores). ``compact`` merges runs of small segments into one of at most ``compact_rows``
    rows spanning at most ``compact_span_s`` of outcome time (so expiry stays fine-grained),
    writing the merged file before removing its inputs: a crash in between leaves inputs
    that ``recover`` finds covered by the merged range and removes. Call ``recover`` first.
    A sharded monitor keeps one log per shard, each in its own directory (``shard_dir``).
    """

    def __init__(self, storage: Storage, *, compact_rows: int = 20_000, compact_span_s: float = 360.0, shard: int = 0):
        if compact_rows < 1 or compact_span_s <= 0 or shard < 0:
            raise ValueError(f"need compact_rows >= 1, compact_span_s > 0, shard >= 0; got {compact_rows}, {compact_span_s}, {shard}")
        self._storage = storage
        home = shard_dir(shard)
        self._dir = storage.path(*home, SEGMENT_DIR)
        self._checkpoint_path = storage.path(*home, CHECKPOINT_NAME)
        self.compact_rows = compact_rows
        self.compact_span_s = compact_span_s
        self._segments: list[Segment] = []
        # What recover read, so the compaction that follows need not fetch it again.
        self._read_cache: dict[str, pa.Table] = {}

    @property
    def segments(self) -> list[Segment]:
        """The live segments, oldest batch first."""
        return list(self._segments)

    def recover(self) -> Recovered:
        """Read the checkpoint and every segment once, and index the segments for ``append``,
        ``compact`` and ``expire``."""
        checkpoint = self._storage.read_json(self._checkpoint_path) if self._storage.exists(self._checkpoint_path) else None
        wanted, covered = [], 0
        for path, first_seq, last_seq in self._listed():
            if last_seq <= covered:
                self._storage.fs.rm(path)
            else:
                wanted.append((path, first_seq, last_seq))
                covered = last_seq
        # One call for all files: object stores fetch them concurrently.
        contents = self._storage.fs.cat([path for path, _, _ in wanted], on_error="return") if wanted else {}
        tables, unreadable = [], []
        self._segments = []
        for path, first_seq, last_seq in wanted:
            try:
                table = _parse(contents[path])
            except (OSError, pa.ArrowException):
                logger.warning("monitor segment %s is unreadable; setting it aside", path, exc_info=True)
                self._storage.fs.mv(path, path + UNREADABLE_SUFFIX)
                unreadable.append(path)
                continue
            tables.append(table)
            self._segments.append(_segment(path, first_seq, last_seq, table))
            self._read_cache[path] = table
        table = pa.concat_tables(tables) if tables else OUTCOME_SCHEMA.empty_table()
        return Recovered(checkpoint, table, unreadable)

    def append(self, seq: int, batch_id: str | None, outcomes: Sequence[Any]) -> None:
        """Write one batch; ``outcomes`` have an attribute per name in OUTCOME_COLUMNS."""
        columns = {name: list(map(_GETTERS[name], outcomes)) for name in OUTCOME_COLUMNS}
        rows = len(outcomes)
        table = pa.Table.from_pydict({"seq": [seq] * rows, "batch_id": [batch_id] * rows, **columns}, OUTCOME_SCHEMA)
        self._segments.append(self._write(seq, seq, table))

    def compact(self) -> int:
        """Merge every run of small neighbouring segments; returns how many files went away."""
        removed = 0
        for run in self._mergeable_runs():
            merged = self._write(run[0].first_seq, run[-1].last_seq, pa.concat_tables(self._read(s.path) for s in run))
            for segment in run:
                self._storage.fs.rm(segment.path)
            at = self._segments.index(run[0])
            self._segments[at : at + len(run)] = [merged]
            removed += len(run) - 1
        self._read_cache.clear()
        return removed

    def expire(self, before_ts: float, through_seq: int) -> int:
        """Remove segments whose every outcome is older than ``before_ts`` and whose batches
        are all at or below ``through_seq`` (already in a checkpoint); returns how many."""
        expired = [s for s in self._segments if s.max_ts < before_ts and s.last_seq <= through_seq]
        for segment in expired:
            self._storage.fs.rm(segment.path)
            self._segments.remove(segment)
        return len(expired)

    def write_checkpoint(self, state: dict) -> None:
        self._storage.write_json_atomic(self._checkpoint_path, state)

    def _mergeable_runs(self) -> list[list[Segment]]:
        runs, run = [], []
        for segment in self._segments:
            if not self._fits([*run, segment]):
                runs.append(run)
                run = []
            run.append(segment)
        runs.append(run)
        return [run for run in runs if len(run) > 1]

    def _fits(self, run: list[Segment]) -> bool:
        rows = sum(s.rows for s in run)
        span = max(s.max_ts for s in run) - min(s.min_ts for s in run)
        return rows <= self.compact_rows and span <= self.compact_span_s

    def _listed(self) -> list[tuple[str, int, int]]:
        """Segment files by first batch, the widest range first among those starting together."""
        if not self._storage.fs.exists(self._dir):
            return []
        found = []
        for path in self._storage.fs.ls(self._dir, detail=False):
            name = posixpath.basename(path)
            if name.startswith(".") and name.endswith(".tmp"):  # a local write that died before its rename
                self._storage.fs.rm(path)
            elif match := SEGMENT_NAME.match(name):
                found.append((posixpath.join(self._dir, name), int(match[1]), int(match[2])))
        return sorted(found, key=lambda entry: (entry[1], -entry[2]))

    def _read(self, path: str) -> pa.Table:
        cached = self._read_cache.pop(path, None)
        return _parse(self._storage.fs.cat_file(path)) if cached is None else cached

    def _write(self, first_seq: int, last_seq: int, table: pa.Table) -> Segment:
        path = posixpath.join(self._dir, f"seg-{first_seq:012d}-{last_seq:012d}.parquet")
        sink = pa.BufferOutputStream()
        # Segments are only ever read whole, so column statistics (a third of the write) buy nothing.
        pq.write_table(table, sink, write_statistics=False)
        _put_atomic(self._storage, path, sink.getvalue().to_pybytes())
        return _segment(path, first_seq, last_seq, table)


def _parse(content: bytes | Exception) -> pa.Table:
    if isinstance(content, Exception):
        raise content
    return pq.read_table(pa.BufferReader(content), schema=OUTCOME_SCHEMA)


def _segment(path: str, first_seq: int, last_seq: int, table: pa.Table) -> Segment:
    bounds = pc.min_max(table["ts"]).as_py()
    return Segment(path, first_seq, last_seq, table.num_rows, bounds["min"], bounds["max"])
