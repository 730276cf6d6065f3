"""train.metrics: the confusion-matrix metrics, the out-of-scope rule, and choosing its threshold."""

from __future__ import annotations

import numpy as np
import pytest

from actors.classifier_io import predictions
from train.metrics import choose_oos_threshold, classification_metrics, confusion_matrix, oos_tradeoff

NAMES = ["balance", "transfer", "oos"]
OOS = 2


def test_metrics_from_a_confusion_matrix():
    truth = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 0, 2])
    metrics = classification_metrics(confusion_matrix(truth, predicted, 3), NAMES, OOS)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["in_scope_accuracy"] == pytest.approx(3 / 4)
    assert metrics["oos_recall"] == pytest.approx(1 / 2)
    # balance: precision 1/2, recall 1/2; transfer: 2/3, 1; oos: 1, 1/2
    assert metrics["per_class_f1"] == {"balance": 0.5, "transfer": 0.8, "oos": pytest.approx(0.6667, abs=1e-4)}
    assert metrics["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_threshold_turns_doubt_into_out_of_scope_and_zero_keeps_the_class():
    probabilities = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25]])
    assert predictions(probabilities, OOS, 0.0).tolist() == [0, 0]
    assert predictions(probabilities, OOS, 0.5).tolist() == [0, OOS]
    assert predictions(probabilities, None, 0.5).tolist() == [0, 0]


def test_tradeoff_and_choice_respect_the_floor():
    # Four in-scope rows (tops 0.9, 0.8, 0.6 right; 0.5 wrong) and two out-of-scope rows (tops 0.55, 0.3).
    probabilities = np.array([
        [0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.5, 0.3, 0.2],
        [0.55, 0.3, 0.15], [0.3, 0.3, 0.4],
    ])
    truth = np.array([0, 1, 0, 1, 2, 2])
    scores, predicted = probabilities.max(axis=1), probabilities.argmax(axis=1)
    curve = {point["threshold"]: point for point in oos_tradeoff(scores, predicted, truth, OOS, np.array([0.0, 0.52, 0.58, 0.7]))}
    assert curve[0.0] == {"threshold": 0.0, "in_scope_accuracy": 0.75, "oos_recall": 0.5}
    assert curve[0.52] == {"threshold": 0.52, "in_scope_accuracy": 0.75, "oos_recall": 0.5}
    assert curve[0.58] == {"threshold": 0.58, "in_scope_accuracy": 0.75, "oos_recall": 1.0}
    assert curve[0.7] == {"threshold": 0.7, "in_scope_accuracy": 0.5, "oos_recall": 1.0}
    points = list(curve.values())
    assert choose_oos_threshold(points, "in_scope_accuracy", 0.75)["threshold"] == 0.58
    assert choose_oos_threshold(points, "in_scope_accuracy", 0.5)["threshold"] == 0.58  # ties go to the lower threshold
    assert choose_oos_threshold(points, "in_scope_accuracy", 0.9) is None
    # The other way round: the best in-scope accuracy that still catches every out-of-scope row.
    assert choose_oos_threshold(points, "oos_recall", 1.0)["threshold"] == 0.58
    assert choose_oos_threshold(points, "oos_recall", 0.5)["threshold"] == 0.0


def test_default_candidates_are_midpoints_after_the_class_alone():
    scores = np.array([0.9, 0.6, 0.3, 0.6])
    truth, predicted = np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0])
    curve = oos_tradeoff(scores, predicted, truth, 1)
    assert [point["threshold"] for point in curve] == [-np.inf, pytest.approx(0.45), pytest.approx(0.75)]
    assert [(point["in_scope_accuracy"], point["oos_recall"]) for point in curve] == [(1.0, 0.0), (1.0, 0.5), (0.5, 1.0)]
