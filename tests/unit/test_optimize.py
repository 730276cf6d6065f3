"""train.optimize on a tiny random BERT with the packaged MiniLM tokenizer: int8 quantisation,
distillation into fewer layers, loading both kinds back, latency and reference errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train.optimize as optimize

from cluster.errors import ConfigError, NotFound
from cluster.registry import ModelRegistry
from cluster.storage import Storage
from train.data import DataError, Examples
from actors.classifier_io import OutOfScopeRule, Outputs, TextClassifier, open_classifier
from actors.out_of_scope import REFERENCE_FILE, in_scope_scores
from actors.specialists.classify import ClassifySpecialist
from train.optimize import (
    CALIBRATED,
    DISTILLED,
    INT8,
    calibrate,
    distill,
    distillation_loss,
    load_classifier,
    main,
    make_student,
    measure_latency,
    quantize,
    soft_targets,
)
from train.recipe import Recipe

from tests.unit.classifier_doubles import LABELS, NEGATIVE, POSITIVE, build_tiny_classifier


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def float_model_dir(tmp_path_factory) -> Path:
    """A 4-layer BERT classifier with the MiniLM tokenizer, trained a few steps so that its
    predictions are decisive (a random one's logits tie, and int8 noise flips them)."""
    return build_tiny_classifier(tmp_path_factory.mktemp("float"))


@pytest.fixture
def recipe(tmp_path) -> Recipe:
    labelled = [(text, "POSITIVE") for text in POSITIVE] + [(text, "NEGATIVE") for text in NEGATIVE]
    rows = [{"text": f"{text} {n}", "label": label} for n in range(3) for text, label in labelled]
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return Recipe.model_validate({
        "name": "tiny",
        "storage": str(tmp_path / "store"),
        "data": {"train": str(data), "validation_fraction": 0.3},
        "training": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "max_length": 16, "learning_rate": 1e-3},
    })


@pytest.fixture
def registry(recipe, float_model_dir) -> ModelRegistry:
    """``tiny:v1`` (alias champion): the trained tiny classifier, with the recipe it came from."""
    registry = ModelRegistry(Storage(recipe.storage))
    registry.register(
        "tiny", float_model_dir, task="sequence-classification", base_model="random", labels=LABELS,
        metrics={"accuracy": 1.0}, dataset={"uri": recipe.data.train, "sha256": "0" * 64, "rows": 30},
        recipe=recipe.model_dump(mode="json"),
    )
    registry.set_alias("tiny", "v1", "champion")
    return registry


def predict(directory: Path, texts: list[str]) -> tuple[list[str], object]:
    tokenizer, model, labels = load_classifier(directory)
    with torch.inference_mode():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    return [labels[i] for i in logits.argmax(-1).tolist()], model


def test_quantize_registers_an_int8_child_version(registry):
    manifest = quantize(registry, "registry://tiny@champion", repeats=2, echo=quiet)

    assert (manifest.name, manifest.version, manifest.parent_version) == ("tiny", "v2", "v1")
    assert manifest.base_model == "registry://tiny:v1" and manifest.task == "sequence-classification"
    assert manifest.extra["optimization"] == INT8 and manifest.extra["source"] == "tiny:v1"
    assert set(manifest.extra["latency_ms"]) == {"float32", "int8"}
    assert set(manifest.extra["latency_ms"]["int8"]) == set(manifest.extra["speedup"]) == {"batch_1", "batch_32"}
    assert manifest.extra["size_mb"]["int8"] < manifest.extra["size_mb"]["float32"]
    assert manifest.metrics["accuracy"] > 0.9 and manifest.metrics["macro_f1"] > 0.9 and manifest.extra["agreement"] > 0.9
    assert "quantized.pt" in manifest.files and "model.safetensors" not in manifest.files


def test_int8_model_is_quantised_and_agrees_with_float(registry):
    quantize(registry, "tiny:v1", repeats=1, echo=quiet)
    texts = [f"{text} {extra}" for text in POSITIVE + NEGATIVE for extra in ("", "indeed", "really so")]

    float_labels, float_model = predict(registry.fetch("tiny:v1"), texts)
    int8_labels, int8_model = predict(registry.fetch("tiny:v2"), texts)

    linear = [m for m in int8_model.modules() if isinstance(m, torch.nn.Linear)]
    dynamic = [m for m in int8_model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert not linear and len(dynamic) == len([m for m in float_model.modules() if isinstance(m, torch.nn.Linear)])
    assert set(float_labels) == set(LABELS)
    assert sum(a == b for a, b in zip(float_labels, int8_labels)) >= 0.9 * len(texts)


def test_load_classifier_reads_both_kinds_in_eval_mode(registry):
    quantize(registry, "tiny:v1", repeats=1, echo=quiet)
    for version in ("v1", "v2"):
        tokenizer, model, labels = load_classifier(registry.fetch(f"tiny:{version}"))
        assert labels == LABELS and not model.training and tokenizer.pad_token_id is not None


def test_quantize_refuses_an_int8_source_and_missing_data(registry, recipe):
    quantize(registry, "tiny:v1", repeats=1, echo=quiet)
    with pytest.raises(ConfigError, match="has int8 weights already"):
        quantize(registry, "tiny:v2", echo=quiet)
    Path(recipe.data.train).unlink()
    with pytest.raises(DataError, match="cannot re-measure tiny:v1.*no such file"):
        quantize(registry, "tiny:v1", echo=quiet)


def test_distill_registers_a_smaller_student(registry, recipe):
    manifest = distill(registry, "tiny@champion", recipe, layers=2, epochs=1, repeats=1, echo=quiet)

    assert (manifest.version, manifest.parent_version) == ("v2", "v1")
    assert manifest.extra["optimization"] == DISTILLED and manifest.extra["layers"] == 2 and manifest.extra["teacher"] == "tiny:v1"
    assert set(manifest.extra["latency_ms"]) == {"teacher", "student"}
    assert 0 <= manifest.metrics["accuracy"] <= 1 and "macro_f1" in manifest.metrics
    _, model, labels = load_classifier(registry.fetch("tiny:v2"))
    assert labels == LABELS and model.config.num_hidden_layers == 2 and len(model.bert.encoder.layer) == 2


def build_small_base(directory: Path) -> Path:
    """A base checkpoint unlike the teacher (2 layers, 16 wide, no classifier head), to show that
    a student of another shape learns from the teacher's logits alone."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from actors.embedding import default_embedding_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_embedding_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
    )
    torch.manual_seed(1)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_distill_into_the_recipes_base_model(registry, recipe, tmp_path):
    base = build_small_base(tmp_path / "base")
    student_recipe = recipe.model_copy(update={"base_model": str(base)})

    manifest = distill(registry, "tiny:v1", student_recipe, epochs=1, repeats=1, echo=quiet)

    extra = manifest.extra
    assert (manifest.version, manifest.parent_version, manifest.base_model) == ("v2", "v1", "registry://tiny:v1")
    assert extra["student"] == str(base) and extra["layers"] == 2 and extra["teacher"] == "tiny:v1"
    assert extra["parameters_m"] < 1.0 and "profile" in extra
    _, model, labels = load_classifier(registry.fetch("tiny:v2"))
    assert labels == LABELS and (model.config.hidden_size, model.config.num_hidden_layers) == (16, 2)


def test_student_learns_each_rows_soft_target_not_its_label(tmp_path):
    """A teacher that contradicts every label, with no weight on the labels: a student that ends
    up agreeing with the teacher row by row got each row's own logits."""
    from transformers import AutoTokenizer

    texts = POSITIVE + NEGATIVE
    labels = ["POSITIVE"] * len(POSITIVE) + ["NEGATIVE"] * len(NEGATIVE)
    contrary = np.array([[4.0, -4.0]] * len(POSITIVE) + [[-4.0, 4.0]] * len(NEGATIVE), dtype=np.float32)
    tokenizer, student = optimize.build_model(str(build_small_base(tmp_path / "base")), LABELS)
    training = Recipe.model_validate({"name": "t", "data": {"train": "x.jsonl"}}).training.model_copy(
        update={"batch_size": 4, "learning_rate": 3e-3, "warmup_ratio": 0.0, "max_length": 16}
    )

    optimize._train_student(student, tokenizer, Examples(texts, labels), LABELS, contrary, training, 25, 1.0, 0.0)

    with torch.inference_mode():
        predicted = student(**AutoTokenizer.from_pretrained(tmp_path / "base")(texts, padding=True, return_tensors="pt")).logits.argmax(-1)
    assert [LABELS[i] for i in predicted.tolist()] == ["NEGATIVE"] * len(POSITIVE) + ["POSITIVE"] * len(NEGATIVE)


def test_student_starts_from_the_teacher_layers(registry):
    _, teacher, _ = load_classifier(registry.fetch("tiny:v1"))
    student = make_student(teacher, 2)

    # 4 -> 2 keeps teacher layers 0 and 2.
    assert torch.equal(student.bert.encoder.layer[1].output.dense.weight, teacher.bert.encoder.layer[2].output.dense.weight)
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    with pytest.raises(ConfigError, match="layers must be from 1 to 3"):
        make_student(teacher, 4)


def test_distillation_loss_mixes_hard_and_soft_targets():
    student, teacher, labels = torch.tensor([[2.0, -1.0], [0.5, 0.3]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])

    hard = torch.nn.functional.cross_entropy(student, labels)
    assert torch.isclose(distillation_loss(student, teacher, labels, alpha=1.0), hard)
    smoothed = torch.nn.functional.cross_entropy(student, labels, label_smoothing=0.1)
    assert torch.isclose(distillation_loss(student, teacher, labels, alpha=1.0, label_smoothing=0.1), smoothed) and smoothed != hard
    assert distillation_loss(teacher, teacher, labels, alpha=0.0).abs() < 1e-6
    assert distillation_loss(student, teacher, labels, alpha=0.0) > 0


def test_measure_latency_returns_a_positive_median(registry):
    tokenizer, model, _ = load_classifier(registry.fetch("tiny:v1"))
    assert measure_latency(tokenizer, model, POSITIVE, batch_size=3, repeats=2) > 0


@pytest.mark.parametrize("ref", ["tiny:v9", "missing:v1", "tiny@staging", "registry://missing@champion"])
def test_unknown_references_raise_not_found(registry, recipe, ref):
    with pytest.raises(NotFound):
        quantize(registry, ref, echo=quiet)
    with pytest.raises(NotFound):
        distill(registry, ref, recipe, echo=quiet)


def test_command_line(registry, recipe, capsys):
    assert main(["quantize", "--model", "tiny:v1", "--storage", recipe.storage, "--repeats", "1"]) == 0
    assert "registered tiny:v2 (dynamic-int8)" in capsys.readouterr().out
    assert main(["quantize", "--model", "tiny:v7", "--storage", recipe.storage]) == 2
    assert "tiny:v7 not found" in capsys.readouterr().err


# Calibration tests use NEGATIVE as a stand-in for the out-of-scope label of an intent model,
# and a test double for the model's validation probabilities, so that the curve is known.
IN_SCOPE_TOPS = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.45, 0.4]  # P(POSITIVE) of POSITIVE rows; last two wrong
OOS_TOPS = [0.1, 0.2, 0.3, 0.55, 0.6, 0.62, 0.7, 0.8, 0.9, 0.95]  # P(POSITIVE) of out-of-scope rows; 3 right at 0.0


def with_oos_label(recipe: Recipe, threshold: float = 0.0) -> Recipe:
    evaluation = recipe.evaluation.model_copy(update={"oos_label": "NEGATIVE", "oos_threshold": threshold})
    return recipe.model_copy(update={"evaluation": evaluation})


def two_class(positive: list[float]) -> np.ndarray:
    return np.array([[1 - p, p] for p in positive])


@pytest.fixture
def known_curve(monkeypatch):
    """A test double for the model's outputs on the validation rows, so the curve is known."""
    probabilities = two_class(IN_SCOPE_TOPS + OOS_TOPS)
    outputs = Outputs(np.log(probabilities), probabilities, np.zeros((len(probabilities), 4)))
    monkeypatch.setattr(TextClassifier, "run", lambda self, texts, batch_size=256: outputs)
    # The fixture's validation rows stand for these 20: ten POSITIVE (in scope), ten NEGATIVE (out of scope).
    monkeypatch.setattr(
        optimize, "_load_data",
        lambda recipe, purpose: SimpleNamespace(validation=Examples(["x"] * 20, ["POSITIVE"] * 10 + ["NEGATIVE"] * 10), train=None),
    )


def test_calibrate_registers_the_best_threshold_at_the_floor(registry, recipe, known_curve):
    # In-scope accuracy 0.8 with the class alone; keeping 0.7 allows losing the 0.6 row: between
    # 0.62 and 0.65 out-of-scope recall is 6/10 (3 answered NEGATIVE, 3 more under the threshold).
    manifest = calibrate(registry, "tiny@champion", 0.7, with_oos_label(recipe), scores=["probability"], echo=quiet)

    source = registry.manifest("tiny", "v1")
    assert (manifest.version, manifest.parent_version, manifest.files) == ("v2", "v1", source.files)
    assert manifest.extra["optimization"] == CALIBRATED and manifest.extra["source"] == "tiny:v1"
    assert manifest.extra["oos_threshold"] == manifest.recipe["evaluation"]["oos_threshold"] == pytest.approx(0.635)
    assert manifest.recipe["evaluation"]["oos_label"] == "NEGATIVE" and manifest.recipe["evaluation"]["oos_score"] == "probability"
    assert manifest.extra["in_sample"] == {"in_scope_accuracy": 0.7, "oos_recall": 0.6}
    # The headline figures are the cross-fit's, measured on halves the threshold was not chosen on.
    cross_fit = manifest.extra["cross_fit"]
    assert (manifest.metrics["in_scope_accuracy"], manifest.metrics["oos_recall"]) == (cross_fit["in_scope_accuracy"], cross_fit["oos_recall"])
    assert manifest.metrics["in_scope_accuracy_std"] == cross_fit["in_scope_accuracy_std"] >= 0
    assert len(cross_fit["thresholds"]) == 2 * cross_fit["halvings"] == 20
    assert manifest.metrics["val_loss"] > 0
    assert OutOfScopeRule.of(manifest) == OutOfScopeRule("NEGATIVE", pytest.approx(0.635))


def test_calibrate_to_an_out_of_scope_recall_floor(registry, recipe, known_curve):
    # Recall 0.6 first needs a threshold above 0.62, which costs the 0.6 in-scope row: 0.7.
    manifest = calibrate(registry, "tiny:v1", 0.6, with_oos_label(recipe), floor_metric="oos_recall", scores=["probability"], echo=quiet)
    assert manifest.extra["floor"] == {"oos_recall": 0.6}
    assert manifest.extra["in_sample"] == {"in_scope_accuracy": 0.7, "oos_recall": 0.6}


def test_calibrate_refuses_what_it_cannot_do(registry, recipe, known_curve):
    with pytest.raises(ConfigError, match="calibration needs the recipe's evaluation.oos_label"):
        calibrate(registry, "tiny:v1", 0.9, recipe, echo=quiet)
    with pytest.raises(ConfigError, match=r"the floor must be on one of .* and in \(0, 1\]"):
        calibrate(registry, "tiny:v1", 1.5, with_oos_label(recipe), echo=quiet)
    with pytest.raises(ConfigError, match="scores must be some of"):
        calibrate(registry, "tiny:v1", 0.7, with_oos_label(recipe), scores=["loudness"], echo=quiet)
    with pytest.raises(ConfigError, match="reaches in_scope_accuracy 0.8000 at best, under the floor 0.9"):
        calibrate(registry, "tiny:v1", 0.9, with_oos_label(recipe), scores=["probability"], echo=quiet)
    with pytest.raises(ConfigError, match="already answers 'NEGATIVE' below probability 0.635"):
        calibrate(registry, "tiny:v1", 0.7, with_oos_label(recipe, 0.635), scores=["probability"], echo=quiet)
    assert [m.version for m in registry.versions("tiny")] == ["v1"]


def test_calibrate_needs_both_kinds_of_validation_rows(registry, recipe):
    in_scope_only = Path(recipe.storage).parent / "in_scope_only.jsonl"
    in_scope_only.write_text('{"text": "fine", "label": "POSITIVE"}\n' * 4)
    no_oos_rows = with_oos_label(recipe).model_copy(update={"data": recipe.data.model_copy(update={"validation": str(in_scope_only)})})
    with pytest.raises(DataError, match="needs both in-scope and 'NEGATIVE' rows in the validation data"):
        calibrate(registry, "tiny:v1", 0.7, no_oos_rows, echo=quiet)


def test_cross_fit_measures_each_threshold_on_the_other_half():
    # Half A picks 0.675 (its out-of-scope row is at 0.65), half B picks 0.575 (its row is at 0.55).
    scores = np.array([0.9, 0.7, 0.65, 0.9, 0.6, 0.55])
    truth, predicted = np.array([1, 1, 0, 1, 1, 0]), np.ones(6, dtype=int)
    first_half = np.array([True, True, True, False, False, False])
    fit = optimize._cross_fit(scores, predicted, truth, 0, "in_scope_accuracy", 1.0, [first_half])
    # 0.675 on B: loses the 0.6 in-scope row, catches 0.55; 0.575 on A: keeps both, misses 0.65.
    assert fit == {
        "halvings": 1, "halves_under_floor": 0, "thresholds": [0.675, 0.575],
        "in_scope_accuracy": 0.75, "in_scope_accuracy_std": 0.25, "in_scope_accuracy_range": [0.5, 1.0],
        "oos_recall": 0.5, "oos_recall_std": 0.5, "oos_recall_range": [0.0, 1.0],
    }
    twice = optimize._cross_fit(scores, predicted, truth, 0, "in_scope_accuracy", 1.0, [first_half, ~first_half])
    assert twice["thresholds"] == [0.675, 0.575, 0.575, 0.675]
    with pytest.raises(DataError, match="a cross-fit half lacks in-scope or out-of-scope rows"):
        optimize._cross_fit(scores, predicted, truth, 0, "in_scope_accuracy", 1.0, [np.array([True, True, True, True, True, False])])


def test_cross_fit_half_under_the_floor_falls_back_to_its_closest_threshold():
    # Half A cannot keep in-scope accuracy 1.0 (its first row is answered wrongly at any threshold): the class alone.
    probabilities = two_class([0.45, 0.9, 0.2, 0.9, 0.8, 0.6])
    scores, predicted = probabilities.max(axis=1), probabilities.argmax(axis=1)
    fit = optimize._cross_fit(scores, predicted, np.array([1, 1, 0, 1, 1, 0]), 0, "in_scope_accuracy", 1.0, [np.array([True, True, True, False, False, False])])
    # The class alone on B misses its 0.6 out-of-scope row; 0.7 (chosen on B) on A changes nothing there.
    assert (fit["thresholds"], fit["in_scope_accuracy"], fit["oos_recall"], fit["halves_under_floor"]) == ([None, 0.7], 0.75, 0.5, 1)


def test_calibrate_compares_every_score_and_serves_the_winner(registry, recipe):
    """No test double: the tiny model's own outputs; NEGATIVE stands in for out-of-scope, and the
    distance scores' reference is fitted on the POSITIVE training rows."""
    manifest = calibrate(registry, "tiny:v1", 0.5, with_oos_label(recipe), echo=quiet)
    assert set(manifest.extra["scores"]) == {"probability", "energy", "mahalanobis", "neighbours"}
    best = manifest.extra["oos_score"]
    other = manifest.extra["scores"]
    assert other[best]["oos_recall"] == max(fit["oos_recall"] for fit in other.values())
    files = set(manifest.files)
    # The reference ships only when the rule needs it: a distance score with a threshold.
    assert (REFERENCE_FILE in files) == (best in {"mahalanobis", "neighbours"} and manifest.extra["oos_threshold"] is not None)



def test_served_model_applies_a_distance_rule_with_its_shipped_reference(registry, recipe, tmp_path):
    """A version whose rule is a Mahalanobis threshold (half the inputs fall under it) serves
    exactly what the rule computes on the model's own pooled outputs, row by row."""
    classifier = TextClassifier(registry.fetch("tiny:v1"), 32)
    reference = classifier.fit_reference(POSITIVE * 3, ["POSITIVE"] * len(POSITIVE) * 3, "NEGATIVE")
    texts = [f"{text} {extra}" for text in POSITIVE + NEGATIVE for extra in ("", "indeed")]
    outputs = classifier.run(texts)
    scores = in_scope_scores("mahalanobis", outputs.logits, outputs.pooled, reference, LABELS.index("NEGATIVE"))
    threshold = float(np.median(scores))
    model_dir = tmp_path / "model"
    shutil.copytree(registry.fetch("tiny:v1"), model_dir)
    reference.save(model_dir / REFERENCE_FILE)
    evaluation = {"oos_label": "NEGATIVE", "oos_score": "mahalanobis", "oos_threshold": threshold}
    served_recipe = recipe.model_copy(update={"evaluation": recipe.evaluation.model_copy(update=evaluation)})
    registry.register(
        "tiny", model_dir, task="sequence-classification", base_model="registry://tiny:v1", labels=LABELS, metrics={},
        dataset={"uri": recipe.data.train, "sha256": "0" * 64, "rows": 30}, recipe=served_recipe.model_dump(mode="json"),
        parent_version="v1",
    )
    served = open_classifier("registry://tiny:v2", recipe.storage)
    assert served.out_of_scope == OutOfScopeRule("NEGATIVE", threshold, "mahalanobis")
    _, label_ids, _ = served.classify(texts)
    expected = np.where(scores < threshold, LABELS.index("NEGATIVE"), outputs.probabilities.argmax(axis=1))
    assert label_ids.tolist() == expected.tolist()
    assert (scores < threshold).sum() == len(texts) // 2

    # Its int8 version keeps the reference and the rule, and is measured under them.
    int8 = quantize(registry, "tiny:v2", served_recipe, repeats=1, echo=quiet)
    assert REFERENCE_FILE in int8.files and OutOfScopeRule.of(int8) == served.out_of_scope
    _, int8_ids, _ = open_classifier(f"registry://tiny:{int8.version}", recipe.storage).classify(texts)
    assert np.mean(int8_ids == label_ids) >= 0.75


def test_int8_is_known_by_its_files_after_calibration(registry, recipe, known_curve):
    quantize(registry, "tiny:v1", repeats=1, echo=quiet)
    calibrate(registry, "tiny:v2", 0.7, with_oos_label(recipe), scores=["probability"], echo=quiet)
    with pytest.raises(ConfigError, match="tiny:v3 has int8 weights already"):
        quantize(registry, "tiny:v3", echo=quiet)


def test_served_model_applies_its_manifest_out_of_scope_rule(registry, recipe):
    texts = [f"{text} {extra}" for text in POSITIVE + NEGATIVE for extra in ("", "indeed", "well")]
    probabilities = TextClassifier(registry.fetch("tiny:v1"), 32)(texts)
    positive_tops = sorted(float(p.max()) for p in probabilities if LABELS[int(p.argmax())] == "POSITIVE")
    threshold = (positive_tops[0] + positive_tops[-1]) / 2  # some POSITIVE answers fall under it, some do not
    registry.register(
        "tiny", registry.fetch("tiny:v1"), task="sequence-classification", base_model="registry://tiny:v1", labels=LABELS,
        metrics={}, dataset={"uri": recipe.data.train, "sha256": "0" * 64, "rows": 30},
        recipe=with_oos_label(recipe, threshold).model_dump(mode="json"), parent_version="v1",
    )
    assert OutOfScopeRule.of(registry.manifest("tiny", "v1")) is None
    assert OutOfScopeRule.of(registry.manifest("tiny", "v2")) == OutOfScopeRule("NEGATIVE", threshold)

    served = {}
    for version in ("v1", "v2"):
        specialist = ClassifySpecialist({"model": f"registry://tiny:{version}", "storage": recipe.storage, "max_length": 32})
        specialist.load()
        served[version] = specialist.predict(texts, [{"top_k": 1}] * len(texts))
    argmax = [LABELS[int(p.argmax())] for p in probabilities]
    assert [result["label"] for result in served["v1"]] == argmax
    assert [result["label"] for result in served["v2"]] == [
        "NEGATIVE" if p.max() < threshold else label for p, label in zip(probabilities, argmax)
    ]
    assert served["v2"] != served["v1"]
    # An out-of-scope answer lists the out-of-scope probability next to the top label's.
    overruled = [result for result, label in zip(served["v2"], argmax) if result["label"] != label]
    assert overruled and all(set(result["scores"]) == {"NEGATIVE", "POSITIVE"} for result in overruled)


def test_served_model_truncates_as_it_was_trained_unless_overridden(registry, recipe):
    for params, expected in (({}, recipe.training.max_length), ({"max_length": 48}, 48)):
        specialist = ClassifySpecialist({"model": "registry://tiny:v1", "storage": recipe.storage, **params})
        specialist.load()
        assert specialist._classifier.max_length == expected


def test_halves_split_every_label_evenly_and_by_seed():
    truth = np.array([0] * 5 + [1] * 4 + [2])
    half = optimize._halves(truth, 3)
    for label, rows in ((0, 5), (1, 4), (2, 1)):
        assert abs(2 * int(half[truth == label].sum()) - rows) <= 1
    assert np.array_equal(half, optimize._halves(truth, 3))
    assert any(not np.array_equal(half, optimize._halves(truth, seed)) for seed in range(4, 10))


def test_calibration_floor_takes_exactly_one_option(registry, recipe, capsys):
    assert optimize.calibration_floor(0.96, None) == ("in_scope_accuracy", 0.96)
    assert optimize.calibration_floor(None, 0.8) == ("oos_recall", 0.8)
    for both_or_neither in ((0.96, 0.8), (None, None)):
        with pytest.raises(ConfigError, match="exactly one of --min-in-scope-accuracy and --min-oos-recall"):
            optimize.calibration_floor(*both_or_neither)
    # argparse refuses both at once before anything runs.
    with pytest.raises(SystemExit):
        main(["calibrate", "--model", "tiny:v1", "--min-oos-recall", "0.8", "--min-in-scope-accuracy", "0.9", "--storage", recipe.storage])
    assert "not allowed with argument" in capsys.readouterr().err


def test_run_without_pooled_outputs_gives_the_same_logits_in_row_order(registry):
    """Length-sorted batches come back in the callers' order, whether or not pooled outputs are kept."""
    classifier = TextClassifier(registry.fetch("tiny:v1"), 32)
    texts = [f"{text} {'very ' * (n % 4)}" for n, text in enumerate(POSITIVE + NEGATIVE)]
    full = classifier.run(texts, batch_size=3)
    logits_only = classifier.run(texts, batch_size=3, pooled=False)
    assert logits_only.pooled is None and full.pooled.shape[0] == len(texts)
    np.testing.assert_allclose(logits_only.logits, full.logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits_only.logits, classifier.forward(texts).logits, rtol=1e-4, atol=1e-5)


def test_soft_targets_come_in_slices_with_progress_and_in_row_order(registry):
    classifier = TextClassifier(registry.fetch("tiny:v1"), 32)
    texts = [f"{text} {'very ' * (n % 4)}" for n, text in enumerate(POSITIVE + NEGATIVE)]
    lines: list[str] = []
    logits = soft_targets(classifier, texts, lines.append, parts=3)
    np.testing.assert_allclose(logits, classifier.forward(texts).logits, rtol=1e-4, atol=1e-5)
    assert len(lines) == 3 and lines[-1].startswith("soft targets [####################]")
    assert f" {len(texts)}/{len(texts)} rows" in lines[-1]
