"""Out-of-scope scores of a classifier's outputs (top probability, energy, Mahalanobis distance and
nearest-neighbour similarity on the pooled encoder output), the training statistics the last two
need, and the rule that turns a score under a threshold into the out-of-scope label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from cluster.errors import BatonError

Score = Literal["probability", "energy", "mahalanobis", "neighbours"]
SCORES: tuple[str, ...] = get_args(Score)
NEEDS_REFERENCE = frozenset({"mahalanobis", "neighbours"})
REFERENCE_FILE = "out_of_scope.npz"
DEFAULT_NEIGHBOURS = 10


@dataclass(frozen=True)
class Reference:
    """What the distance scores compare an input with: the in-scope training rows' pooled outputs,
    as class means with one shared precision matrix (Mahalanobis) and as unit vectors (neighbours)."""

    means: np.ndarray
    precision: np.ndarray
    neighbours: np.ndarray
    k: int = DEFAULT_NEIGHBOURS

    def __post_init__(self) -> None:
        # Per-request work is one matrix product per score: what does not depend on the input
        # (float32 neighbours, each mean's own term m'Pm) is computed once, here.
        object.__setattr__(self, "_neighbours32", np.asarray(self.neighbours, dtype=np.float32))
        own = np.einsum("cd,dk,ck->c", self.means, self.precision, self.means)
        object.__setattr__(self, "_mean_terms", own.astype(np.float32))

    @classmethod
    def fit(cls, pooled: np.ndarray, label_ids: np.ndarray, oos_index: int | None, k: int = DEFAULT_NEIGHBOURS) -> Reference:
        """From the training rows' pooled outputs; rows labelled out-of-scope are left out, so the
        distances say how far an input is from what the model was taught to recognise."""
        keep = label_ids != oos_index if oos_index is not None else np.ones(len(label_ids), dtype=bool)
        features, labels = pooled[keep].astype(np.float64), label_ids[keep]
        classes = np.unique(labels)
        if len(features) < 2:
            raise BatonError(f"an out-of-scope reference needs at least 2 in-scope training rows; got {len(features)}")
        means = np.stack([features[labels == c].mean(axis=0) for c in classes])
        centred = features - means[np.searchsorted(classes, labels)]
        return cls(
            means=means.astype(np.float32),
            precision=np.linalg.inv(_shrunk_covariance(centred)).astype(np.float32),
            neighbours=_unit(features).astype(np.float16),
            k=min(k, len(features)),
        )

    def save(self, path: Path) -> None:
        with path.open("wb") as file:
            np.savez(file, means=self.means, precision=self.precision, neighbours=self.neighbours, k=np.int64(self.k))

    @classmethod
    def load(cls, path: Path) -> Reference:
        try:
            with np.load(path, allow_pickle=False) as saved:
                return cls(saved["means"], saved["precision"], saved["neighbours"], int(saved["k"]))
        except (OSError, KeyError, ValueError) as error:
            raise BatonError(f"{path}: not an out-of-scope reference: {error}") from None


def _shrunk_covariance(centred: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf shrinkage towards a scaled identity. A fine-tuned encoder's pooled outputs can
    nearly stop varying along some directions (a distilled student's did: smallest eigenvalue
    1e-16); the plain inverse then turns a rounding-sized offset there into an enormous distance,
    and the score stops separating anything (AUROC 0.52 against 0.98 for the logits' energy)."""
    from sklearn.covariance import ledoit_wolf

    covariance, _ = ledoit_wolf(centred, assume_centered=True)
    return covariance


def in_scope_scores(score: str, logits: np.ndarray, pooled: np.ndarray | None, reference: Reference | None, oos_index: int | None) -> np.ndarray:
    """(n,) scores, higher meaning more like the in-scope training data."""
    if score == "probability":
        return _softmax(logits).max(axis=1)
    if score == "energy":
        # Free energy over the in-scope logits (Liu et al., 2020): unlike the softmax, it keeps
        # how large the logits are, which is what separates inputs unlike any class.
        in_scope = np.delete(logits, oos_index, axis=1) if oos_index is not None else logits
        top = in_scope.max(axis=1, keepdims=True)
        return (top + np.log(np.exp(in_scope - top).sum(axis=1, keepdims=True)))[:, 0]
    if score not in NEEDS_REFERENCE:
        raise BatonError(f"unknown out-of-scope score {score!r}; known: {list(SCORES)}")
    if pooled is None or reference is None:
        raise BatonError(f"the {score} score needs the pooled output and the training reference")
    if score == "mahalanobis":
        return -_mahalanobis(pooled.astype(np.float32), reference).min(axis=1)
    similarity = _unit(pooled.astype(np.float32)) @ reference._neighbours32.T
    # The k-th nearest rather than the nearest (Sun et al., 2022): one stray training row near an
    # out-of-scope input does not make it look in scope.
    return -np.partition(-similarity, reference.k - 1, axis=1)[:, reference.k - 1]


def apply_threshold(predicted: np.ndarray, scores: np.ndarray, oos_index: int | None, threshold: float | None) -> np.ndarray:
    """``predicted`` with every row whose score is under ``threshold`` turned out-of-scope."""
    if oos_index is None or threshold is None:
        return predicted
    return np.where(scores < threshold, oos_index, predicted)


def _mahalanobis(pooled: np.ndarray, reference: Reference) -> np.ndarray:
    """(n, classes) squared distances (x - m)' P (x - m), expanded so no (n, classes, d) array is built."""
    projected = pooled @ reference.precision
    own = np.einsum("nd,nd->n", projected, pooled)[:, None]
    return own - 2 * projected @ reference.means.T + reference._mean_terms[None, :]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
