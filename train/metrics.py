"""Classification metrics from a confusion matrix: accuracy, macro-F1, per-class F1, and
in-scope accuracy / out-of-scope recall when one label means "none of the above".
"""

from __future__ import annotations

import numpy as np

from actors.classifier_io import predictions


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def classification_metrics(confusion: np.ndarray, names: list[str], oos_index: int | None = None) -> dict:
    """Metrics from ``confusion[true, predicted]`` counts."""
    total = confusion.sum()
    true_positive = np.diag(confusion).astype(float)
    precision = np.divide(true_positive, confusion.sum(axis=0), out=np.zeros_like(true_positive), where=confusion.sum(axis=0) > 0)
    recall = np.divide(true_positive, confusion.sum(axis=1), out=np.zeros_like(true_positive), where=confusion.sum(axis=1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(true_positive), where=(precision + recall) > 0)
    present = confusion.sum(axis=1) > 0
    metrics = {
        "accuracy": float(true_positive.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_f1": {name: round(float(f1[i]), 4) for i, name in enumerate(names)},
    }
    if oos_index is not None:
        in_scope = np.arange(len(names)) != oos_index
        in_scope_rows = confusion[in_scope].sum()
        metrics["in_scope_accuracy"] = float(true_positive[in_scope].sum() / in_scope_rows) if in_scope_rows else 0.0
        oos_rows = confusion[oos_index].sum()
        metrics["oos_recall"] = float(confusion[oos_index, oos_index] / oos_rows) if oos_rows else 0.0
    return metrics


# Candidate out-of-scope thresholds: the top probability of a softmax over ~150 classes spans (0, 1].
# 0.0 is the class-only rule (no threshold).
OOS_THRESHOLDS = (0.0, *(round(float(t), 2) for t in np.arange(0.05, 1.0, 0.01)))


def oos_tradeoff(probabilities: np.ndarray, labels: np.ndarray, oos_index: int, thresholds: tuple[float, ...] = OOS_THRESHOLDS) -> list[dict]:
    """In-scope accuracy and out-of-scope recall at each threshold: the curve a threshold is chosen on."""
    in_scope = labels != oos_index
    curve = []
    for threshold in thresholds:
        predicted = predictions(probabilities, oos_index, threshold)
        curve.append({
            "threshold": threshold,
            "in_scope_accuracy": float((predicted[in_scope] == labels[in_scope]).mean()) if in_scope.any() else 0.0,
            "oos_recall": float((predicted[~in_scope] == oos_index).mean()) if (~in_scope).any() else 0.0,
        })
    return curve


def choose_oos_threshold(curve: list[dict], min_in_scope_accuracy: float) -> dict | None:
    """The point of ``curve`` with the best out-of-scope recall whose in-scope accuracy stays at or
    above the floor (ties: the lower threshold); None when no point reaches the floor."""
    allowed = [point for point in curve if point["in_scope_accuracy"] >= min_in_scope_accuracy]
    return max(allowed, key=lambda point: (point["oos_recall"], -point["threshold"])) if allowed else None
