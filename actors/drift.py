"""Drift detection against a model's reference profile: every ``window_requests`` outcomes of an
agent version are tested for prediction drift (chi-squared), confidence drift (KS) and input
drift (KS per projected dimension with Bonferroni, the "Failing Loudly" recipe)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from cluster.config import DriftSettings, Strict
from cluster.errors import ConfigError, NotFound
from cluster.registry import REF_SCHEME, Manifest, ModelRegistry
from cluster.storage import Storage

PROFILE_KEY = "profile"
KINDS = ("prediction", "confidence", "input")
# Each test needs this many values in a window; DriftSettings.window_requests has the same floor.
MIN_VALUES = 20
# Monte Carlo draws of the chi-squared test: 999 at least, and enough that a p-value well
# under the threshold can be seen (the smallest possible p-value is 1 / (draws + 1)).
MIN_DRAWS, DRAWS_PER_ALPHA = 999, 20


class LengthProfile(Strict):
    """Input text lengths (characters) of the training inputs."""

    quantiles: dict[str, float] = Field(..., description="Quantile name ('p05', 'p50', ...) -> length in characters.")
    histogram_edges: list[float] = Field(..., min_length=2, description="Bin edges of the length histogram.")
    histogram_counts: list[int] = Field(..., min_length=1, description="Training inputs per histogram bin.")


class Projection(Strict):
    """A linear map from the model's pooled encoder output to k dimensions (PCA on training inputs)."""

    mean: list[float] = Field(..., min_length=1, description="Mean of the pooled encoder output (d values).")
    components: list[list[float]] = Field(..., min_length=1, description="k rows of d values: the principal axes.")
    explained_variance_ratio: list[float] = Field(..., description="Share of the variance each axis explains.")

    @model_validator(mode="after")
    def _shapes(self) -> Projection:
        if any(len(row) != len(self.mean) for row in self.components):
            raise ValueError(f"every component needs {len(self.mean)} values, the length of the mean")
        return self

    def apply(self, pooled: np.ndarray) -> np.ndarray:
        """(n, d) pooled encoder outputs -> (n, k) projections."""
        return (np.asarray(pooled, dtype=np.float64) - np.asarray(self.mean)) @ np.asarray(self.components).T


class Profile(Strict):
    """What a model saw at registration: the reference that serving windows are tested against."""

    schema_version: Literal[1] = Field(1, description="Layout of this profile.")
    pooling: Literal["mean"] = Field("mean", description="Pooling of the last hidden state: masked mean over tokens.")
    lengths: LengthProfile = Field(..., description="Input text lengths of the training inputs.")
    projection: Projection = Field(..., description="PCA of the pooled encoder output of the training inputs.")
    reference: list[list[float]] = Field(..., min_length=1, description="Projections of a sample of validation inputs (rows of k).")
    labels: dict[str, int] = Field(..., min_length=1, description="Predicted label -> count on validation.")
    confidences: list[float] = Field(..., min_length=1, description="Probability of the predicted label, a sample of validation.")
    train_rows: int = Field(..., ge=1, description="Training inputs the projection was fitted on.")
    validation_rows: int = Field(..., ge=1, description="Validation inputs behind labels, confidences and reference.")

    @model_validator(mode="after")
    def _reference_width(self) -> Profile:
        if any(len(row) != self.dimensions for row in self.reference):
            raise ValueError(f"every reference row needs {self.dimensions} values, one per projection component")
        return self

    @property
    def dimensions(self) -> int:
        return len(self.projection.components)

    def project(self, pooled: np.ndarray) -> np.ndarray:
        """(n, d) pooled encoder outputs -> (n, k) projections."""
        return self.projection.apply(pooled)


def profile_of(manifest: Manifest) -> Profile | None:
    """The profile in a manifest's ``extra``, or None for a model registered without one."""
    raw = manifest.extra.get(PROFILE_KEY)
    if raw is None:
        return None
    try:
        return Profile.model_validate(raw)
    except ValueError as error:
        raise ConfigError(f"the drift profile of {manifest.name}:{manifest.version} is invalid: {error}") from None


def registry_references(storage_uri: str) -> Callable[[str], Profile | None]:
    """A reference lookup for DriftWatch: ``registry://name:version`` -> its profile; None for
    other models, unknown models and models without a profile."""
    registry = ModelRegistry(Storage(storage_uri))

    def reference(model: str) -> Profile | None:
        if not model.startswith(REF_SCHEME):
            return None
        try:
            return profile_of(registry.manifest(*registry.resolve(model)))
        except NotFound:
            return None

    return reference


# -- the three tests ------------------------------------------------------------------------


def verdict(stat: float | None, p_value: float | None, alpha: float) -> dict[str, Any]:
    """One test's answer; stat and p_value are None where the window had too few values."""
    drift = p_value is not None and bool(p_value <= alpha)
    return {"stat": None if stat is None else float(stat), "p_value": None if p_value is None else float(p_value), "drift": drift}


def prediction_test(reference: dict[str, int], window: Sequence[str], alpha: float, rng: np.random.Generator) -> dict[str, Any]:
    """Chi-squared test of homogeneity between the reference's and the window's label counts.

    The p-value is Monte Carlo (tables with both margins fixed, scipy's ``random_table``), since
    a window of a few hundred requests over many labels leaves most expected counts under 5,
    where the chi-squared approximation is not valid.
    """
    from scipy.stats import MonteCarloMethod, chi2_contingency

    if len(window) < MIN_VALUES:
        return verdict(None, None, alpha)
    labels = sorted(set(reference) | set(window))
    counts = {label: 0 for label in labels}
    for label in window:
        counts[label] += 1
    table = np.array([[reference.get(label, 0) for label in labels], [counts[label] for label in labels]])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return verdict(0.0, 1.0, alpha)
    draws = max(MIN_DRAWS, int(np.ceil(DRAWS_PER_ALPHA / alpha)) - 1)
    result = chi2_contingency(table, correction=False, method=MonteCarloMethod(n_resamples=draws, rng=rng))
    return verdict(result.statistic, result.pvalue, alpha)


def confidence_test(reference: Sequence[float], window: Sequence[float], alpha: float) -> dict[str, Any]:
    """Two-sample Kolmogorov–Smirnov test of the predicted label's probability."""
    from scipy.stats import ks_2samp

    if len(window) < MIN_VALUES:
        return verdict(None, None, alpha)
    result = ks_2samp(np.asarray(reference), np.asarray(window))
    return verdict(result.statistic, result.pvalue, alpha)


def input_test(reference: np.ndarray, window: np.ndarray, alpha: float) -> dict[str, Any]:
    """KS per projected dimension; the smallest p-value times k (Bonferroni) is the test's
    p-value, and stat is the KS statistic of that dimension (Rabanser et al., "Failing Loudly")."""
    from scipy.stats import ks_2samp

    if len(window) < MIN_VALUES:
        return verdict(None, None, alpha)
    result = ks_2samp(reference, window, axis=0)
    worst = int(np.argmin(result.pvalue))
    return verdict(result.statistic[worst], min(1.0, float(result.pvalue[worst]) * reference.shape[1]), alpha)


# -- the watcher ----------------------------------------------------------------------------


@dataclass
class Window:
    """The outcomes of one agent version collected since its last test."""

    model: str
    requests: int = 0
    labels: list[str] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    features: list[Sequence[float]] = field(default_factory=list)
    last_ts: float | None = None


class DriftWatch:
    """Collects request outcomes per (agent, version) and tests each full window against the
    reference profile of the model it served; ``observe`` returns the alerts of a finished window.

    Outcomes are read by attribute (``agent, version, model, ts, label, confidence, features``
    and optionally ``kind``); only request outcomes that carry a label, a confidence or features
    count towards a window. Windows do not overlap, so each request is tested once.
    """

    def __init__(self, settings: DriftSettings, reference: Callable[[str], Profile | None], clock: Callable[[], float] = time.time, seed: int = 0):
        self.settings = settings
        self._lookup = reference
        self._clock = clock
        self._rng = np.random.default_rng(seed)
        self._profiles: dict[str, Profile | None] = {}
        self._windows: dict[tuple[str, str], Window] = {}
        self._latest: dict[tuple[str, str], dict[str, Any]] = {}

    def observe(self, outcome: Any) -> list[dict[str, Any]]:
        """Add one outcome; when it completes a window, test the window and return its alerts."""
        model = getattr(outcome, "model", None)
        if getattr(outcome, "kind", None) not in (None, "request") or not model or not _carries_signals(outcome):
            return []
        profile = self._reference(model)
        if profile is None:
            return []
        key = (outcome.agent, outcome.version)
        window = self._windows.get(key)
        if window is None or window.model != model:
            window = self._windows[key] = Window(model)
        _add(window, outcome, profile.dimensions)
        if window.requests < self.settings.window_requests:
            return []
        del self._windows[key]
        return self._close(key, window, profile)

    def report(self) -> dict[str, dict[str, dict[str, Any]]]:
        """agent -> version -> the tests of its last finished window (GET /v1/admin/drift)."""
        report: dict[str, dict[str, dict[str, Any]]] = {}
        for (agent, version), entry in sorted(self._latest.items(), key=lambda item: tuple(map(str, item[0]))):
            report.setdefault(agent, {})[version] = copy.deepcopy(entry)
        return report

    def _reference(self, model: str) -> Profile | None:
        # Registry versions never change, so one lookup per model reference is enough.
        if model not in self._profiles:
            self._profiles[model] = self._lookup(model)
        return self._profiles[model]

    def _close(self, key: tuple[str, str], window: Window, profile: Profile) -> list[dict[str, Any]]:
        alpha = self.settings.p_value
        tests = {
            "prediction": prediction_test(profile.labels, window.labels, alpha, self._rng),
            "confidence": confidence_test(profile.confidences, window.confidences, alpha),
            "input": input_test(np.asarray(profile.reference), np.asarray(window.features, dtype=np.float64).reshape(-1, profile.dimensions), alpha),
        }
        window_end = window.last_ts if window.last_ts is not None else self._clock()
        self._latest[key] = {"window_end": window_end, **tests, "alert": any(test["drift"] for test in tests.values())}
        agent, version = key
        return [
            {"agent": agent, "version": version, "model": window.model, "kind": kind,
             "stat": tests[kind]["stat"], "p_value": tests[kind]["p_value"], "window_end": window_end}
            for kind in KINDS if tests[kind]["drift"]
        ]


def _carries_signals(outcome: Any) -> bool:
    return any(getattr(outcome, name, None) is not None for name in ("label", "confidence", "features"))


def _add(window: Window, outcome: Any, dimensions: int) -> None:
    label, confidence, features, ts = (getattr(outcome, name, None) for name in ("label", "confidence", "features", "ts"))
    window.requests += 1
    if label is not None:
        window.labels.append(str(label))
    if confidence is not None:
        window.confidences.append(float(confidence))
    # Features of another width come from another profile than the one tested against.
    if features is not None and len(features) == dimensions:
        window.features.append(tuple(float(value) for value in features))
    if ts is not None:
        window.last_ts = float(ts)
