"""Labelled text for fine-tuning: a :class:`DataSpec` names JSONL/CSV/TSV/Parquet files on any
fsspec URI; :func:`load_dataset` reads them with pyarrow, checks them and splits off validation.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import fsspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pa_parquet
from pydantic import Field, model_validator

from cluster.storage import resolve_uri
from cluster.config import Strict
from cluster.errors import ConfigError

__all__ = ["DataError", "DataSpec", "Examples", "PreparedData", "load_dataset", "read_examples"]

Format = Literal["jsonl", "csv", "tsv", "parquet"]
EXTENSIONS: dict[str, Format] = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
_FINGERPRINT_PARAMS = {"text_field", "label_field", "label_map", "validation_fraction", "seed", "max_rows", "split", "hold_out"}
Split = Literal["rows", "whole_sentences"]


class DataError(ConfigError):
    """The data cannot train a model; the message names the file, row or column and the problem."""


class DataSpec(Strict):
    train: str = Field(..., min_length=1, description="URI of the training file: JSONL, CSV, TSV or Parquet, any fsspec URI.")
    validation: str | None = Field(
        None, min_length=1, description="URI of a validation file; without one, validation is split off train."
    )
    text_field: str = Field("text", min_length=1, description="Column holding the input text.")
    label_field: str = Field("label", min_length=1, description="Column holding the label.")
    validation_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of each label split off train for validation when no validation file is given."
    )
    seed: int = Field(0, description="Seed of the max_rows sample and of the train/validation split.")
    format: Format | None = Field(
        None, description="Format of every file; default: from each file's extension (.jsonl/.json, .csv, .tsv, .parquet)."
    )
    label_map: dict[str, str] | None = Field(
        None,
        description="Raw label (compared as a string) -> label name, e.g. {'0': 'NEGATIVE'}; every raw label must be mapped.",
    )
    split: Split = Field(
        "rows",
        description=(
            "How validation is split off train when no validation file is given. rows: a stratified share of the rows. "
            "whole_sentences: a stratified share of the sentences (rows that no other row contains, word for word), "
            "and every train row inside a held-out sentence (its sub-phrases) is dropped from train: for treebank "
            "data such as SST-2, whose rows are phrases of one another, so no validation sentence is partly trained on."
        ),
    )
    hold_out: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Label -> share of its train rows (seeded) moved to validation, e.g. {oos: 0.5} keeps half of the "
            "out-of-scope examples to choose and measure the out-of-scope rule on."
        ),
    )
    max_rows: int | None = Field(
        None, ge=2, description="For quick runs: a seeded sample of at most this many train rows, drawn before the split."
    )
    extra_train: list[str] = Field(
        default_factory=list, description="URIs of more training files appended to train, e.g. out-of-scope examples."
    )
    extra_validation: list[str] = Field(
        default_factory=list, description="URIs of more validation files appended to validation, e.g. out-of-scope examples."
    )

    @model_validator(mode="after")
    def _shares_in_range(self) -> DataSpec:
        outside = {label: share for label, share in self.hold_out.items() if not 0 < share < 1}
        if outside:
            raise ValueError(f"hold_out shares must be between 0 and 1 (exclusive); got {outside}")
        return self

    @model_validator(mode="after")
    def _distinct_files(self) -> DataSpec:
        uris = self.uris()
        duplicates = sorted({uri for uri in uris if uris.count(uri) > 1})
        if duplicates:
            raise ValueError(f"files listed more than once (train, extra_train, validation): {duplicates}")
        return self

    def uris(self) -> list[str]:
        """Every file to read, in reading order: train, extra_train, validation."""
        return [self.train, *self.extra_train, *([self.validation] if self.validation else []), *self.extra_validation]


@dataclass(frozen=True)
class Examples:
    """Parallel lists of texts and label names."""

    texts: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class PreparedData:
    """Checked train/validation examples and what identifies them.

    ``fingerprint`` is the sha256 of every file's content (by role: train, extra_train,
    validation) and of the parameters that shape the examples, so equal fingerprints mean
    equal splits. ``file_sha256`` maps each URI read, in reading order, to its content's sha256.
    """

    spec: DataSpec
    train: Examples
    validation: Examples
    labels: list[str]
    fingerprint: str
    file_sha256: dict[str, str]

    @property
    def uris(self) -> list[str]:
        return list(self.file_sha256)

    @property
    def rows(self) -> int:
        return len(self.train) + len(self.validation)

    def dataset_ref(self) -> dict[str, Any]:
        """The ``dataset`` entry of a registry manifest; ``rows`` counts the rows drawn from train files."""
        if self.spec.validation is None:
            return {"uri": self.spec.train, "sha256": self.fingerprint, "rows": self.rows}
        validation = {
            "uri": self.spec.validation,
            "sha256": self.file_sha256[self.spec.validation],
            "rows": len(self.validation),
        }
        return {"uri": self.spec.train, "sha256": self.fingerprint, "rows": len(self.train), "validation": validation}


class _Row(NamedTuple):
    text: str
    label: str
    where: str


def load_dataset(spec: DataSpec) -> PreparedData:
    """Read, check and split ``spec``'s files; every problem raises DataError before training starts."""
    digests: dict[str, str] = {}
    pool: list[_Row] = []
    for uri in [spec.train, *spec.extra_train]:
        rows, digests[uri] = _read_rows(uri, spec)
        pool += rows
    pool = _sample(pool, spec.max_rows, spec.seed)
    _check_train_labels(pool)
    pool, held_out = _hold_out(pool, spec.hold_out, spec.seed)
    if spec.validation is None:
        train, validation = SPLITS[spec.split](pool, spec.validation_fraction, spec.seed)
    else:
        train = pool
        validation, digests[spec.validation] = _read_rows(spec.validation, spec)
    validation = validation + held_out
    for uri in spec.extra_validation:
        rows, digests[uri] = _read_rows(uri, spec)
        validation = validation + rows
    if spec.validation is not None or spec.extra_validation or held_out:
        _check_validation_labels(validation, {row.label for row in train})
    return PreparedData(
        spec=spec,
        train=_examples(train),
        validation=_examples(validation),
        labels=sorted({row.label for row in train}),
        fingerprint=_fingerprint(spec, digests),
        file_sha256=digests,
    )


def read_examples(spec: DataSpec) -> tuple[Examples, str]:
    """Every row of ``spec.train``, unsplit and unsampled, and the file's sha256: an evaluation set."""
    rows, digest = _read_rows(spec.train, spec)
    return _examples(rows), digest


def _read_rows(uri: str, spec: DataSpec) -> tuple[list[_Row], str]:
    raw = _read_bytes(uri)
    table = _parse(raw, uri, _format(uri, spec.format), spec)
    return _rows(table, uri, spec), hashlib.sha256(raw).hexdigest()


def _read_bytes(uri: str) -> bytes:
    try:
        fs, path = fsspec.core.url_to_fs(resolve_uri(uri))
        raw = fs.cat_file(path)
    except FileNotFoundError:
        raise DataError(f"{uri}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{uri}: is a directory, not a file") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{uri}: cannot read: {error}") from None
    if not raw.strip():
        raise DataError(f"{uri}: empty file")
    return raw


def _format(uri: str, override: Format | None) -> Format:
    if override is not None:
        return override
    extension = posixpath.splitext(uri)[1].lower()
    if extension not in EXTENSIONS:
        known = sorted(set(EXTENSIONS.values()))
        raise DataError(f"{uri}: unknown format {extension or '(no extension)'!r}; set format to one of {known}")
    return EXTENSIONS[extension]


def _parse(raw: bytes, uri: str, fmt: Format, spec: DataSpec) -> pa.Table:
    if fmt == "jsonl":
        return _parse_jsonl(raw, uri)
    if fmt == "parquet":
        try:
            return pa_parquet.read_table(pa.BufferReader(raw))
        except pa.ArrowException as error:
            raise DataError(f"{uri}: not a Parquet file: {error}") from None
    return _parse_csv(raw, uri, fmt == "tsv", [spec.text_field, spec.label_field])


def _parse_jsonl(raw: bytes, uri: str) -> pa.Table:
    try:
        return pa_json.read_json(pa.BufferReader(raw))
    except pa.ArrowInvalid as error:
        raise DataError(_jsonl_problem(raw, uri, error)) from None


def _jsonl_problem(raw: bytes, uri: str, error: Exception) -> str:
    """pyarrow numbers rows within a block, so the first bad line is found here."""
    for number, line in enumerate(raw.decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as bad:
            return f"{uri}:{number}: not valid JSON ({bad}); expected JSON lines, one object per line"
        if not isinstance(value, dict):
            return f"{uri}:{number}: not a JSON object; expected JSON lines, one object per line"
    return f"{uri}: unreadable JSON lines: {error}"


def _parse_csv(raw: bytes, uri: str, tsv: bool, string_columns: list[str]) -> pa.Table:
    invalid: list[pa_csv.InvalidRow] = []

    def reject(row: pa_csv.InvalidRow) -> str:
        invalid.append(row)
        return "error"

    try:
        return pa_csv.read_csv(
            pa.BufferReader(raw),
            # Single-threaded so pyarrow knows the line number of a bad row.
            read_options=pa_csv.ReadOptions(use_threads=False),
            # TSV (e.g. GLUE) has no quoting: a quote is part of the text.
            parse_options=pa_csv.ParseOptions(
                delimiter="\t" if tsv else ",", quote_char=False if tsv else '"', invalid_row_handler=reject
            ),
            # Labels stay strings ("01" is not 1), whatever pyarrow would infer.
            convert_options=pa_csv.ConvertOptions(column_types={c: pa.string() for c in string_columns}),
        )
    except pa.ArrowInvalid as error:
        if invalid:
            row = invalid[0]
            raise DataError(
                f"{uri}:{row.number}: expected {row.expected_columns} columns, got {row.actual_columns}: {row.text[:80]!r}"
            ) from None
        raise DataError(f"{uri}: unreadable {'TSV' if tsv else 'CSV'}: {error}") from None


def _column(table: pa.Table, field: str, role: str, uri: str) -> list[str | None]:
    if field not in table.column_names:
        raise DataError(f"{uri}: no column {field!r} ({role}); columns present: {table.column_names}")
    column = table.column(field)
    try:
        return column.cast(pa.string()).to_pylist()
    except pa.ArrowException:
        raise DataError(f"{uri}: column {field!r} ({role}) has type {column.type}, not text") from None


def _rows(table: pa.Table, uri: str, spec: DataSpec) -> list[_Row]:
    """Rows are numbered from 1, the header not counted."""
    texts = _column(table, spec.text_field, "text_field", uri)
    labels = _column(table, spec.label_field, "label_field", uri)
    if not texts:
        raise DataError(f"{uri}: no rows")
    rows = []
    for number, (text, label) in enumerate(zip(texts, labels), start=1):
        where = f"{uri} row {number}"
        if text is None or not text.strip():
            raise DataError(f"{where}: empty text in column {spec.text_field!r}")
        if label is None or not label.strip():
            raise DataError(f"{where}: empty label in column {spec.label_field!r}")
        rows.append(_Row(text, _label_name(label, spec.label_map, where), where))
    return rows


def _label_name(raw: str, label_map: dict[str, str] | None, where: str) -> str:
    if label_map is None:
        return raw
    if raw not in label_map:
        raise DataError(f"{where}: label {raw!r} is not in label_map (keys: {sorted(label_map)})")
    return label_map[raw]


def _sample(rows: list[_Row], max_rows: int | None, seed: int) -> list[_Row]:
    if max_rows is None or len(rows) <= max_rows:
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), max_rows))
    return [rows[index] for index in keep]


def _check_train_labels(rows: list[_Row]) -> None:
    counts = Counter(row.label for row in rows)
    if len(counts) < 2:
        raise DataError(f"train has the single label {next(iter(counts))!r}; a classifier needs at least 2 labels")
    single = [row for row in rows if counts[row.label] == 1]
    if single:
        named = ", ".join(f"{row.label!r} ({row.where})" for row in single[:10])
        more = f" and {len(single) - 10} more" if len(single) > 10 else ""
        raise DataError(f"labels that appear only once in train: {named}{more}; every label needs at least 2 rows")


def _check_validation_labels(rows: list[_Row], known: set[str]) -> None:
    for row in rows:
        if row.label not in known:
            raise DataError(
                f"{row.where}: validation label {row.label!r} is not in train (train labels: {sorted(known)[:20]})"
            )


def _stratified_split(rows: list[_Row], fraction: float, seed: int) -> tuple[list[_Row], list[_Row]]:
    """Per label, a seeded ``fraction`` (at least 1, never all) goes to validation; order is kept."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        by_label[row.label].append(index)
    held_out: set[int] = set()
    for label in sorted(by_label):
        indices = by_label[label]
        rng.shuffle(indices)
        held_out.update(indices[: min(len(indices) - 1, max(1, round(len(indices) * fraction)))])
    train = [row for index, row in enumerate(rows) if index not in held_out]
    return train, [row for index, row in enumerate(rows) if index in held_out]


def _hold_out(rows: list[_Row], shares: dict[str, float], seed: int) -> tuple[list[_Row], list[_Row]]:
    """(rows kept, rows moved to validation): per label in ``shares``, a seeded share (at least 1,
    never all) of its rows; order is kept."""
    rng = random.Random(seed)
    moved: set[int] = set()
    for label in sorted(shares):
        indices = [index for index, row in enumerate(rows) if row.label == label]
        if len(indices) < 2:
            raise DataError(f"hold_out: label {label!r} has {len(indices)} train rows; moving a share needs at least 2")
        rng.shuffle(indices)
        moved.update(indices[: min(len(indices) - 1, max(1, round(len(indices) * shares[label])))])
    return [row for i, row in enumerate(rows) if i not in moved], [row for i, row in enumerate(rows) if i in moved]


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _spans(words: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """Every contiguous run of ``words``, the whole included."""
    for start in range(len(words)):
        for end in range(start + 1, len(words) + 1):
            yield words[start:end]


def sentence_rows(rows: list[_Row]) -> list[int]:
    """Indices of the rows that no other row contains word for word: the sentences a treebank's
    phrases come from (the first of identical rows stands for all of them)."""
    words = [_words(row.text) for row in rows]
    present = set(words)
    contained: set[tuple[str, ...]] = set()
    for phrase in present:
        for span in _spans(phrase):
            if span != phrase and span in present:
                contained.add(span)
    first: dict[tuple[str, ...], int] = {}
    for index, phrase in enumerate(words):
        if phrase not in contained:
            first.setdefault(phrase, index)
    return sorted(first.values())


def _whole_sentence_split(rows: list[_Row], fraction: float, seed: int) -> tuple[list[_Row], list[_Row]]:
    """Validation: a stratified ``fraction`` of the sentences; train: every row that is not part of
    a validation sentence."""
    sentences = [rows[index] for index in sentence_rows(rows)]
    if len({row.label for row in sentences}) < 2:
        raise DataError("split whole_sentences: the sentences (rows no other row contains) do not cover two labels")
    _, validation = _stratified_split(sentences, fraction, seed)
    inside = {span for row in validation for span in _spans(_words(row.text))}
    train = [row for row in rows if _words(row.text) not in inside]
    _check_train_labels(train)
    return train, validation


SPLITS: dict[str, Callable[[list[_Row], float, int], tuple[list[_Row], list[_Row]]]] = {
    "rows": _stratified_split,
    "whole_sentences": _whole_sentence_split,
}


def _examples(rows: list[_Row]) -> Examples:
    return Examples(texts=[row.text for row in rows], labels=[row.label for row in rows])


def _fingerprint(spec: DataSpec, digests: dict[str, str]) -> str:
    payload = {
        "train": digests[spec.train],
        "extra_train": [digests[uri] for uri in spec.extra_train],
        "validation": digests[spec.validation] if spec.validation else None,
        "extra_validation": [digests[uri] for uri in spec.extra_validation],
        "params": spec.model_dump(include=_FINGERPRINT_PARAMS),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
