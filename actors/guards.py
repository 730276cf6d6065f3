"""Rollout guards: one check of a candidate version's window summary against a threshold,
absolute or relative to the baseline's, whose verdict never passes on incomplete or thin data.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import chi2_contingency

from cluster.config import GuardSettings
from cluster.errors import ValidationFailed

# A guard fails only when the data is this sure of the violation (one-sided, per look): the
# point estimate decides a pass, but a violation must clear its confidence bound to roll back.
# Between the two the step keeps baking. 1e-4 because a step is looked at on every tick while
# it waits, over several steps and guards, and a good candidate must not fail in 20 rollouts.
FAIL_ALPHA = 1e-4
_Z = NormalDist().inv_cdf(1 - FAIL_ALPHA)

# Metrics that shadow copies answer before any caller sees the candidate (the others need
# real traffic: shadow latency is measured off the critical path, under another load).
SHADOW_METRICS = frozenset({"agreement", "error_rate"})
QUANTILES = {"p50_ms": 0.5, "p95_ms": 0.95, "p99_ms": 0.99}
# Latencies below a microsecond are zero for our purposes; log() needs a floor.
_MIN_LATENCY_MS = 1e-3

OPS: dict[str, Callable[[float, float], bool]] = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
Verdict = Literal["pass", "fail", "inconclusive"]


class Check(BaseModel):
    """The outcome of one guard over one pair of windows."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(..., description="The guard's metric, e.g. 'error_rate' or 'p95_ms'.")
    op: str = Field(..., description="How observed must compare with threshold to pass: <, <=, > or >=.")
    threshold: float | None = Field(..., description="Absolute threshold (a relative guard's factor times the baseline's value).")
    observed: float | None = Field(..., description="The candidate's value (the p-value for 'labels'); None without data.")
    baseline: float | None = Field(..., description="The baseline version's value over the compared period, None if not used.")
    verdict: Verdict = Field(..., description="pass, fail, or inconclusive (too little or incomplete data: keep waiting).")
    reason: str = Field(..., description="Why, in words, with the sample sizes.")


@dataclass(frozen=True)
class Estimate:
    """A metric from a window summary with its one-sided confidence bounds at FAIL_ALPHA."""

    value: float | None
    lower: float | None
    upper: float | None
    samples: int
    unit: str  # what the samples are, for reasons: "requests", "feedback", ...


def check_guards(guards: list[GuardSettings], copies: bool) -> None:
    """Refuse guards that could never pass (422): raise ValidationFailed naming the guard."""
    for index, guard in enumerate(guards):
        where = f"guards[{index}] ({guard})"
        if guard.metric in ("labels", "agreement") and guard.relative_to_baseline:
            raise ValidationFailed(f"{where}: {guard.metric} compares with the baseline already; give an absolute value")
        if guard.metric == "labels" and guard.op not in (">", ">="):
            raise ValidationFailed(f"{where}: labels is the p-value of a test against the baseline; use > or >=")
        if guard.metric == "agreement" and not copies:
            raise ValidationFailed(f"{where}: agreement comes from shadow copies; give a shadow phase or compare_percent above 0")


def evaluate(guard: GuardSettings, candidate: dict, baseline: dict | None, min_requests: int) -> Check:
    """The guard's verdict on the candidate's window, the baseline's window over the same period."""
    if not candidate.get("complete", False):
        return _check(guard, "inconclusive", "the candidate's window is incomplete: the monitor lost data for part of it")
    if guard.metric == "labels":
        return _labels(guard, candidate, baseline, min_requests)
    own = estimate(candidate, guard.metric)
    if own.samples < min_requests:
        return _check(guard, "inconclusive", f"{own.samples} {own.unit} in the window, fewer than min_requests {min_requests}", own)
    if own.value is None:
        return _check(guard, "inconclusive", f"the window has no value for {guard.metric}", own)
    if not guard.relative_to_baseline:
        return _decide(guard, own, guard.value, guard.value, None)
    thin = _thin_baseline(baseline, min_requests, guard.metric)
    if thin:
        return _check(guard, "inconclusive", thin, own)
    ref = estimate(baseline, guard.metric)
    # The fail side takes the baseline's bound least favourable to a rollback, so noise in
    # the baseline cannot roll a candidate back either.
    worst = ref.upper if guard.op in ("<", "<=") else ref.lower
    return _decide(guard, own, guard.value * ref.value, None if worst is None else guard.value * worst, ref.value)


def shadow_view(candidate: dict, baseline: dict) -> dict:
    """The candidate as its shadow copies show it: agreement, and an error rate derived from the
    baseline's plus the shadow error delta, over the shadowed requests."""
    shadow = candidate.get("shadow") or {}
    requests = int(shadow.get("requests") or 0)
    delta = shadow.get("error_rate_delta")
    rate = None if delta is None or not baseline.get("requests") else min(1.0, max(0.0, baseline["error_rate"] + delta))
    return {
        "complete": bool(candidate.get("complete")) and bool(baseline.get("complete")),
        "requests": requests if rate is not None else 0,
        "error_rate": rate,
        "shadow": shadow,
    }


def estimate(summary: dict, metric: str) -> Estimate:
    """The metric's value, bounds and sample size in a window summary (brief format)."""
    if metric == "error_rate":
        n = int(summary.get("requests") or 0)
        return _proportion(summary.get("error_rate"), n, "requests")
    if metric in QUANTILES:
        return _quantile(summary, metric)
    if metric == "agreement":
        shadow = summary.get("shadow") or {}
        return _proportion(shadow.get("agreement"), int(shadow.get("agreement_n") or 0), "shadowed requests with an agreement")
    feedback = summary.get("feedback") or {}
    if metric == "accuracy":
        return _proportion(feedback.get("accuracy"), int(feedback.get("n") or 0), "feedback answers")
    if metric == "mean_reward":
        return _mean(feedback.get("reward_mean"), feedback.get("reward_var"), int(feedback.get("reward_n") or 0))
    raise ValueError(f"no estimate for metric {metric!r}")


def _labels(guard: GuardSettings, candidate: dict, baseline: dict | None, min_requests: int) -> Check:
    """Chi-squared test of the candidate's label counts against the baseline's; observed = p-value."""
    own = candidate.get("labels") or {}
    n = sum(own.values())
    if n < min_requests:
        return _check(guard, "inconclusive", f"{n} labelled requests in the window, fewer than min_requests {min_requests}")
    thin = _thin_baseline(baseline, min_requests, "labels")
    if thin:
        return _check(guard, "inconclusive", thin)
    ref = baseline.get("labels") or {}
    names = sorted(set(own) | set(ref))
    # One label on both sides: the distributions are the same, nothing to test.
    p_value = 1.0 if len(names) < 2 else float(chi2_contingency([[own.get(k, 0) for k in names], [ref.get(k, 0) for k in names]]).pvalue)
    sizes = f"{n} candidate and {sum(ref.values())} baseline labels"
    if OPS[guard.op](p_value, guard.value):
        return _check(guard, "pass", f"p={p_value:.3g} {guard.op} {guard.value:g} ({sizes})", observed=p_value)
    fail_below = min(guard.value, FAIL_ALPHA)
    if p_value < fail_below:
        reason = f"the label distribution differs from the baseline's: p={p_value:.3g} < {fail_below:g} ({sizes})"
        return _check(guard, "fail", reason, observed=p_value)
    reason = f"p={p_value:.3g} is not {guard.op} {guard.value:g}, but not below {fail_below:g} either ({sizes}): baking on"
    return _check(guard, "inconclusive", reason, observed=p_value)


def _thin_baseline(baseline: dict | None, min_requests: int, metric: str) -> str | None:
    """Why the baseline cannot serve as reference, or None when it can."""
    if baseline is None:
        return "no baseline window to compare with"
    if not baseline.get("complete", False):
        return "the baseline's window is incomplete: the monitor lost data for part of it"
    if metric == "labels":
        samples = sum((baseline.get("labels") or {}).values())
    else:
        reference = estimate(baseline, metric)
        samples = reference.samples if reference.value is not None else 0
    if samples < min_requests:
        return f"the baseline has {samples} samples for {metric} in the period, fewer than min_requests {min_requests}"
    return None


def _decide(guard: GuardSettings, own: Estimate, threshold: float, fail_threshold: float | None, baseline: float | None) -> Check:
    """Pass on the point estimate; fail only when the confidence bound is beyond the threshold too."""
    sizes = f"n={own.samples} {own.unit}"
    if OPS[guard.op](own.value, threshold):
        return _check(guard, "pass", f"{own.value:.4g} {guard.op} {threshold:.4g} ({sizes})", own, threshold, baseline)
    below = guard.op in ("<", "<=")
    bound = own.lower if below else own.upper
    sure = bound is not None and fail_threshold is not None and (bound > fail_threshold if below else bound < fail_threshold)
    side = "lower" if below else "upper"
    if sure:
        past = f"its {side} bound {bound:.4g} is past {fail_threshold:.4g}"
        reason = f"{own.value:.4g} is not {guard.op} {threshold:.4g}, and {past} ({sizes})"
        return _check(guard, "fail", reason, own, threshold, baseline)
    shown = "none" if bound is None else f"{bound:.4g}"
    reason = f"{own.value:.4g} is not {guard.op} {threshold:.4g}, but not significantly ({side} bound {shown}, {sizes}): baking on"
    return _check(guard, "inconclusive", reason, own, threshold, baseline)


def _check(
    guard: GuardSettings,
    verdict: Verdict,
    reason: str,
    own: Estimate | None = None,
    threshold: float | None = None,
    baseline: float | None = None,
    observed: float | None = None,
) -> Check:
    if threshold is None and not guard.relative_to_baseline:
        threshold = guard.value
    return Check(
        metric=guard.metric,
        op=guard.op,
        threshold=threshold,
        observed=observed if own is None else own.value,
        baseline=baseline,
        verdict=verdict,
        reason=reason,
    )


def _proportion(value: Any, n: int, unit: str) -> Estimate:
    """A share with Wilson score bounds (also fine for a mean of values in [0, 1])."""
    if value is None or n <= 0:
        return Estimate(None, None, None, n, unit)
    p, z2 = float(value), _Z * _Z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n, unit)


def _mean(value: Any, variance: Any, n: int) -> Estimate:
    if value is None or n <= 0:
        return Estimate(None, None, None, n, "rewards")
    if variance is None:
        return Estimate(float(value), None, None, n, "rewards")
    half = _Z * math.sqrt(max(float(variance), 0.0) / n)
    return Estimate(float(value), float(value) - half, float(value) + half, n, "rewards")


def _quantile(summary: dict, metric: str) -> Estimate:
    """A latency quantile with distribution-free bounds: with n samples the true q-quantile lies,
    with confidence 1 - FAIL_ALPHA, above the sample's (q - z·sqrt(q(1-q)/n))-quantile (the
    order-statistic bound). The summary holds only p50/p95/p99, so that quantile is read off them
    with log latency interpolated linearly in normal scores (exact for log-normal latency)."""
    n = int(summary.get("requests") or 0)
    value = summary.get(metric)
    if value is None or n <= 0:
        return Estimate(None, None, None, n, "requests")
    q = QUANTILES[metric]
    spread = _Z * math.sqrt(q * (1 - q) / n)
    known = sorted((QUANTILES[name], summary[name]) for name in QUANTILES if summary.get(name) is not None)
    return Estimate(float(value), _read_quantile(known, q - spread), _read_quantile(known, q + spread), n, "requests")


def _read_quantile(known: list[tuple[float, float]], q: float) -> float | None:
    """The latency at quantile q from known (quantile, latency) points; None outside (0, 1) or
    with fewer than two points to interpolate between."""
    if len(known) < 2 or not 0 < q < 1:
        return None
    scores = [(NormalDist().inv_cdf(level), math.log(max(latency, _MIN_LATENCY_MS))) for level, latency in known]
    target = NormalDist().inv_cdf(q)
    # The segment around the target, or the nearest end segment to extrapolate from.
    index = next((i for i in range(len(scores) - 1) if target <= scores[i + 1][0]), len(scores) - 2)
    (x0, y0), (x1, y1) = scores[index], scores[index + 1]
    slope = (y1 - y0) / (x1 - x0)
    return math.exp(y0 + slope * (target - x0))
