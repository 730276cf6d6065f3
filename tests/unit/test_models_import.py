"""``baton models import``: a Hugging Face checkpoint trained elsewhere (a test double: the tiny
BERT of classifier_doubles) registered with metrics measured on an evaluation file, audited,
served by the classify specialist, and refused with a clear message when it is unsafe or unfit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

import train.cli as train_cli
from actors.audit import read_audit
from actors.classifier_io import TextClassifier
from actors.drift import PROFILE_KEY
from actors.specialists.classify import ClassifySpecialist
from cluster.errors import ConfigError
from cluster.registry import ModelRegistry
from cluster.storage import Storage
from tests.unit.classifier_doubles import LABELS, NEGATIVE, POSITIVE, build_tiny_classifier

# Variants the double was not trained on, so it gets some wrong and the metrics mean something.
# Variants of its training sentences, and two rows labelled against what it learnt, so its
# accuracy is below 1 and the metrics can tell two checkpoints apart.
TEXTS = [f"{text}{extra}" for text in POSITIVE + NEGATIVE for extra in ("", " , i think", " overall")] + ["superb and moving", "awful dialogue"]
TRUTH = ["POSITIVE" if text.startswith(tuple(POSITIVE)) else "NEGATIVE" for text in TEXTS[:-2]] + ["NEGATIVE", "POSITIVE"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    directory = build_tiny_classifier(tmp_path_factory.mktemp("checkpoint"))
    assert (directory / "model.safetensors").is_file()
    return directory


@pytest.fixture
def evaluation(tmp_path) -> Path:
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps({"review": text, "sentiment": int(label == "POSITIVE")}) + "\n" for text, label in zip(TEXTS, TRUTH)))
    return path


def baton(*args: str):
    root = typer.Typer()
    train_cli.register(root)
    return CliRunner().invoke(root, list(args))


def import_args(checkpoint: Path, evaluation: Path, storage: str, *extra: str) -> list[str]:
    return [
        "models", "import", str(checkpoint), "--name", "outside-reviews", "--task", "text-classification", "--eval", str(evaluation),
        "--text-field", "review", "--label-field", "sentiment", "--label-map", "0=NEGATIVE", "--label-map", "1=POSITIVE",
        "--max-length", "32", "--storage", storage, *extra,
    ]


def test_import_registers_measures_audits_and_serves(checkpoint, evaluation, tmp_path):
    storage = str(tmp_path / "store")
    result = baton(*import_args(checkpoint, evaluation, storage))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["after"] == "outside-reviews:v1"

    # The metrics are the checkpoint's own on the evaluation file, recomputed here by hand.
    torch.set_num_threads(1)
    probabilities = TextClassifier(checkpoint, 32)(TEXTS)
    expected = [LABELS[i] for i in probabilities.argmax(axis=1)]
    accuracy = float(np.mean([p == t for p, t in zip(expected, TRUTH)]))
    assert 0.5 < accuracy < 1.0  # the variants make it miss some: a metric that can tell models apart
    manifest = ModelRegistry(Storage(storage)).manifest("outside-reviews", "v1")
    assert manifest.metrics["accuracy"] == pytest.approx(accuracy)
    assert manifest.labels == LABELS and manifest.task == "sequence-classification"
    assert manifest.dataset.rows == 0 and manifest.dataset.validation.rows == len(TEXTS)
    assert manifest.recipe["training"]["max_length"] == 32 and manifest.extra["imported_from"] == str(checkpoint.resolve())
    assert PROFILE_KEY in manifest.extra  # drift is watched for it like for a trained version
    records = read_audit(Storage(storage), endpoint="admin.models.import", limit=10)
    assert [(r["status_code"], json.loads(r["output"])["after"]) for r in records] == [(200, "outside-reviews:v1")]

    specialist = ClassifySpecialist({"model": "registry://outside-reviews:v1", "storage": storage})
    specialist.load()
    served = specialist.predict(TEXTS, [{}] * len(TEXTS))
    assert [answer["label"] for answer in served] == expected

    # A second import of the same checkpoint is the next version.
    assert baton(*import_args(checkpoint, evaluation, storage)).exit_code == 0
    assert [m.version for m in ModelRegistry(Storage(storage)).versions("outside-reviews")] == ["v1", "v2"]


def test_import_refuses_unfit_or_unsafe_checkpoints(checkpoint, evaluation, tmp_path):
    storage = str(tmp_path / "store")
    pickled = tmp_path / "pickled"
    shutil.copytree(checkpoint, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    custom = tmp_path / "custom"
    shutil.copytree(checkpoint, custom)
    config = json.loads((custom / "config.json").read_text())
    (custom / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling.Evil"}}))
    cases = [
        (import_args(pickled, evaluation, storage), "no model.safetensors (found ['pytorch_model.bin'])"),
        (import_args(custom, evaluation, storage), "needs its own Python code (auto_map)"),
        (import_args(tmp_path / "nowhere", evaluation, storage), "not a directory"),
        ([arg for arg in import_args(checkpoint, evaluation, storage) if arg not in ("--label-map", "0=NEGATIVE", "1=POSITIVE")],
         "evaluation labels ['0', '1'] are not labels of the checkpoint"),
        (import_args(checkpoint, evaluation, storage, "--oos-label", "oos"), "--oos-label 'oos' is not a label"),
        (import_args(checkpoint, evaluation, storage, "--task", "summarization"), "task 'summarization' cannot be imported"),
        (import_args(checkpoint, tmp_path / "gone.jsonl", storage), "gone.jsonl: no such file"),
    ]
    for args, message in cases:
        result = baton(*args)
        # The baton entry point prints a BatonError's message and exits 2 (cluster/cli.py).
        assert isinstance(result.exception, ConfigError), (args, result.exception)
        assert message in result.exception.message
    assert not ModelRegistry(Storage(storage)).list_models()
