"""train.profile: the reference profile built at registration (shapes, size, JSON round trip),
attached by finetune's register_result, and the classify specialist's features from it, on a
tiny random BERT with the packaged MiniLM tokenizer."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from actors.classifier_io import TextClassifier
from actors.drift import Profile, profile_of
from actors.embedding import default_embedding_model_path
from actors.specialists.classify import ClassifySpecialist
from cluster.registry import ModelRegistry
from cluster.storage import Storage
from train.data import load_dataset
from train.finetune import register_result
from train.profile import build_profile, length_profile, reference_profile
from train.recipe import Recipe

LABELS = ["NEGATIVE", "POSITIVE"]
TEXTS = ["a wonderful film", "great acting and story", "a dreadful film", "boring and far too long", "i hated the ending", "superb"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(default_embedding_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)},
    )
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny")
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def recipe(tmp_path) -> Recipe:
    rows = [{"text": f"{text} {n}", "label": LABELS[i % 2]} for n in range(10) for i, text in enumerate(TEXTS)]
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return Recipe.model_validate({
        "name": "tiny", "storage": str(tmp_path / "store"),
        "data": {"train": str(data), "validation_fraction": 0.4},
        "training": {"max_length": 16},
    })


class DirectoryCheckpoint:
    """What register_result needs of a Ray checkpoint: a directory holding ``model/``."""

    def __init__(self, directory: Path):
        self.directory = directory

    @contextmanager
    def as_directory(self):
        yield str(self.directory)


def synthetic_profile(seed: int = 0) -> tuple[Profile, np.ndarray]:
    """A profile of MiniLM-sized pooled outputs (d=384) with 150 labels, and its validation rows."""
    rng = np.random.default_rng(seed)
    scales = np.linspace(3.0, 0.1, 384)
    train, validation = rng.normal(size=(5000, 384)) * scales, rng.normal(size=(3000, 384)) * scales
    profile = build_profile(
        train_texts=["x" * int(n) for n in rng.integers(5, 120, 5000)], train_pooled=train, validation_pooled=validation,
        predicted=[f"intent_{i}" for i in rng.integers(0, 150, 3000)], confidences=rng.beta(8, 1, 3000), seed=seed,
    )
    return profile, validation


def test_profile_holds_a_k8_projection_and_bounded_samples():
    profile, validation = synthetic_profile()
    assert profile.dimensions == 8 and len(profile.projection.mean) == 384
    assert len(profile.reference) == 1000 and len(profile.confidences) == 2000
    assert (profile.train_rows, profile.validation_rows) == (5000, 3000) and sum(profile.labels.values()) == 3000
    ratios = profile.projection.explained_variance_ratio
    assert ratios == sorted(ratios, reverse=True)
    # The reference rows are projections of validation rows, as served inputs will be projected.
    projected = profile.project(validation)
    distances = np.abs(projected[:, None, :] - np.asarray(profile.reference[:5])[None]).max(axis=2).min(axis=0)
    assert distances.max() < 1e-3


def test_profile_round_trips_through_json_and_stays_small():
    profile, validation = synthetic_profile()
    text = json.dumps(profile.model_dump(mode="json"))
    assert len(text) < 300_000
    again = Profile.model_validate(json.loads(text))
    assert again == profile
    np.testing.assert_array_equal(again.project(validation[:10]), profile.project(validation[:10]))


def test_length_profile_quantiles_and_histogram():
    lengths = length_profile(["x" * n for n in range(1, 101)])
    assert lengths.quantiles["p00"] == 1 and lengths.quantiles["p50"] == 50.5 and lengths.quantiles["p100"] == 100
    assert sum(lengths.histogram_counts) == 100 and len(lengths.histogram_edges) == len(lengths.histogram_counts) + 1


def test_reference_profile_of_a_checkpoint_describes_its_validation(model_dir, recipe):
    data = load_dataset(recipe.data)
    profile = reference_profile(model_dir, recipe, data)
    assert profile.dimensions == 8 and len(profile.projection.mean) == 32
    assert profile.validation_rows == len(data.validation) == len(profile.reference) == len(profile.confidences)
    assert set(profile.labels) <= set(LABELS) and sum(profile.labels.values()) == len(data.validation)
    assert all(0.5 <= c <= 1.0 for c in profile.confidences)


def test_register_result_attaches_the_profile_and_keeps_extra(model_dir, recipe, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "model").symlink_to(model_dir, target_is_directory=True)
    data = load_dataset(recipe.data)
    manifest = register_result(recipe, data, Storage(recipe.storage), DirectoryCheckpoint(checkpoint), {"accuracy": 0.5}, extra={"run": "r1"})
    stored = ModelRegistry(Storage(recipe.storage)).manifest("tiny", manifest.version)
    assert stored.extra["run"] == "r1"
    assert profile_of(stored) == reference_profile(model_dir, recipe, data)


@pytest.fixture
def registry(model_dir, recipe) -> ModelRegistry:
    """tiny:v1 registered with a profile, tiny:v2 (the same files) without."""
    registry = ModelRegistry(Storage(recipe.storage))
    profile = reference_profile(model_dir, recipe, load_dataset(recipe.data))
    for extra in ({"profile": profile.model_dump(mode="json")}, {}):
        registry.register(
            "tiny", model_dir, task="sequence-classification", base_model="random", labels=LABELS, metrics={"accuracy": 0.5},
            dataset={"uri": recipe.data.train, "sha256": "0" * 64, "rows": 60}, recipe=recipe.model_dump(mode="json"), extra=extra,
        )
    return registry


def test_classify_emits_the_projection_of_its_input(registry, recipe, model_dir):
    specialist = ClassifySpecialist({"model": "registry://tiny:v1", "storage": recipe.storage})
    outputs = specialist.predict(TEXTS[:2])
    results = [specialist.result(output) for output in outputs]
    profile = profile_of(registry.manifest("tiny", "v1"))
    pooled = TextClassifier(model_dir, 16).forward(TEXTS[:1], pooled=True).pooled
    assert all(len(result.features) == profile.dimensions for result in results)
    np.testing.assert_allclose(results[0].features, profile.project(pooled)[0], atol=1e-4)
    # The projection is no part of the answer.
    assert results[0].output == {"label": outputs[0]["label"], "scores": outputs[0]["scores"]}
    assert "features" not in json.loads(json.dumps(results[0].output))


def test_classify_features_do_not_depend_on_the_batch(registry, recipe):
    specialist = ClassifySpecialist({"model": "registry://tiny:v1", "storage": recipe.storage})
    alone = specialist.result(specialist.predict(["superb"])[0]).features
    padded = specialist.result(specialist.predict(["superb", "a long review that pads the short one in the batch"])[0]).features
    np.testing.assert_allclose(alone, padded, atol=1e-4)


def test_classify_without_a_profile_has_no_features(registry, recipe, model_dir):
    for model in ("registry://tiny:v2", str(model_dir)):
        specialist = ClassifySpecialist({"model": model, "storage": recipe.storage})
        assert specialist.result(specialist.predict(["superb"])[0]).features is None
