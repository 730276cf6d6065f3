"""Fine-tuning data: formats, label handling, the stratified split, the fingerprint, and
errors that name the file, row and column; plus two loads of the shared real datasets."""

from __future__ import annotations

import csv
import json
import os
import shutil
import uuid
from collections import Counter
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

import train.data as data_module
from cluster.errors import ConfigError
from cluster.registry import DatasetInfo
from train.data import DataError, DataSpec, load_dataset

# The shared datasets live beside the checkout, not in it; a clone elsewhere names them with
# BATON_DATASETS, or the two tests that read them are skipped with the reason.
DATASETS = Path(os.environ.get("BATON_DATASETS", Path(__file__).resolve().parents[3] / "shared" / "datasets"))
needs_shared_datasets = pytest.mark.skipif(not DATASETS.is_dir(), reason=f"shared datasets not found at {DATASETS} (set BATON_DATASETS)")
# 20 "pos" and 10 "neg", interleaved; texts carry CSV/TSV hazards (commas, quotes).
ROWS = [(f'"quoted" review {n}, it\'s', "neg" if n % 3 == 0 else "pos") for n in range(30)]


def write_jsonl(path: Path, rows, text_key: str = "text", label_key: str = "label") -> str:
    path.write_text("".join(json.dumps({text_key: t, label_key: l}) + "\n" for t, l in rows))
    return str(path)


def write_csv(path: Path, rows) -> str:
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([("text", "label"), *rows])
    return str(path)


def write_tsv(path: Path, rows) -> str:
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows))
    return str(path)


def write_parquet(path: Path, rows) -> str:
    pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [l for _, l in rows]}), path)
    return str(path)


def load(**fields):
    return load_dataset(DataSpec(**fields))


def test_exported_names():
    assert sorted(data_module.__all__) == ["DataError", "DataSpec", "Examples", "PreparedData", "load_dataset", "read_examples"]
    assert issubclass(DataError, ConfigError)


def test_stratified_split_is_deterministic_per_seed(tmp_path):
    uri = write_jsonl(tmp_path / "train.jsonl", ROWS)
    data = load(train=uri, validation_fraction=0.2, seed=7)
    assert data.labels == ["neg", "pos"]
    assert Counter(data.validation.labels) == {"pos": 4, "neg": 2}
    assert (len(data.train), len(data.validation), data.rows) == (24, 6, 30)
    original = [t for t, _ in ROWS]
    assert sorted(data.train.texts + data.validation.texts) == sorted(original)
    assert data.train.texts == [t for t in original if t in set(data.train.texts)]  # file order kept
    assert dict(zip(data.train.texts, data.train.labels)) == {t: l for t, l in ROWS if t in set(data.train.texts)}
    again = load(train=uri, validation_fraction=0.2, seed=7)
    assert (again.train, again.validation, again.fingerprint) == (data.train, data.validation, data.fingerprint)
    other = load(train=uri, validation_fraction=0.2, seed=8)
    assert other.validation.texts != data.validation.texts and other.fingerprint != data.fingerprint


def test_every_label_with_two_rows_gets_one_validation_row(tmp_path):
    rows = [("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b"), ("b3", "b")]
    data = load(train=write_jsonl(tmp_path / "t.jsonl", rows), validation_fraction=0.1)
    assert sorted(data.validation.labels) == ["a", "b"]
    assert sorted(data.train.labels) == ["a", "b", "b"]


@pytest.mark.parametrize("writer, name", [(write_csv, "t.csv"), (write_tsv, "t.tsv"), (write_parquet, "t.parquet")])
def test_formats_read_the_same_examples(tmp_path, writer, name):
    reference = load(train=write_jsonl(tmp_path / "t.jsonl", ROWS))
    data = load(train=writer(tmp_path / name, ROWS))
    assert (data.train, data.validation, data.labels) == (reference.train, reference.validation, reference.labels)
    assert data.fingerprint != reference.fingerprint  # different bytes read


def test_format_override_and_memory_uri(tmp_path):
    plain = tmp_path / "export.txt"
    write_csv(plain, ROWS)
    assert load(train=str(plain), format="csv").rows == 30
    uri = f"memory://data-{uuid.uuid4().hex}/train.jsonl"
    with fsspec.open(uri, "w") as handle:
        handle.write(Path(write_jsonl(tmp_path / "t.jsonl", ROWS)).read_text())
    assert load(train=uri).train == load(train=str(tmp_path / "t.jsonl")).train
    fsspec.filesystem("memory").rm(uri)


def test_labels_are_compared_as_strings_and_mapped(tmp_path):
    rows = [{"text": f"s{n}", "label": n % 2} for n in range(10)]
    path = tmp_path / "ints.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load(train=str(path)).labels == ["0", "1"]
    mapped = load(train=str(path), label_map={"0": "NEGATIVE", "1": "POSITIVE"})
    assert mapped.labels == ["NEGATIVE", "POSITIVE"]
    assert set(zip(mapped.train.texts, mapped.train.labels)) <= {(f"s{n}", "POSITIVE" if n % 2 else "NEGATIVE") for n in range(10)}
    csv_path = tmp_path / "zeros.csv"
    csv_path.write_text("text,label\na,01\nb,01\nc,1\nd,1\n")
    assert load(train=str(csv_path)).labels == ["01", "1"]  # not inferred as numbers
    with pytest.raises(DataError, match=r"ints.jsonl row 2: label '1' is not in label_map \(keys: \['0'\]\)"):
        load(train=str(path), label_map={"0": "NEGATIVE"})


def test_validation_file_is_used_as_given(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    validation = write_jsonl(tmp_path / "val.jsonl", [("v1", "pos"), ("v2", "neg"), ("v3", "pos")])
    data = load(train=train, validation=validation)
    assert (len(data.train), data.validation.texts, data.validation.labels) == (30, ["v1", "v2", "v3"], ["pos", "neg", "pos"])
    assert data.uris == [train, validation]
    assert data.dataset_ref() == {
        "uri": train, "sha256": data.fingerprint, "rows": 30,
        "validation": {"uri": validation, "sha256": data.file_sha256[validation], "rows": 3},
    }
    DatasetInfo.model_validate(data.dataset_ref())
    bad = write_jsonl(tmp_path / "bad_val.jsonl", [("v1", "pos"), ("v2", "maybe")])
    with pytest.raises(DataError, match=r"bad_val.jsonl row 2: validation label 'maybe' is not in train"):
        load(train=train, validation=bad)


def test_extra_train_is_appended(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    oos = write_jsonl(tmp_path / "oos.jsonl", [("tell me a joke", "oos"), ("what is love", "oos")], label_key="label")
    data = load(train=train, extra_train=[oos])
    assert data.labels == ["neg", "oos", "pos"] and data.rows == 32
    assert data.uris == [train, oos]
    assert data.dataset_ref() == {"uri": train, "sha256": data.fingerprint, "rows": 32}
    DatasetInfo.model_validate(data.dataset_ref())


def test_max_rows_samples_before_the_split(tmp_path):
    rows = [(f"t{n}", "ab"[n % 2]) for n in range(100)]
    uri = write_jsonl(tmp_path / "big.jsonl", rows)
    data = load(train=uri, max_rows=20, seed=3)
    assert data.rows == 20
    chosen = data.train.texts + data.validation.texts
    assert set(chosen) <= {t for t, _ in rows}
    assert load(train=uri, max_rows=20, seed=3).train == data.train
    assert set(load(train=uri, max_rows=20, seed=4).train.texts) != set(data.train.texts)
    assert load(train=uri, max_rows=200).rows == 100


def test_fingerprint_covers_content_roles_and_params_not_location(tmp_path):
    uri = write_jsonl(tmp_path / "a.jsonl", ROWS)
    base = load(train=uri).fingerprint
    moved = tmp_path / "elsewhere.jsonl"
    shutil.copy(uri, moved)
    assert load(train=str(moved)).fingerprint == base
    assert load(train=uri, validation_fraction=0.2).fingerprint != base
    assert load(train=uri, max_rows=29).fingerprint != base
    write_jsonl(moved, ROWS[:-1] + [("changed text", ROWS[-1][1])])
    assert load(train=str(moved)).fingerprint != base
    other = write_jsonl(tmp_path / "b.jsonl", [("x1", "pos"), ("x2", "neg")])
    assert load(train=uri, validation=other).fingerprint != load(train=uri, extra_train=[other]).fingerprint


def test_spec_is_strict():
    with pytest.raises(ValidationError, match="shuffle"):
        DataSpec(train="t.jsonl", shuffle=True)
    with pytest.raises(ValidationError, match="more than once"):
        DataSpec(train="t.jsonl", validation="t.jsonl")
    with pytest.raises(ValidationError, match="validation_fraction"):
        DataSpec(train="t.jsonl", validation_fraction=1.0)
    with pytest.raises(ValidationError, match="format"):
        DataSpec(train="t.jsonl", format="xlsx")


@pytest.mark.parametrize(
    "name, content, fields, message",
    [
        ("t.txt", "x", {}, "t.txt: unknown format '.txt'"),
        ("t.jsonl", "", {}, "t.jsonl: empty file"),
        ("t.csv", "text,label\n", {}, "t.csv: no rows"),
        ("t.jsonl", '{"text": "a", "label": "x"}\n', {"text_field": "sentence"},
         r"t.jsonl: no column 'sentence' \(text_field\); columns present: \['text', 'label'\]"),
        ("t.csv", "text,label\na,x\nb,x\n", {"label_field": "intent"},
         r"t.csv: no column 'intent' \(label_field\); columns present: \['text', 'label'\]"),
        ("t.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n{"text": null, "label": "x"}\n', {},
         "t.jsonl row 3: empty text in column 'text'"),
        ("t.csv", "text,label\na,x\n   ,x\n", {}, "t.csv row 2: empty text in column 'text'"),
        ("t.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n', {}, "t.jsonl row 2: empty label in column 'label'"),
        ("t.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n{"text": "c", label: "y"}\n', {},
         r"t.jsonl:3: not valid JSON"),
        ("t.json", '[{"text": "a", "label": "x"},\n{"text": "b", "label": "y"}]\n', {}, r"t.json:1: not valid JSON"),
        ("t.csv", "text,label\na,x\nb,x,extra\nc,y\n", {}, r"t.csv:3: expected 2 columns, got 3"),
        ("t.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n', {}, "train has the single label 'x'"),
        ("t.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n{"text": "c", "label": "rare"}\n', {},
         r"labels that appear only once in train: 'rare' \(.*t.jsonl row 3\)"),
    ],
)
def test_data_errors_name_the_problem(tmp_path, name, content, fields, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        load(train=str(tmp_path / name), **fields)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match=r"nope.jsonl: no such file"):
        load(train=str(tmp_path / "nope.jsonl"))
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(DataError, match=r"dir.jsonl: is a directory"):
        load(train=str(tmp_path / "dir.jsonl"))
    good = write_jsonl(tmp_path / "good.jsonl", ROWS)
    with pytest.raises(DataError, match=r"gone.jsonl: no such file"):
        load(train=good, validation=str(tmp_path / "gone.jsonl"))


@needs_shared_datasets
def test_sst2_sample():
    data = load(train=str(DATASETS / "sst2" / "train.tsv"), max_rows=2000, label_map={"0": "NEGATIVE", "1": "POSITIVE"})
    assert data.labels == ["NEGATIVE", "POSITIVE"]
    assert data.rows == 2000
    pooled = Counter(data.train.labels + data.validation.labels)
    assert Counter(data.validation.labels) == {label: round(count * 0.1) for label, count in pooled.items()}
    assert len(data.validation) in range(199, 202)
    assert data.dataset_ref()["rows"] == 2000


@needs_shared_datasets
def test_clinc150_with_given_validation():
    root = DATASETS / "clinc150"
    data = load(train=str(root / "train.jsonl"), validation=str(root / "val.jsonl"), label_field="intent")
    intents = sorted(i for domain in json.loads((root / "domains.json").read_text()).values() for i in domain)
    assert data.labels == intents and len(intents) == 150
    assert (len(data.train), len(data.validation)) == (15000, 3000)
    assert Counter(data.validation.labels) == {intent: 20 for intent in intents}


# Three treebank-style sentences and phrases of them; "a fine cast" occurs in two sentences.
SENTENCES = [
    ("a fine cast makes the film sing .", "pos"),
    ("the plot drags and a fine cast cannot save it .", "neg"),
    ("a dull , joyless slog .", "neg"),
    ("an utter delight from start to finish .", "pos"),
]
PHRASES = [
    ("a fine cast", "pos"), ("makes the film sing", "pos"), ("the plot drags", "neg"), ("cannot save it", "neg"),
    ("a dull , joyless slog", "neg"), ("joyless", "neg"), ("an utter delight", "pos"), ("from start to finish", "pos"),
]


def words_inside(sentence: str) -> set[tuple[str, ...]]:
    words = sentence.split()
    return {tuple(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1)}


def test_sentence_rows_are_the_rows_no_other_row_contains(tmp_path):
    rows = [data_module._Row(text, label, "here") for text, label in PHRASES + SENTENCES + [SENTENCES[0]]]
    assert [rows[i].text for i in data_module.sentence_rows(rows)] == [text for text, _ in SENTENCES]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_whole_sentence_split_holds_out_sentences_with_every_phrase_inside_them(tmp_path, seed):
    uri = write_jsonl(tmp_path / "t.jsonl", PHRASES + SENTENCES)
    data = load(train=uri, split="whole_sentences", validation_fraction=0.5, seed=seed)
    # Half of each label's sentences (the stratified rule: at least one, never all), whole.
    assert sorted(data.validation.labels) == ["neg", "pos"]
    assert set(data.validation.texts) <= {text for text, _ in SENTENCES}
    inside = set().union(*(words_inside(text) for text in data.validation.texts))
    assert not any(tuple(text.split()) in inside for text in data.train.texts)
    # Nothing else leaves train: every row outside the held-out sentences stays.
    assert len(data.train) == sum(tuple(text.split()) not in inside for text, _ in PHRASES + SENTENCES)
    again = load(train=uri, split="whole_sentences", validation_fraction=0.5, seed=seed)
    assert again.validation == data.validation and again.fingerprint == data.fingerprint
    assert load(train=uri, validation_fraction=0.5, seed=seed).fingerprint != data.fingerprint


def test_hold_out_moves_a_share_of_a_label_to_validation(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", ROWS)
    validation = write_jsonl(tmp_path / "v.jsonl", [("a", "pos"), ("b", "neg")])
    data = load(train=train, validation=validation, hold_out={"neg": 0.5}, seed=3)
    assert Counter(data.train.labels) == {"pos": 20, "neg": 5}
    assert Counter(data.validation.labels) == {"pos": 1, "neg": 6}
    moved = set(data.validation.texts) - {"a", "b"}
    assert not moved & set(data.train.texts)
    assert load(train=train, validation=validation, hold_out={"neg": 0.5}, seed=3).validation == data.validation
    assert load(train=train, validation=validation, hold_out={"neg": 0.5}, seed=4).validation != data.validation
    with pytest.raises(DataError, match="hold_out: label 'maybe' has 0 train rows"):
        load(train=train, hold_out={"maybe": 0.5})
    with pytest.raises(ValidationError, match="hold_out shares must be between 0 and 1"):
        DataSpec(train=train, hold_out={"neg": 1.0})


@needs_shared_datasets
def test_sst2_whole_sentences_share_no_phrase_with_train():
    data = load(
        train=str(DATASETS / "sst2" / "train.tsv"), label_map={"0": "NEGATIVE", "1": "POSITIVE"},
        split="whole_sentences", validation_fraction=0.1, seed=13,
    )
    assert (len(data.train), len(data.validation)) == (59647, 689)
    inside = set().union(*(words_inside(text) for text in data.validation.texts))
    assert not any(tuple(text.split()) in inside for text in data.train.texts)


@needs_shared_datasets
def test_clinc150_holds_out_half_of_the_out_of_scope_training_rows():
    root = DATASETS / "clinc150"
    data = load(
        train=str(root / "train.jsonl"), extra_train=[str(root / "oos_train.jsonl")], validation=str(root / "val.jsonl"),
        extra_validation=[str(root / "oos_val.jsonl")], label_field="intent", hold_out={"oos": 0.5},
    )
    assert Counter(data.train.labels)["oos"] == 50 and Counter(data.validation.labels)["oos"] == 150
    assert (len(data.train), len(data.validation)) == (15050, 3150)
