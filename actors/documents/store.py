"""The document record store: one Parquet file per document under ``<storage>/documents/records/``,
named by the document's content hash, searchable by cosine similarity of its text chunks.
"""

from __future__ import annotations

import json
import posixpath
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cluster.errors import NotFound, ValidationFailed
from cluster.storage import Storage

RECORDS_DIR = ("documents", "records")
MAX_K = 100
# Small windows match a remembered phrase best: on SROIE receipts' OCR text, two-line queries
# found their receipt first 25% of the time with 200-character chunks, 17% with 500 and 13%
# with one vector per receipt (MiniLM also cuts a text at 256 tokens). Smaller still was
# better again, but every window is a 384-float row of the in-memory index. The overlap keeps
# a phrase that straddles a window boundary whole in one window.
CHUNK_CHARS = 200
CHUNK_OVERLAP = 40
SNIPPET_CHARS = 200
_ID = re.compile(r"^[0-9a-f]{32}$")
_WORD = re.compile(r"\w+")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RECORD_FILE = re.compile(r"^([0-9a-f]{32})\.parquet$")

RECORD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("filename", pa.string()),
        pa.field("media_type", pa.string()),
        pa.field("pages", pa.int32()),
        pa.field("stored_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("pipeline", pa.string()),
        pa.field("language", pa.string()),
        # JSON text: the extract step's per-page results, the entities and PII entities found.
        pa.field("fields", pa.string()),
        pa.field("entities", pa.string()),
        pa.field("pii_entities", pa.string()),
        pa.field("text", pa.string()),
        pa.field("redacted_text", pa.string()),
        # One embedding per text chunk, and where each chunk lies in ``text``.
        pa.field("vectors", pa.list_(pa.list_(pa.float32()))),
        pa.field("chunk_starts", pa.list_(pa.int32())),
        pa.field("chunk_ends", pa.list_(pa.int32())),
    ]
)
_JSON_COLUMNS = ("fields", "entities", "pii_entities")
_INTERNAL_COLUMNS = ("vectors", "chunk_starts", "chunk_ends")


def record_id(sha256: str) -> str:
    """The id of a document: the first 32 hex digits of its sha256 (content-addressed)."""
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise ValidationFailed(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
    return sha256[:32]


def validate_id(document_id: str) -> str:
    if not isinstance(document_id, str) or not _ID.match(document_id):
        raise ValidationFailed(f"document id must be 32 lowercase hex digits, got {document_id!r}")
    return document_id


def _last_space(text: str, low: int, high: int) -> int:
    return max(text.rfind(" ", low, high), text.rfind("\n", low, high))


def chunk_spans(text: str, max_chars: int) -> list[tuple[int, int]]:
    """(start, end) windows of at most CHUNK_CHARS over the first ``max_chars`` of ``text``,
    overlapping by about CHUNK_OVERLAP; blank windows are left out."""
    limit = min(len(text), max_chars)
    spans: list[tuple[int, int]] = []
    start = 0
    while start < limit:
        end = min(start + CHUNK_CHARS, limit)
        if end < limit:
            # Cut at a space in the window's second half, so a window rarely splits a word.
            cut = _last_space(text, start + CHUNK_CHARS // 2, end)
            end = cut if cut >= 0 else end
        if text[start:end].strip():
            spans.append((start, end))
        if end >= limit:
            break
        back = _last_space(text, end - CHUNK_OVERLAP, end - CHUNK_OVERLAP // 2)
        start = back + 1 if back >= 0 else end - CHUNK_OVERLAP
    return spans


@dataclass
class DocumentRecord:
    """One stored document: its source, text, what the pipeline found, and chunk embeddings."""

    sha256: str
    text: str
    # One embedding row (float32) per (start, end) chunk of ``text`` in ``spans``.
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    spans: list[tuple[int, int]] = field(default_factory=list)
    filename: str | None = None
    media_type: str | None = None
    pages: int | None = None
    pipeline: str | None = None
    language: str | None = None
    fields: Any = None
    entities: Any = None
    pii_entities: Any = None
    redacted_text: str | None = None
    stored_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        record_id(self.sha256)

    @property
    def id(self) -> str:
        return record_id(self.sha256)

    def to_table(self) -> pa.Table:
        if len(self.vectors) != len(self.spans):
            raise ValueError(f"{len(self.vectors)} vectors for {len(self.spans)} chunks")
        row = {
            "id": self.id,
            "sha256": self.sha256,
            "filename": self.filename,
            "media_type": self.media_type,
            "pages": self.pages,
            "stored_at": self.stored_at,
            "pipeline": self.pipeline,
            "language": self.language,
            "text": self.text,
            "redacted_text": self.redacted_text,
            "vectors": np.asarray(self.vectors, dtype=np.float32).tolist(),
            "chunk_starts": [start for start, _ in self.spans],
            "chunk_ends": [end for _, end in self.spans],
            **{name: None if getattr(self, name) is None else json.dumps(getattr(self, name), ensure_ascii=False) for name in _JSON_COLUMNS},
        }
        return pa.Table.from_pylist([row], schema=RECORD_SCHEMA)


@dataclass
class _Entry:
    """What the search index keeps of one record."""

    signature: tuple
    filename: str | None
    vectors: np.ndarray
    snippets: list[str]
    words: list[frozenset[str]]


def words_of(text: str) -> frozenset[str]:
    """The case-folded words of a text, for matching a query's words."""
    return frozenset(_WORD.findall(text.casefold()))


def _snippet(text: str) -> str:
    return " ".join(text.split())[:SNIPPET_CHARS]


def _signature(info: dict) -> tuple:
    # Local files carry mtime and inode (a rename gives a new one), S3 objects an ETag.
    return info.get("size"), info.get("mtime") or info.get("LastModified"), info.get("ino"), info.get("ETag")


class DocumentStore:
    """Document records as Parquet on a Storage, with an in-memory chunk index for search that
    re-reads only the record files that appeared or changed since the last search."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        # The rows of every indexed chunk, documents in ``_order``, each starting at ``_starts``.
        self._order: list[str] = []
        self._chunk_words: list[frozenset[str]] = []
        self._matrix = np.zeros((0, 0), dtype=np.float32)
        self._starts = np.zeros(0, dtype=np.int64)

    def record_path(self, document_id: str) -> str:
        return self.storage.path(*RECORDS_DIR, f"{validate_id(document_id)}.parquet")

    def record_url(self, document_id: str) -> str:
        return self.storage.url(*RECORDS_DIR, f"{validate_id(document_id)}.parquet")

    def put(self, record: DocumentRecord) -> str:
        """Write ``record`` (replacing any earlier one of the same document); return its id."""
        sink = pa.BufferOutputStream()
        pq.write_table(record.to_table(), sink)
        self._put_atomic(self.record_path(record.id), sink.getvalue().to_pybytes())
        with self._lock:
            # A rewrite may keep size and mtime (coarse clocks): re-read it regardless.
            self._entries.pop(record.id, None)
        return record.id

    def get(self, document_id: str) -> dict[str, Any]:
        """The stored record, JSON columns decoded, ``stored_at`` as ISO 8601, without vectors."""
        path = self.record_path(document_id)
        try:
            data = self.storage.fs.cat_file(path)
        except FileNotFoundError:
            raise NotFound(f"no document with id {document_id!r}") from None
        row = pq.read_table(pa.BufferReader(data)).drop_columns(list(_INTERNAL_COLUMNS)).to_pylist()[0]
        for name in _JSON_COLUMNS:
            row[name] = None if row[name] is None else json.loads(row[name])
        return {**row, "stored_at": row["stored_at"].isoformat()}

    def has(self, sha256: str) -> bool:
        """Whether the document with this sha256 is stored (a batch ingest skips it when resumed)."""
        path = self.record_path(record_id(sha256))
        self.storage.fs.invalidate_cache(path)
        return self.storage.fs.exists(path)

    def search(self, query_vector: Any, k: int = 10, query_text: str | None = None) -> list[dict[str, Any]]:
        """The ``k`` documents most like the query, each scored by its best chunk: the chunk's
        cosine with the query's embedding, averaged with the share of the query's words the
        chunk holds when ``query_text`` is given (MiniLM alone ranks printed names and amounts
        poorly; the words pin an exact phrase to its document)."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ValidationFailed(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        query = np.asarray(query_vector, dtype=np.float32).reshape(-1)
        with self._lock:
            self._refresh()
            if not self._order:
                return []
            if query.shape[0] != self._matrix.shape[1]:
                raise ValidationFailed(f"query vector has {query.shape[0]} dimensions; the index has {self._matrix.shape[1]}")
            scores = self._matrix @ (query / max(float(np.linalg.norm(query)), 1e-12))
            if query_text is not None and (wanted := words_of(query_text)):
                overlap = np.fromiter((len(wanted & chunk) / len(wanted) for chunk in self._chunk_words), np.float32, len(self._chunk_words))
                scores = (scores + overlap) / 2
            return self._best_documents(scores, k)

    def _best_documents(self, scores: np.ndarray, k: int) -> list[dict[str, Any]]:
        # Chunks of one document are contiguous rows, so reduceat gives each document's best.
        best = np.maximum.reduceat(scores, self._starts)
        ends = [*self._starts[1:], len(scores)]
        results = []
        for position in np.argsort(-best, kind="stable")[:k]:
            document_id = self._order[position]
            entry = self._entries[document_id]
            chunk = int(np.argmax(scores[self._starts[position] : ends[position]]))
            results.append(
                {"id": document_id, "score": round(float(best[position]), 4), "filename": entry.filename, "snippet": entry.snippets[chunk]}
            )
        return results

    def _refresh(self) -> None:
        listing = self._list_records()
        changed = [document_id for document_id, info in listing.items() if self._stale(document_id, info)]
        gone = self._entries.keys() - listing.keys()
        for document_id in gone:
            del self._entries[document_id]
        for document_id in changed:
            try:
                self._entries[document_id] = self._load_entry(document_id, _signature(listing[document_id]))
            except FileNotFoundError:  # removed since the listing: gone, as far as this search goes
                self._entries.pop(document_id, None)
        if changed or gone:
            self._rebuild()

    def _stale(self, document_id: str, info: dict) -> bool:
        entry = self._entries.get(document_id)
        return entry is None or entry.signature != _signature(info)

    def _list_records(self) -> dict[str, dict]:
        root = self.storage.path(*RECORDS_DIR)
        # s3fs caches listings; another replica's records must show up.
        self.storage.fs.invalidate_cache(root)
        try:
            infos = self.storage.fs.ls(root, detail=True)
        except FileNotFoundError:
            return {}
        listing = {}
        for info in infos:
            match = _RECORD_FILE.match(posixpath.basename(info["name"].rstrip("/")))
            if match:
                listing[match.group(1)] = info
        return listing

    def _load_entry(self, document_id: str, signature: tuple) -> _Entry:
        data = self.storage.fs.cat_file(self.record_path(document_id))
        columns = ["filename", "text", "vectors", "chunk_starts", "chunk_ends"]
        row = pq.read_table(pa.BufferReader(data), columns=columns).to_pylist()[0]
        vectors = np.asarray(row["vectors"] or [], dtype=np.float32)
        if vectors.size:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        chunks = [row["text"][start:end] for start, end in zip(row["chunk_starts"], row["chunk_ends"])]
        return _Entry(signature, row["filename"], vectors, [_snippet(c) for c in chunks], [words_of(c) for c in chunks])

    def _rebuild(self) -> None:
        # A record without text has no chunks: it can never be found and takes no rows.
        self._order = sorted(document_id for document_id, entry in self._entries.items() if len(entry.vectors))
        blocks = [self._entries[document_id].vectors for document_id in self._order]
        self._matrix = np.concatenate(blocks) if blocks else np.zeros((0, 0), dtype=np.float32)
        self._chunk_words = [words for document_id in self._order for words in self._entries[document_id].words]
        self._starts = np.cumsum([0, *(len(block) for block in blocks[:-1])]) if blocks else np.zeros(0, dtype=np.int64)

    def _put_atomic(self, path: str, data: bytes) -> None:
        """Readers list the folder while writers add records, so a record appears whole or not at
        all: object-store PUTs are atomic; local files go to a hidden temp name and are renamed."""
        if not self.storage.is_local:
            self.storage.fs.pipe_file(path, data)
            return
        directory, name = posixpath.split(path)
        self.storage.fs.makedirs(directory, exist_ok=True)
        tmp = posixpath.join(directory, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        self.storage.fs.pipe_file(tmp, data)
        Path(tmp).replace(path)
