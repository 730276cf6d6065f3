"""The reference profile a classifier is registered with (``manifest.extra["profile"]``): training
input lengths, a PCA of the pooled encoder output, and the predicted labels and confidences on
validation, which serving windows are tested against (actors.drift)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from actors.classifier_io import OutOfScopeRule, TextClassifier
from actors.drift import LengthProfile, Profile, Projection
from train.data import PreparedData
from train.recipe import Recipe

DIMENSIONS = 8
PCA_ROWS = 2000  # training inputs the projection is fitted on: enough for k axes out of d ~ 384-768
REFERENCE_ROWS = 1000
CONFIDENCE_ROWS = 2000
VALIDATION_ROWS = 5000
BATCH = 64
QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)
LENGTH_BINS = 20
SIGNIFICANT = 6  # digits kept per stored number: the profile stays a few hundred KB at most


def build_profile(
    *,
    train_texts: list[str],
    train_pooled: np.ndarray,
    validation_pooled: np.ndarray,
    predicted: list[str],
    confidences: np.ndarray,
    dimensions: int = DIMENSIONS,
    seed: int = 0,
) -> Profile:
    """A profile from arrays: pooled encoder outputs of (a sample of) training inputs and of
    validation inputs, and the predicted label and its probability per validation input.

    The projection is fitted on training inputs; the reference projections are of validation
    inputs, which the model did not train on and which serving traffic resembles: a fine-tuned
    encoder places its own training inputs closer together than new ones.
    """
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    k = min(dimensions, *train_pooled.shape)
    pca = PCA(n_components=k, random_state=seed).fit(train_pooled)
    projection = Projection(
        mean=_rounded(pca.mean_), components=[_rounded(row) for row in pca.components_],
        explained_variance_ratio=_rounded(pca.explained_variance_ratio_),
    )
    return Profile(
        lengths=length_profile(train_texts),
        projection=projection,
        reference=[_rounded(row) for row in projection.apply(_sample(validation_pooled, REFERENCE_ROWS, rng))],
        labels=dict(sorted(Counter(predicted).items())),
        confidences=[round(float(c), 4) for c in _sample(np.asarray(confidences), CONFIDENCE_ROWS, rng)],
        train_rows=len(train_pooled),
        validation_rows=len(validation_pooled),
    )


def length_profile(texts: list[str]) -> LengthProfile:
    lengths = np.asarray([len(text) for text in texts], dtype=np.float64)
    counts, edges = np.histogram(lengths, bins=LENGTH_BINS)
    return LengthProfile(
        quantiles={f"p{round(q * 100):02d}": float(np.quantile(lengths, q)) for q in QUANTILES},
        histogram_edges=_rounded(edges),
        histogram_counts=[int(c) for c in counts],
    )


def profile_classifier(classifier: TextClassifier, data: PreparedData, *, dimensions: int = DIMENSIONS, seed: int = 0) -> Profile:
    """Run ``classifier`` over a sample of the training inputs and the validation inputs (as it
    serves them: its truncation and out-of-scope rule) and build their profile."""
    rng = np.random.default_rng(seed)
    train_texts = [data.train.texts[i] for i in _sample_indices(len(data.train), PCA_ROWS, rng)]
    validation_texts = [data.validation.texts[i] for i in _sample_indices(len(data.validation), VALIDATION_ROWS, rng)]
    train_pooled = classifier.run(train_texts, BATCH).pooled
    outputs = classifier.run(validation_texts, BATCH)
    probabilities, validation_pooled = outputs.probabilities, outputs.pooled
    label_ids = classifier.label_ids(outputs)
    return build_profile(
        train_texts=data.train.texts,
        train_pooled=train_pooled,
        validation_pooled=validation_pooled,
        predicted=[classifier.labels[i] for i in label_ids],
        confidences=probabilities[np.arange(len(label_ids)), label_ids],
        dimensions=dimensions,
        seed=seed,
    )


def reference_profile(model_dir: str | Path, recipe: Recipe, data: PreparedData) -> Profile:
    """The profile of a trained checkpoint, loaded with the truncation and out-of-scope rule the
    registry will serve it with."""
    rule = OutOfScopeRule.from_evaluation(recipe.evaluation.model_dump(), data.labels)
    return profile_classifier(TextClassifier(model_dir, recipe.training.max_length, rule), data, seed=recipe.training.seed)


def _sample_indices(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=limit, replace=False)) if n > limit else np.arange(n)


def _sample(rows: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    return rows[_sample_indices(len(rows), limit, rng)]


def _rounded(values: np.ndarray) -> list[float]:
    return [float(f"{value:.{SIGNIFICANT}g}") for value in np.asarray(values, dtype=np.float64)]
