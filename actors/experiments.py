"""A/B analysis between an agent's versions: fixed-horizon tests (two-proportion z, Welch's t)
with 95% intervals, and an always-valid sequential p-value (the normal-mixture mSPRT of
Johari, Pekelis and Walsh) that may be read after every request without inflating false positives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from cluster.errors import NotFound

# The mSPRT's mixing standard deviation tau, in units of one observation's standard deviation:
# the test is quickest for effects near tau and valid for any. 0.1 SD is a 4-point accuracy change
# at 80%, or error rate 1% -> 2%. On a 2-point lift at 80% (0.05 SD) it detects at the same median
# and a 5% later 80th percentile than tau 0.05 would (benchmarks/experiments.py).
DEFAULT_TAU_SD = 0.1
CONFIDENCE = 0.95
# +1: higher is better, -1: lower is better. The order is the order of comparisons in a report.
METRIC_DIRECTION = {"accuracy": 1, "mean_reward": 1, "error_rate": -1, "latency_mean_ms": -1}
# The primary metric is the first of these that the baseline has data for.
PRIMARY_ORDER = ("accuracy", "mean_reward", "error_rate")


class Proportion(NamedTuple):
    """Successes out of n trials (correct answers, or errors)."""

    successes: int
    n: int


class Moments(NamedTuple):
    """n observations' mean and unbiased (ddof=1) variance."""

    n: int
    mean: float
    var: float


@dataclass(frozen=True)
class TwoSampleResult:
    """One comparison's statistics; the difference is candidate - baseline."""

    difference: float
    ci95: tuple[float, float]
    p_value_fixed: float
    p_value_sequential: float


def msprt_p_value(difference, variance, tau2):
    """The always-valid p-value min(1, 1/Lambda) of the normal-mixture mSPRT for H0: difference = 0.

    ``difference`` is the estimate on all data since the experiment started, ``variance`` its
    variance (var_a/n_a + var_b/n_b), ``tau2`` the mixing variance of the effect under H1. With
    the effect drawn from N(0, tau2) the likelihood ratio has the closed form
        Lambda = sqrt(v / (v + tau2)) * exp(tau2 * d**2 / (2 * v * (v + tau2)))
    (Johari et al. 2022, the normal mSPRT with v = sigma**2 / n). Lambda is a martingale under H0,
    so P(Lambda ever reaches 1/alpha) <= alpha (Ville's inequality): the p-value may be read at any
    time, and as often as wanted. The callers plug in variances estimated from the data, as Johari
    et al. do, which makes the guarantee hold for large samples rather than exactly. A caller that reads it repeatedly may keep the running minimum
    of its readings, which is just as valid and never goes back up. Works elementwise on arrays.
    """
    d, v, t2 = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (difference, variance, tau2)))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_ratio = 0.5 * np.log(v / (v + t2)) + t2 * d * d / (2 * v * (v + t2))
    # No variance: both sides constant. Equal constants are no evidence, different ones are certain.
    log_ratio = np.where(v > 0, log_ratio, np.where(d != 0, np.inf, -np.inf))
    p_value = np.minimum(1.0, np.exp(-log_ratio))
    return float(p_value) if p_value.ndim == 0 else p_value


def proportion_test(baseline: Proportion, candidate: Proportion, tau_sd: float = DEFAULT_TAU_SD) -> TwoSampleResult:
    """Difference of two proportions: pooled two-proportion z-test (statsmodels), Newcombe's
    hybrid score interval (statsmodels), and the mSPRT on the same pooled variance."""
    if min(baseline.n, candidate.n) < 1:
        raise ValueError("a proportion needs at least one trial on each side")
    difference = candidate.successes / candidate.n - baseline.successes / baseline.n
    pooled = (baseline.successes + candidate.successes) / (baseline.n + candidate.n)
    unit_variance = pooled * (1 - pooled)
    variance = unit_variance * (1 / baseline.n + 1 / candidate.n)
    if variance > 0:
        _, p_fixed = proportions_ztest([candidate.successes, baseline.successes], [candidate.n, baseline.n])
    else:
        p_fixed = 1.0  # every trial on both sides succeeded (or every one failed): nothing differs
    # Newcombe's interval, not Wald's: it keeps its coverage near 0 and 1 (error rates), where
    # Wald's collapses to a point; statsmodels' score interval fails there (0 of n on both sides).
    low, high = confint_proportions_2indep(
        candidate.successes, candidate.n, baseline.successes, baseline.n,
        method="newcomb", compare="diff", alpha=1 - CONFIDENCE,
    )
    return TwoSampleResult(
        difference=difference,
        ci95=(float(low), float(high)),
        p_value_fixed=float(p_fixed),
        p_value_sequential=msprt_p_value(difference, variance, tau_sd**2 * unit_variance),
    )


def welch_test(baseline: Moments, candidate: Moments, tau_sd: float = DEFAULT_TAU_SD) -> TwoSampleResult:
    """Difference of two means from summaries: Welch's t-test (scipy), its interval on the
    Welch-Satterthwaite degrees of freedom, and the mSPRT on the same unpooled variance."""
    if min(baseline.n, candidate.n) < 2:
        raise ValueError("a mean's variance needs at least two observations on each side")
    difference = float(candidate.mean - baseline.mean)
    share_b, share_c = baseline.var / baseline.n, candidate.var / candidate.n
    variance = share_b + share_c
    if variance > 0:
        _, p_fixed = stats.ttest_ind_from_stats(
            candidate.mean, math.sqrt(candidate.var), candidate.n,
            baseline.mean, math.sqrt(baseline.var), baseline.n, equal_var=False,
        )
        df = variance**2 / (share_b**2 / (baseline.n - 1) + share_c**2 / (candidate.n - 1))
        half_width = float(stats.t.ppf(0.5 + CONFIDENCE / 2, df)) * math.sqrt(variance)
    else:
        p_fixed, half_width = (1.0 if difference == 0 else 0.0), 0.0  # constant on both sides
    # tau is in units of one observation's SD: the pooled SD, whatever the metric's scale.
    unit_variance = ((baseline.n - 1) * baseline.var + (candidate.n - 1) * candidate.var) / (baseline.n + candidate.n - 2)
    return TwoSampleResult(
        difference=difference,
        ci95=(difference - half_width, difference + half_width),
        p_value_fixed=float(p_fixed),
        p_value_sequential=msprt_p_value(difference, variance, tau_sd**2 * unit_variance),
    )


def window_samples(window: Mapping) -> dict[str, Proportion | Moments]:
    """The metrics a window summary has data for, as test inputs."""
    samples: dict[str, Proportion | Moments] = {}
    feedback = window.get("feedback") or {}
    if feedback.get("n"):
        samples["accuracy"] = Proportion(feedback["correct"], feedback["n"])
    if (feedback.get("reward_n") or 0) >= 2 and feedback.get("reward_var") is not None:
        samples["mean_reward"] = Moments(feedback["reward_n"], feedback["reward_mean"], feedback["reward_var"])
    requests = window.get("requests") or 0
    if requests:
        samples["error_rate"] = Proportion(window["errors"], requests)
    if requests >= 2 and window.get("latency_var_ms2") is not None:
        samples["latency_mean_ms"] = Moments(requests, window["latency_mean_ms"], window["latency_var_ms2"])
    return samples


def two_sample_test(baseline: Proportion | Moments, candidate: Proportion | Moments, tau_sd: float) -> TwoSampleResult:
    """The test that fits the metric's kind: proportions or means."""
    if isinstance(baseline, Proportion):
        return proportion_test(baseline, candidate, tau_sd)
    return welch_test(baseline, candidate, tau_sd)


def decide(metric: str, result: TwoSampleResult, alpha: float) -> str:
    """Decided on the sequential p-value only, so that a report read at any time is safe to act on:
    below alpha, the sign of the difference and the metric's direction say better or worse."""
    if result.p_value_sequential >= alpha:
        return "no_difference_yet"
    return "candidate_better" if result.difference * METRIC_DIRECTION[metric] > 0 else "candidate_worse"


def version_summary(window: Mapping, samples: Mapping[str, Proportion | Moments]) -> dict:
    """A version's line in the report."""
    summary = {
        "requests": window.get("requests") or 0,
        "error_rate": window.get("error_rate"),
        "p50_ms": window.get("p50_ms"),
        "latency_mean_ms": window.get("latency_mean_ms"),
        "complete": window.get("complete"),
    }
    if "accuracy" in samples:
        summary["accuracy"] = samples["accuracy"].successes / samples["accuracy"].n
    if (window.get("feedback") or {}).get("reward_n"):
        summary["mean_reward"] = window["feedback"]["reward_mean"]
    return summary


def default_baseline(windows: Mapping[str, Mapping]) -> str:
    """The version with the most requests; a tie goes to the first listed."""
    return max(windows, key=lambda version: windows[version].get("requests") or 0)


def experiment_report(
    agent: str,
    windows: dict[str, dict],
    baseline: str | None = None,
    alpha: float = 0.05,
    tau_sd: float = DEFAULT_TAU_SD,
) -> dict:
    """API.md section 10's experiment report from each version's window summary.

    The windows must all start when the experiment started and grow from there (not slide):
    the sequential p-value is valid at any reading only on all the data since the start.
    One comparison per candidate and metric with data on both sides, the primary metric first.
    """
    if not windows:
        return {"agent": agent, "baseline": None, "primary_metric": None, "versions": {}, "comparisons": []}
    baseline = baseline or default_baseline(windows)
    if baseline not in windows:
        raise NotFound(f"agent {agent!r} has no window for baseline version {baseline!r}")
    samples = {version: window_samples(window) for version, window in windows.items()}
    primary = next((metric for metric in PRIMARY_ORDER if metric in samples[baseline]), "error_rate")
    metrics = [primary] + [metric for metric in METRIC_DIRECTION if metric != primary]
    comparisons = []
    for candidate in windows:
        if candidate == baseline:
            continue
        for metric in metrics:
            if metric not in samples[baseline] or metric not in samples[candidate]:
                continue
            result = two_sample_test(samples[baseline][metric], samples[candidate][metric], tau_sd)
            comparisons.append({
                "baseline": baseline,
                "candidate": candidate,
                "metric": metric,
                "difference": result.difference,
                "ci95": list(result.ci95),
                "p_value_fixed": result.p_value_fixed,
                "p_value_sequential": result.p_value_sequential,
                "decision": decide(metric, result, alpha),
                "samples": {"baseline": samples[baseline][metric].n, "candidate": samples[candidate][metric].n},
            })
    return {
        "agent": agent,
        "baseline": baseline,
        "primary_metric": primary,
        "versions": {version: version_summary(windows[version], samples[version]) for version in windows},
        "comparisons": comparisons,
    }
