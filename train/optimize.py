"""Derived versions of registered classifiers: dynamic int8 quantisation, distillation into fewer
encoder layers, and out-of-scope threshold calibration, each registered with re-measured metrics.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from actors.classifier_io import INT8, MARKER, OutOfScopeRule, TextClassifier, load_classifier, quantize_linear, save_quantized
from actors.drift import PROFILE_KEY
from actors.out_of_scope import NEEDS_REFERENCE, REFERENCE_FILE, SCORES, apply_threshold, in_scope_scores
from cluster.config import parse_config
from cluster.errors import BatonError, ConfigError, exit_code
from cluster.registry import REF_SCHEME, Manifest, ModelRegistry
from cluster.storage import Storage
from train.data import DataError, Examples, PreparedData, load_dataset
from train.finetune import (
    PACKAGED_BASE, build_model, chunk_rows, label_array, progress_bar, resolve_base_model, row_chunks, run_epoch, save_out_of_scope_reference,
    seed_everything, steps_per_epoch, training_batches,
)
from train.metrics import KEPT_METRIC, choose_oos_threshold, classification_metrics, confusion_matrix, mean_cross_entropy, oos_tradeoff
from train.profile import reference_profile
from train.recipe import Recipe, TrainingSettings, load_recipe

DISTILLED = "distilled"
CALIBRATED = "calibrated"
CROSS_FIT_HALVINGS = 10  # one random halving of ~100 out-of-scope rows moves the estimate by several points
LATENCY_BATCHES = (1, 32)
DEFAULT_REPEATS = 20
_LAYER_KEY = re.compile(r"\.layer\.(\d+)\.")

Echo = Callable[[str], None]


# -- loading, quantising and timing -------------------------------------------------------


def measure_latency(tokenizer: Any, model: Any, texts: Sequence[str], batch_size: int, repeats: int, *, max_length: int = 128) -> float:
    """Median milliseconds to tokenise and classify ``batch_size`` texts (cycled from ``texts``)
    over ``repeats`` runs after one warm-up run, on the current torch thread count."""
    import torch

    if not texts or batch_size < 1 or repeats < 1:
        raise BatonError(f"measure_latency needs texts, batch_size >= 1 and repeats >= 1; got {len(texts)} texts, {batch_size}, {repeats}")
    batch = [texts[i % len(texts)] for i in range(batch_size)]
    model.eval()
    timings = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            started = time.perf_counter()
            model(**tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
            timings.append(time.perf_counter() - started)
    return round(statistics.median(timings[1:]) * 1000, 3)


# -- distillation ---------------------------------------------------------------------------


def make_student(teacher: Any, layers: int) -> Any:
    """The teacher's architecture with ``layers`` encoder layers, starting from the teacher's
    embeddings, heads and evenly spaced layers (every other one when halving)."""
    from transformers import AutoModelForSequenceClassification

    total = teacher.config.num_hidden_layers
    if not 1 <= layers < total:
        raise ConfigError(f"layers must be from 1 to {total - 1}, fewer than the teacher's {total}; got {layers}")
    kept = [index * total // layers for index in range(layers)]
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = layers
    student = AutoModelForSequenceClassification.from_config(config)
    source = teacher.state_dict()
    mapped = {key: _LAYER_KEY.sub(lambda m: f".layer.{kept[int(m.group(1))]}.", key, count=1) for key in student.state_dict()}
    missing = sorted(key for key in mapped.values() if key not in source)
    if missing:
        raise ConfigError(f"cannot map the student onto the teacher ({type(teacher).__name__}): no teacher weights {missing[:5]}")
    student.load_state_dict({key: source[teacher_key] for key, teacher_key in mapped.items()})
    return student


def distillation_loss(
    student_logits: Any, teacher_logits: Any, labels: Any, temperature: float = 2.0, alpha: float = 0.5, label_smoothing: float = 0.0,
) -> Any:
    """alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T); the T^2 keeps the soft
    term's gradients on the scale of the hard term's as T changes (Hinton et al., 2015)."""
    import torch.nn.functional as F

    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1), F.log_softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean", log_target=True,
    )
    return alpha * hard + (1 - alpha) * temperature**2 * soft


def soft_targets(teacher: TextClassifier, texts: list[str], echo: Echo = print, parts: int = 10) -> np.ndarray:
    """The teacher's logits for every row, computed once with the teacher's own tokenizer, so a
    student with another tokenizer (another architecture) can learn from them.

    The rows go in ``parts`` slices with a progress line after each: a large teacher takes many
    minutes over a large train split on CPU.
    """
    span = max(1, -(-len(texts) // parts))
    started, logits = time.perf_counter(), []
    for start in range(0, len(texts), span):
        logits.append(teacher.run(texts[start : start + span], pooled=False).logits)
        done = min(start + span, len(texts))
        echo(f"soft targets {progress_bar(done / len(texts))} {done}/{len(texts)} rows, {done / (time.perf_counter() - started):.0f} rows/s")
    return np.concatenate(logits)


def _train_student(
    student: Any, tokenizer: Any, train: Examples, labels: list[str], teacher_logits: np.ndarray,
    training: TrainingSettings, epochs: int, temperature: float, alpha: float,
) -> float:
    """Plain CPU loop with finetune's optimiser, schedule and progress lines; returns the last
    epoch's mean loss."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    label_ids = torch.from_numpy(label_array(train.labels, labels))
    targets = torch.from_numpy(teacher_logits)

    def loss_of(logits: Any, rows: Any) -> Any:
        # The batches' "labels" are row numbers, which pick each row's label and teacher logits.
        return distillation_loss(logits, targets[rows], label_ids[rows], temperature, alpha, training.label_smoothing)

    optimizer = torch.optim.AdamW(student.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay)
    steps = steps_per_epoch(len(train), training.batch_size)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(steps * epochs * training.warmup_ratio), steps * epochs)
    student.train()
    for epoch in range(epochs):
        chunks = row_chunks(train.texts, np.arange(len(train)), chunk_rows(training.batch_size), seed=training.seed + epoch)
        batches = training_batches(chunks, tokenizer, training.batch_size, training.max_length, training.seed + epoch)
        loss, _, _ = run_epoch(student, batches, steps, optimizer, scheduler, epoch, epochs, 0, loss_of)
    student.eval()
    return loss


# -- measuring a derived model against its source -------------------------------------------


def _latency(tokenizer: Any, model: Any, texts: list[str], repeats: int, max_length: int) -> dict[str, float]:
    return {f"batch_{size}": measure_latency(tokenizer, model, texts, size, repeats, max_length=max_length) for size in LATENCY_BATCHES}


def _size_mb(directory: Path) -> float:
    return round(sum(path.stat().st_size for path in directory.rglob("*") if path.is_file()) / 2**20, 2)


def _recipe_of(manifest: Manifest) -> Recipe:
    try:
        return parse_config(Recipe, manifest.recipe, f"recipe of {manifest.name}:{manifest.version}")
    except ConfigError as error:
        raise ConfigError(f"{error.message}; pass a training recipe to measure the model on") from None


def _load_data(recipe: Recipe, purpose: str) -> PreparedData:
    try:
        return load_dataset(recipe.data)
    except DataError as error:
        raise DataError(f"cannot {purpose}: the recipe's data is unavailable: {error.message}") from None


def _check_labels(data_labels: list[str], model_labels: list[str], model: str) -> None:
    unknown = sorted(set(data_labels) - set(model_labels))
    if unknown:
        raise ConfigError(f"data labels {unknown[:20]} are not labels of {model} ({model_labels[:20]})")


def _float_source(registry: ModelRegistry, ref: str) -> Manifest:
    manifest = registry.manifest(*registry.resolve(ref))
    if MARKER in manifest.files:  # the files, not the history, say whether weights are int8
        raise ConfigError(f"{manifest.name}:{manifest.version} has int8 weights already; start from a float32 version")
    return manifest


# -- the two operations -----------------------------------------------------------------------


def quantize(
    registry: ModelRegistry, ref: str, recipe: Recipe | None = None, *, repeats: int = DEFAULT_REPEATS, echo: Echo = print
) -> Manifest:
    """Register a dynamic-int8 copy of ``ref`` as the next version of the same model, measured on
    the validation data of ``recipe`` (default: the recipe the source was trained with) under the
    source's out-of-scope rule, side by side with the source."""
    source = _float_source(registry, ref)
    source_id = f"{source.name}:{source.version}"
    recipe = recipe or _recipe_of(source)
    validation = _load_data(recipe, f"re-measure {source_id}").validation
    _check_labels(validation.labels, source.labels, source_id)
    source_dir = registry.fetch(source_id)
    tokenizer, model, labels = load_classifier(source_dir)
    with tempfile.TemporaryDirectory() as directory:
        int8_dir = Path(directory)
        save_quantized(tokenizer, quantize_linear(model), int8_dir)
        if (source_dir / REFERENCE_FILE).is_file():  # a distance rule's training statistics go with the weights
            shutil.copy2(source_dir / REFERENCE_FILE, int8_dir / REFERENCE_FILE)
        measured = {name: _measure_saved(path, validation, labels, recipe) for name, path in (("float32", source_dir), ("int8", int8_dir))}
        metrics, comparison = _side_by_side(measured, validation.texts, recipe.training.max_length, repeats)
        extra = {
            "optimization": INT8, "source": source_id, **comparison,
            "size_mb": {"float32": _size_mb(source_dir), "int8": _size_mb(int8_dir)},
        }
        manifest = registry.register(
            source.name, int8_dir, task=source.task, base_model=f"{REF_SCHEME}{source_id}", labels=labels,
            metrics=metrics, dataset=source.dataset, recipe=recipe.model_dump(mode="json"),
            parent_version=source.version, extra=extra,
        )
    echo(_summary(manifest, measured["float32"][0]))
    return manifest


def _measure_saved(directory: Path, examples: Examples, labels: list[str], recipe: Recipe) -> tuple[dict[str, Any], np.ndarray, TextClassifier]:
    """(metrics, predicted label ids, the loaded classifier) of a saved model, as it is served:
    the recipe's truncation and out-of-scope rule."""
    rule = OutOfScopeRule.from_evaluation(recipe.evaluation.model_dump(), labels)
    classifier = TextClassifier(directory, recipe.training.max_length, rule)
    outputs = classifier.run(examples.texts)
    predicted = classifier.label_ids(outputs)
    truth = label_array(examples.labels, labels)
    oos_index = labels.index(recipe.evaluation.oos_label) if recipe.evaluation.oos_label in labels else None
    metrics = classification_metrics(confusion_matrix(truth, predicted, len(labels)), labels, oos_index)
    return metrics | {"val_loss": mean_cross_entropy(outputs.logits, truth)}, predicted, classifier


def _side_by_side(measured: dict[str, tuple], texts: list[str], max_length: int, repeats: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The derived model's metrics (the second of ``measured``), and p50 latency of both, the
    speedup and how often the two agree, to record beside them."""
    (source_name, (_, source_predicted, source)), (derived_name, (metrics, predicted, derived)) = measured.items()
    latency = {
        name: _latency(classifier.tokenizer, classifier.model, texts, repeats, max_length)
        for name, classifier in ((source_name, source), (derived_name, derived))
    }
    speedup = {batch: round(latency[source_name][batch] / latency[derived_name][batch], 2) for batch in latency[source_name]}
    agreement = round(float(np.mean(source_predicted == predicted)), 4)
    return metrics, {"latency_ms": latency, "speedup": speedup, "agreement": agreement}


def distill(
    registry: ModelRegistry, teacher_ref: str, recipe: Recipe, layers: int | None = None, epochs: int | None = None, *,
    temperature: float = 2.0, alpha: float = 0.5, repeats: int = DEFAULT_REPEATS, echo: Echo = print,
) -> Manifest:
    """Train a student on ``teacher_ref``'s soft targets over the recipe's train split and register
    it under the recipe's name (a child version of the teacher when the names match).

    The student is the teacher cut to ``layers`` encoder layers, or without ``layers`` the
    recipe's base model (by default the packaged MiniLM-L6) with a new head: a larger teacher of
    another architecture, with its own tokenizer, can teach it.
    """
    if temperature <= 0 or not 0 <= alpha <= 1 or (epochs is not None and epochs < 1):
        raise ConfigError(f"need temperature > 0, 0 <= alpha <= 1 and epochs >= 1; got {temperature}, {alpha}, {epochs}")
    teacher_manifest = _float_source(registry, teacher_ref)
    teacher_id = f"{teacher_manifest.name}:{teacher_manifest.version}"
    data = _load_data(recipe, f"distill {teacher_id}")
    _check_labels(data.train.labels + data.validation.labels, teacher_manifest.labels, teacher_id)
    teacher_dir = registry.fetch(teacher_id)
    labels = teacher_manifest.labels
    teacher = TextClassifier(teacher_dir, recipe.training.max_length)
    seed_everything(recipe.training.seed)
    if layers is None:
        tokenizer, student = build_model(resolve_base_model(recipe.base_model, registry.storage.uri), labels)
    else:
        tokenizer, student = teacher.tokenizer, make_student(teacher.model, layers)
    epochs = epochs or recipe.training.epochs
    started = time.perf_counter()
    echo(f"soft targets: {teacher_id} on {len(data.train)} training rows")
    teacher_logits = soft_targets(teacher, data.train.texts, echo)
    del teacher  # the student trains without it
    train_loss = _train_student(student, tokenizer, data.train, labels, teacher_logits, recipe.training, epochs, temperature, alpha)
    train_wall_s = round(time.perf_counter() - started, 1)
    with tempfile.TemporaryDirectory() as directory:
        student.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        save_out_of_scope_reference(Path(directory), recipe, data)
        measured = {name: _measure_saved(Path(path), data.validation, labels, recipe) for name, path in (("teacher", teacher_dir), ("student", directory))}
        metrics, comparison = _side_by_side(measured, data.validation.texts, recipe.training.max_length, repeats)
        extra = {
            "optimization": DISTILLED, "student": f"{layers} teacher layers" if layers else (recipe.base_model or PACKAGED_BASE),
            "layers": student.config.num_hidden_layers, "teacher": teacher_id, "temperature": temperature, "alpha": alpha,
            "epochs": epochs, "train_loss": round(train_loss, 5), "train_wall_s": train_wall_s, **comparison,
            "size_mb": {"teacher": _size_mb(teacher_dir), "student": _size_mb(Path(directory))},
            "parameters_m": round(sum(p.numel() for p in student.parameters()) / 1e6, 1),
            PROFILE_KEY: reference_profile(directory, recipe, data).model_dump(mode="json"),
        }
        manifest = registry.register(
            recipe.name, directory, task=recipe.task, base_model=f"{REF_SCHEME}{teacher_id}", labels=labels,
            metrics=metrics, dataset=data.dataset_ref(), recipe=recipe.model_dump(mode="json"),
            # The registry only links versions of one model; a differently named student keeps extra.teacher.
            parent_version=teacher_manifest.version if recipe.name == teacher_manifest.name else None, extra=extra,
        )
    echo(_summary(manifest, measured["teacher"][0]))
    return manifest


def calibrate(
    registry: ModelRegistry, ref: str, floor: float, recipe: Recipe | None = None, *,
    floor_metric: str = "in_scope_accuracy", scores: Sequence[str] = SCORES, echo: Echo = print,
) -> Manifest:
    """Register ``ref`` again with the out-of-scope rule (a score from ``scores`` and a threshold)
    that keeps ``floor_metric`` (in-scope accuracy or out-of-scope recall) at ``floor`` and does
    best on the other metric.

    Each score's threshold is chosen on one half of the validation data and measured on the
    other, both ways, over ``CROSS_FIT_HALVINGS`` seeded halvings; the score with the best
    cross-fit mean wins, and those means (with their spread) are the manifest's in-scope accuracy
    and out-of-scope recall. The registered threshold is then chosen on all the validation data;
    what it scores there, on the rows it was chosen on, is kept in ``extra.in_sample``.
    """
    if floor_metric not in KEPT_METRIC or not 0 < floor <= 1:
        raise ConfigError(f"the floor must be on one of {sorted(KEPT_METRIC)} and in (0, 1]; got {floor_metric} {floor}")
    unknown = sorted(set(scores) - set(SCORES))
    if not scores or unknown:
        raise ConfigError(f"scores must be some of {list(SCORES)}; got {list(scores)}")
    source = registry.manifest(*registry.resolve(ref))
    source_id = f"{source.name}:{source.version}"
    recipe = recipe or _recipe_of(source)
    oos_label = recipe.evaluation.oos_label
    if oos_label is None or oos_label not in source.labels:
        raise ConfigError(f"{source_id}: calibration needs the recipe's evaluation.oos_label to be one of the model's labels ({oos_label!r})")
    data = _load_data(recipe, f"calibrate {source_id}")
    validation = data.validation
    _check_labels(validation.labels, source.labels, source_id)
    if len(set(validation.labels) - {oos_label}) == 0 or oos_label not in validation.labels:
        raise DataError(f"calibrating {source_id} needs both in-scope and {oos_label!r} rows in the validation data")
    source_dir = registry.fetch(source_id)
    classifier = TextClassifier(source_dir, recipe.training.max_length)
    labels, oos_index = classifier.labels, classifier.labels.index(oos_label)
    outputs = classifier.run(validation.texts)
    truth, predicted = label_array(validation.labels, labels), outputs.probabilities.argmax(axis=1)
    reference = classifier.fit_reference(data.train.texts, data.train.labels, oos_label) if NEEDS_REFERENCE & set(scores) else None
    halvings = [_halves(truth, recipe.data.seed + n) for n in range(CROSS_FIT_HALVINGS)]
    compared = {}
    for score in scores:
        values = in_scope_scores(score, outputs.logits, outputs.pooled, reference, oos_index)
        compared[score] = (values, _cross_fit(values, predicted, truth, oos_index, floor_metric, floor, halvings))
    other = KEPT_METRIC[floor_metric]
    best = max(compared, key=lambda score: (compared[score][1][other], compared[score][1][floor_metric]))
    values, cross_fit = compared[best]
    chosen = choose_oos_threshold(oos_tradeoff(values, predicted, truth, oos_index), floor_metric, floor)
    if chosen is None:
        reached = max(point[floor_metric] for point in oos_tradeoff(values, predicted, truth, oos_index))
        raise ConfigError(f"{source_id} reaches {floor_metric} {reached:.4f} at best, under the floor {floor}")
    threshold = chosen["threshold"] if np.isfinite(chosen["threshold"]) else None
    evaluation = recipe.evaluation
    if (best, threshold) == (evaluation.oos_score, evaluation.oos_threshold):
        raise ConfigError(f"{source_id} already answers {oos_label!r} below {best} {threshold}: nothing to register")
    calibrated = recipe.model_copy(update={"evaluation": evaluation.model_copy(update={"oos_score": best, "oos_threshold": threshold})})
    final = apply_threshold(predicted, values, oos_index, threshold)
    in_sample = classification_metrics(confusion_matrix(truth, final, len(labels)), labels, oos_index)
    metrics = in_sample | {
        metric: cross_fit[metric] for metric in ("in_scope_accuracy", "oos_recall", "in_scope_accuracy_std", "oos_recall_std")
    } | {"val_loss": mean_cross_entropy(outputs.logits, truth)}
    extra = {
        "optimization": CALIBRATED, "source": source_id, "floor": {floor_metric: floor}, "oos_score": best,
        "oos_threshold": threshold, "cross_fit": cross_fit,
        "in_sample": {metric: round(in_sample[metric], 4) for metric in ("in_scope_accuracy", "oos_recall")},
        "scores": {score: {key: fit[key] for key in CROSS_FIT_SUMMARY} for score, (_, fit) in compared.items()},
    }
    with tempfile.TemporaryDirectory() as directory:
        model_dir = source_dir
        if best in NEEDS_REFERENCE and threshold is not None:
            model_dir = Path(directory) / "model"
            shutil.copytree(source_dir, model_dir)
            reference.save(model_dir / REFERENCE_FILE)
        manifest = registry.register(
            source.name, model_dir, task=source.task, base_model=f"{REF_SCHEME}{source_id}", labels=labels,
            metrics=metrics, dataset=source.dataset, recipe=calibrated.model_dump(mode="json"),
            parent_version=source.version, extra=extra,
        )
    echo(_calibration_summary(manifest, source, compared, floor_metric))
    return manifest


CROSS_FIT_SUMMARY = ("in_scope_accuracy", "in_scope_accuracy_std", "oos_recall", "oos_recall_std")


def _halves(truth: np.ndarray, seed: int) -> np.ndarray:
    """A seeded mask splitting every label's rows in two (an odd row goes to either half)."""
    rng = np.random.default_rng(seed)
    first_half = np.zeros(len(truth), dtype=bool)
    for label in np.unique(truth):
        rows = rng.permutation(np.flatnonzero(truth == label))
        first_half[rows[: (len(rows) + int(rng.integers(2))) // 2]] = True
    return first_half


def _cross_fit(
    scores: np.ndarray, predicted: np.ndarray, truth: np.ndarray, oos_index: int, floor_metric: str, floor: float,
    halvings: list[np.ndarray],
) -> dict[str, Any]:
    """For each halving, choose the threshold on one half and measure it on the other, both ways:
    the mean, standard deviation and range of those measurements."""
    folds, under_floor = [], 0
    for first_half in halvings:
        for choose_on in (first_half, ~first_half):
            out_of_scope = truth[choose_on] == oos_index
            if not out_of_scope.any() or out_of_scope.all():
                raise DataError("a cross-fit half lacks in-scope or out-of-scope rows; the validation data needs more of both")
            curve = oos_tradeoff(scores[choose_on], predicted[choose_on], truth[choose_on], oos_index)
            point = choose_oos_threshold(curve, floor_metric, floor)
            if point is None:  # a half that misses the floor everywhere falls back to its closest threshold
                under_floor += 1
                point = max(curve, key=lambda p: (p[floor_metric], -p["threshold"]))
            held_out = ~choose_on
            measured = oos_tradeoff(scores[held_out], predicted[held_out], truth[held_out], oos_index, np.array([point["threshold"]]))[0]
            folds.append(measured)
    summary: dict[str, Any] = {
        "halvings": len(halvings), "halves_under_floor": under_floor,
        "thresholds": [round(fold["threshold"], 5) if np.isfinite(fold["threshold"]) else None for fold in folds],
    }
    for metric in ("in_scope_accuracy", "oos_recall"):
        values = [fold[metric] for fold in folds]
        summary[metric] = round(float(np.mean(values)), 4)
        summary[f"{metric}_std"] = round(float(np.std(values)), 4)
        summary[f"{metric}_range"] = [round(min(values), 4), round(max(values), 4)]
    return summary


def _calibration_summary(manifest: Manifest, source: Manifest, compared: dict[str, Any], floor_metric: str) -> str:
    extra, metrics = manifest.extra, manifest.metrics
    lines = [
        f"registered {manifest.name}:{manifest.version}: {manifest.recipe['evaluation']['oos_label']!r} below {extra['oos_score']} "
        f"{extra['oos_threshold']}; cross-fit over {CROSS_FIT_HALVINGS} halvings (chosen on one half, measured on the other): "
        f"in_scope_accuracy {metrics['in_scope_accuracy']:.4f} ± {metrics['in_scope_accuracy_std']:.4f}, "
        f"oos_recall {metrics['oos_recall']:.4f} ± {metrics['oos_recall_std']:.4f} "
        f"(in-sample, on the rows it was chosen on: {extra['in_sample']['in_scope_accuracy']:.4f}, {extra['in_sample']['oos_recall']:.4f}; "
        f"{source.name}:{source.version} had {source.metrics.get('in_scope_accuracy', float('nan')):.4f}, {source.metrics.get('oos_recall', float('nan')):.4f})",
        f"scores compared at the {floor_metric} floor (cross-fit mean ± std):",
    ]
    for score, (_, fit) in compared.items():
        lines.append(
            f"  {score:<12} in_scope_accuracy {fit['in_scope_accuracy']:.4f} ± {fit['in_scope_accuracy_std']:.4f}  "
            f"oos_recall {fit['oos_recall']:.4f} ± {fit['oos_recall_std']:.4f}"
        )
    return "\n".join(lines)


def _summary(manifest: Manifest, source_metrics: dict[str, Any]) -> str:
    extra = manifest.extra
    before, after = extra["latency_ms"]
    scores = ", ".join(
        f"{key} {manifest.metrics[key]:.4f} (was {source_metrics[key]:.4f})" if isinstance(source_metrics.get(key), (int, float))
        else f"{key} {manifest.metrics[key]:.4f}"
        for key in ("accuracy", "macro_f1", "in_scope_accuracy", "oos_recall") if key in manifest.metrics
    )
    timings = ", ".join(f"{batch} {extra['latency_ms'][before][batch]} -> {extra['latency_ms'][after][batch]} ms" for batch in extra["speedup"])
    return (
        f"registered {manifest.name}:{manifest.version} ({extra['optimization']}): {scores}; p50 {timings} "
        f"(speedup {extra['speedup']}); size {extra['size_mb'][before]} -> {extra['size_mb'][after]} MB"
    )


# -- command line -------------------------------------------------------------------------------


def calibration_floor(min_in_scope_accuracy: float | None, min_oos_recall: float | None) -> tuple[str, float]:
    """(metric, floor) from the two command-line options, exactly one of which is given."""
    if (min_in_scope_accuracy is None) == (min_oos_recall is None):
        raise ConfigError("give exactly one of --min-in-scope-accuracy and --min-oos-recall")
    return ("in_scope_accuracy", min_in_scope_accuracy) if min_oos_recall is None else ("oos_recall", min_oos_recall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    quantize_cmd = commands.add_parser("quantize", help="register a dynamic-int8 version of a model")
    quantize_cmd.add_argument("--model", required=True, help="registry://NAME@ALIAS or NAME:VERSION")
    quantize_cmd.add_argument("--config", help="recipe whose validation data to measure on (default: the model's own)")
    distill_cmd = commands.add_parser("distill", help="train and register a smaller student on a teacher's soft targets")
    distill_cmd.add_argument("--teacher", required=True, help="registry://NAME@ALIAS or NAME:VERSION")
    distill_cmd.add_argument("--config", required=True, help="training recipe (configs/train/*.yaml)")
    distill_cmd.add_argument(
        "--layers", type=int, help="student = the teacher cut to this many encoder layers (default: the recipe's base model, new head)"
    )
    distill_cmd.add_argument("--epochs", type=int, help="training epochs (default: the recipe's)")
    distill_cmd.add_argument("--temperature", type=float, default=2.0, help="softmax temperature of the soft targets")
    distill_cmd.add_argument("--alpha", type=float, default=0.5, help="weight of the hard-label loss (1 - alpha: soft)")
    calibrate_cmd = commands.add_parser("calibrate", help="register a version with a chosen out-of-scope threshold")
    calibrate_cmd.add_argument("--model", required=True, help="registry://NAME@ALIAS or NAME:VERSION")
    calibrate_cmd.add_argument("--config", help="recipe whose validation data to choose on (default: the model's own)")
    floors = calibrate_cmd.add_mutually_exclusive_group(required=True)
    floors.add_argument("--min-in-scope-accuracy", type=float, help="in-scope accuracy to keep, e.g. 0.96; best out-of-scope recall under it")
    floors.add_argument("--min-oos-recall", type=float, help="out-of-scope recall to reach, e.g. 0.8; best in-scope accuracy under it")
    calibrate_cmd.add_argument(
        "--score", action="append", choices=SCORES, help=f"out-of-scope score to try (repeatable; default: all of {', '.join(SCORES)})"
    )
    for command in (quantize_cmd, distill_cmd, calibrate_cmd):
        command.add_argument("--storage", help="registry storage URI (default: $BATON_STORAGE, else the recipe's)")
    for command in (quantize_cmd, distill_cmd):
        command.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="timed runs per latency figure")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return exit_code(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    recipe = load_recipe(args.config) if args.config else None
    default_storage = recipe.storage if recipe else Recipe.model_fields["storage"].default
    registry = ModelRegistry(Storage(args.storage or os.environ.get("BATON_STORAGE") or default_storage))
    if args.command == "quantize":
        quantize(registry, args.model, recipe, repeats=args.repeats)
    elif args.command == "calibrate":
        floor_metric, floor = calibration_floor(args.min_in_scope_accuracy, args.min_oos_recall)
        calibrate(registry, args.model, floor, recipe, floor_metric=floor_metric, scores=args.score or SCORES)
    else:
        distill(
            registry, args.teacher, recipe, args.layers, args.epochs,
            temperature=args.temperature, alpha=args.alpha, repeats=args.repeats,
        )

if __name__ == "__main__":
    sys.exit(main())
