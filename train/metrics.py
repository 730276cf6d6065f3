"""Classification metrics from a confusion matrix: accuracy, macro-F1, per-class F1, and
in-scope accuracy / out-of-scope recall when one label means "none of the above".
"""

from __future__ import annotations

import numpy as np



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


def mean_cross_entropy(logits: np.ndarray, truth: np.ndarray) -> float:
    """Mean cross-entropy of the true labels under ``logits`` (log-softmax, numerically stable)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return round(float(-log_probabilities[np.arange(len(truth)), truth].mean()), 5)


KEPT_METRIC = {"in_scope_accuracy": "oos_recall", "oos_recall": "in_scope_accuracy"}


def oos_tradeoff(
    scores: np.ndarray, predicted: np.ndarray, truth: np.ndarray, oos_index: int, thresholds: np.ndarray | None = None
) -> list[dict]:
    """In-scope accuracy and out-of-scope recall when rows scoring under each threshold answer
    out-of-scope: the curve a threshold is chosen on. By default the candidates are -inf (the class
    alone) and the midpoints between neighbouring distinct scores, so a chosen threshold leaves
    room on both sides for rows it has not seen."""
    if thresholds is None:
        distinct = np.unique(scores)
        thresholds = np.concatenate([[-np.inf], (distinct[:-1] + distinct[1:]) / 2])
    thresholds = np.asarray(thresholds, dtype=np.float64)
    in_scope = truth != oos_index
    kept_right = np.sort(scores[in_scope & (predicted == truth)])
    caught = int((predicted[~in_scope] == oos_index).sum())
    missed = np.sort(scores[~in_scope & (predicted != oos_index)])
    # A threshold t turns every row scoring under t out-of-scope.
    right = len(kept_right) - np.searchsorted(kept_right, thresholds, side="left")
    recalled = caught + np.searchsorted(missed, thresholds, side="left")
    n_in, n_oos = int(in_scope.sum()), int((~in_scope).sum())
    return [
        {
            "threshold": float(threshold),
            "in_scope_accuracy": float(r / n_in) if n_in else 0.0,
            "oos_recall": float(c / n_oos) if n_oos else 0.0,
        }
        for threshold, r, c in zip(thresholds, right, recalled)
    ]


def choose_oos_threshold(curve: list[dict], floor_metric: str, floor: float) -> dict | None:
    """The point of ``curve`` with the best other metric (out-of-scope recall when the floor is on
    in-scope accuracy, and the reverse) among those at or above the floor; ties go to the lower
    threshold. None when no point reaches the floor."""
    other = KEPT_METRIC[floor_metric]
    allowed = [point for point in curve if point[floor_metric] >= floor]
    return max(allowed, key=lambda point: (point[other], -point["threshold"])) if allowed else None
