"""actors.out_of_scope's reference statistics on synthetic pooled outputs: the Mahalanobis score
must rank inputs by distance even where the training features barely vary along a direction."""

from __future__ import annotations

import numpy as np

from actors.out_of_scope import Reference, in_scope_scores


LIVE, COLLAPSED = 8, 8  # feature directions that vary on training rows, and ones that nearly stop


def collapsed_features(rows: int, spread: float, collapsed: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two classes apart along the first direction; noise ``spread`` along the live directions and
    ``collapsed`` along the others."""
    labels = rng.integers(0, 2, rows)
    means = np.zeros((2, LIVE + COLLAPSED))
    means[:, 0] = (-3.0, 3.0)
    noise = rng.normal(size=(rows, LIVE + COLLAPSED)) * np.r_[np.full(LIVE, spread), np.full(COLLAPSED, collapsed)]
    return means[labels] + noise, labels


def ordered_pairs(higher: np.ndarray, lower: np.ndarray) -> float:
    """Share of (higher, lower) pairs in that order: the AUROC of telling them apart."""
    return float((higher[:, None] > lower[None, :]).mean())


def test_mahalanobis_separates_outliers_where_training_features_collapsed():
    """Training rows of a fine-tuned encoder barely vary along some directions (a distilled
    student's smallest covariance eigenvalue was 1e-16) while unseen rows vary there a little
    more. The plain inverse blows that little up and ranks new in-scope rows below outliers
    (AUROC about 0.47 here); shrinkage keeps the score on the directions that carry it."""
    rng = np.random.default_rng(0)
    train, labels = collapsed_features(400, spread=1.0, collapsed=1e-4, rng=rng)
    reference = Reference.fit(train, labels, oos_index=None)
    unseen, _ = collapsed_features(200, spread=1.0, collapsed=1e-2, rng=rng)
    outliers, _ = collapsed_features(200, spread=3.0, collapsed=1e-2, rng=rng)

    def scores(rows: np.ndarray) -> np.ndarray:
        return in_scope_scores("mahalanobis", np.zeros((len(rows), 2)), rows, reference, None)

    assert np.all(np.isfinite(reference.precision))
    assert ordered_pairs(scores(unseen), scores(outliers)) > 0.95


def test_mahalanobis_matches_the_plain_distance_on_well_spread_features():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 2_000)
    means = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    features = means[labels] + rng.normal(size=(len(labels), 2)) * np.array([1.0, 2.0])
    reference = Reference.fit(features, labels, oos_index=None)
    probe = np.array([[1.0, 2.0]])

    score = in_scope_scores("mahalanobis", np.zeros((1, 3)), probe, reference, None)[0]

    # Nearest class 0: the squared distance is 1/1 + 4/4 = 2, up to sampling and a little shrinkage.
    assert abs(-score - 2.0) < 0.15


def test_out_of_scope_rows_are_left_out_of_the_reference():
    features, labels = collapsed_features(400, spread=1.0, collapsed=1e-4, rng=np.random.default_rng(2))
    labels[:10] = 2  # rows of the out-of-scope class
    reference = Reference.fit(features, labels, oos_index=2)

    assert reference.means.shape == (2, LIVE + COLLAPSED) and len(reference.neighbours) == len(labels) - 10
