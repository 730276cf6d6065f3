"""``baton models import``: register a Hugging Face checkpoint trained elsewhere, with metrics
measured here on an evaluation set and a drift profile, so it is served and governed like a
version baton trained itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from actors.classifier_io import DEFAULT_MAX_LENGTH, TextClassifier
from actors.drift import PROFILE_KEY
from cluster.errors import BatonError, ConfigError
from cluster.registry import Manifest, ModelRegistry
from train.data import DataSpec, PreparedData, read_examples
from train.metrics import classification_metrics, confusion_matrix, mean_cross_entropy
from train.profile import profile_classifier

# The Hugging Face pipeline name a user knows -> the task the registry records.
TASKS = {"text-classification": "sequence-classification"}
IMPORTED = "imported"
SAFE_WEIGHTS = "model.safetensors"


def import_checkpoint(
    registry: ModelRegistry, directory: str | Path, name: str, evaluation: DataSpec, *, task: str = "text-classification",
    max_length: int | None = None, oos_label: str | None = None, echo: Callable[[str], None] = print,
) -> Manifest:
    """Load ``directory`` as a classifier, measure it on every row of ``evaluation.train`` and
    register it as the next version of ``name`` (files copied, checksums recorded)."""
    if task not in TASKS:
        raise ConfigError(f"task {task!r} cannot be imported; known: {sorted(TASKS)}")
    source = _checked_directory(Path(directory))
    examples, digest = read_examples(evaluation)
    classifier = _load(source, max_length or DEFAULT_MAX_LENGTH)
    labels = classifier.labels
    unknown = sorted(set(examples.labels) - set(labels))
    if unknown:
        raise ConfigError(
            f"evaluation labels {unknown[:20]} are not labels of the checkpoint ({labels[:20]}); "
            "map them with --label-map RAW=LABEL or fix the checkpoint's config.json id2label"
        )
    if oos_label is not None and oos_label not in labels:
        raise ConfigError(f"--oos-label {oos_label!r} is not a label of the checkpoint ({labels[:20]})")
    outputs = classifier.run(examples.texts)
    truth = np.asarray([labels.index(label) for label in examples.labels])
    predicted = outputs.probabilities.argmax(axis=1)
    oos_index = labels.index(oos_label) if oos_label else None
    metrics = classification_metrics(confusion_matrix(truth, predicted, len(labels)), labels, oos_index)
    metrics["val_loss"] = mean_cross_entropy(outputs.logits, truth)
    prepared = PreparedData(
        spec=evaluation, train=examples, validation=examples, labels=labels, fingerprint=digest, file_sha256={evaluation.train: digest}
    )
    profile = profile_classifier(classifier, prepared)
    evaluated = {"uri": evaluation.train, "sha256": digest, "rows": len(examples)}
    recipe: dict[str, Any] = {
        "name": name, "task": TASKS[task], IMPORTED: str(source),
        "training": {"max_length": classifier.max_length},
        "evaluation": {"metric": "accuracy", "oos_label": oos_label, "evaluated_on": evaluation.model_dump(mode="json")},
    }
    manifest = registry.register(
        name, source, task=TASKS[task], base_model=str(source), labels=labels, metrics=metrics,
        # Nothing here was trained on: the evaluation file is recorded as validation, with 0 training rows.
        dataset={"uri": evaluation.train, "sha256": digest, "rows": 0, "validation": evaluated},
        recipe=recipe, extra={"optimization": IMPORTED, "imported_from": str(source), PROFILE_KEY: profile.model_dump(mode="json")},
    )
    scores = ", ".join(f"{key} {metrics[key]:.4f}" for key in ("accuracy", "macro_f1", "in_scope_accuracy", "oos_recall") if key in metrics)
    echo(f"registered {manifest.name}:{manifest.version} from {source}: {scores} on {len(examples)} rows of {evaluation.train}")
    return manifest


def _checked_directory(directory: Path) -> Path:
    """The checkpoint's resolved path, after the checks that need no loading: a directory with a
    config, weights in safetensors (pickled weights can run code), and no custom model code."""
    source = directory.expanduser().resolve()
    if not source.is_dir():
        raise ConfigError(f"{directory}: not a directory; give a Hugging Face checkpoint directory (config.json, tokenizer, weights)")
    config_path = source / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"{directory}: no config.json; not a Hugging Face checkpoint directory")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ConfigError(f"{config_path}: not JSON: {error}") from None
    if "auto_map" in config:
        raise ConfigError(f"{config_path}: the checkpoint needs its own Python code (auto_map); baton loads only built-in architectures")
    if not (source / SAFE_WEIGHTS).is_file():
        present = sorted(path.name for path in source.iterdir() if path.suffix in {".bin", ".pt", ".pth", ".safetensors"})
        raise ConfigError(
            f"{directory}: no {SAFE_WEIGHTS} (found {present or 'no weights'}); convert pickled weights with "
            "save_pretrained(..., safe_serialization=True) first: unpickling a file can run code"
        )
    return source


def _load(source: Path, max_length: int) -> TextClassifier:
    try:
        return TextClassifier(source, max_length)
    except BatonError:
        raise
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"{source}: cannot load as a sequence classifier: {error}") from None
