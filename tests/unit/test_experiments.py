"""A/B analysis: textbook values of the fixed-horizon tests, interval coverage, the mSPRT's
closed form and its behaviour under an effect and under H0, and the experiment report."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from actors.experiments import (
    Moments,
    Proportion,
    experiment_report,
    msprt_p_value,
    proportion_test,
    welch_test,
)
from cluster.errors import NotFound


def test_two_proportion_z_test_matches_the_hand_computed_value():
    # 30/100 vs 45/100: pooled p = 0.375, se = sqrt(0.375 * 0.625 * (1/100 + 1/100)) = 0.068465,
    # z = 0.15 / 0.068465 = 2.19089, two-sided p = 2 * (1 - Phi(2.19089)) = 0.028460.
    result = proportion_test(Proportion(30, 100), Proportion(45, 100))
    assert result.difference == pytest.approx(0.15)
    assert result.p_value_fixed == pytest.approx(0.028460, abs=2e-6)
    assert result.p_value_fixed == pytest.approx(2 * stats.norm.sf(0.15 / math.sqrt(0.375 * 0.625 * 0.02)))


@pytest.mark.parametrize(
    "candidate, baseline, low, high",
    [  # Newcombe (1998), Statistics in Medicine 17:873, table II, method 10 (hybrid score)
        ((56, 70), (48, 80), 0.0524, 0.3339),
        ((9, 10), (3, 10), 0.1705, 0.8090),
        ((5, 56), (0, 29), -0.0381, 0.1926),
        ((0, 10), (0, 20), -0.1611, 0.2775),
        ((10, 10), (0, 10), 0.6075, 1.0000),
    ],
)
def test_proportion_interval_is_newcombes(candidate, baseline, low, high):
    result = proportion_test(Proportion(*baseline), Proportion(*candidate))
    assert result.ci95 == pytest.approx((low, high), abs=6e-5)


def test_no_events_on_either_side_is_no_evidence():
    result = proportion_test(Proportion(0, 500), Proportion(0, 300))
    assert result.difference == 0
    assert result.p_value_fixed == 1.0 and result.p_value_sequential == 1.0
    assert result.ci95[0] < 0 < result.ci95[1]


def test_welch_matches_hand_computed_statistic_and_scipy_on_raw_data():
    rng = np.random.default_rng(3)
    baseline, candidate = rng.normal(20, 4, 10), rng.normal(24, 6, 15)
    summary = lambda x: Moments(len(x), float(x.mean()), float(x.var(ddof=1)))
    result = welch_test(summary(baseline), summary(candidate))

    reference = stats.ttest_ind(candidate, baseline, equal_var=False)
    assert result.p_value_fixed == pytest.approx(reference.pvalue, rel=1e-9)
    assert result.ci95 == pytest.approx(tuple(reference.confidence_interval(0.95)), rel=1e-9)
    # By hand: se^2 = s_b^2/n_b + s_c^2/n_c, Welch-Satterthwaite df.
    se2 = baseline.var(ddof=1) / 10 + candidate.var(ddof=1) / 15
    df = se2**2 / ((baseline.var(ddof=1) / 10) ** 2 / 9 + (candidate.var(ddof=1) / 15) ** 2 / 14)
    t = (candidate.mean() - baseline.mean()) / math.sqrt(se2)
    assert result.p_value_fixed == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)


def test_welch_textbook_summary():
    # mean 20 (s^2 16, n 10) vs mean 22 (s^2 25, n 15): se^2 = 1.6 + 1.6667 = 3.2667,
    # t = 2 / 1.80739 = 1.10657, df = 3.2667^2 / (1.6^2/9 + 1.6667^2/14) = 22.10.
    result = welch_test(Moments(10, 20.0, 16.0), Moments(15, 22.0, 25.0))
    assert result.difference == 2.0
    assert result.p_value_fixed == pytest.approx(2 * stats.t.sf(1.10657, 22.10), abs=1e-4)
    half_width = stats.t.ppf(0.975, 22.10) * 1.80739
    assert result.ci95 == pytest.approx((2 - half_width, 2 + half_width), abs=1e-3)


def test_constant_means_are_certain_when_they_differ():
    assert welch_test(Moments(50, 1.0, 0.0), Moments(50, 1.0, 0.0)).p_value_sequential == 1.0
    differ = welch_test(Moments(50, 1.0, 0.0), Moments(50, 0.0, 0.0))
    assert differ.p_value_fixed == 0.0 and differ.p_value_sequential == 0.0 and differ.ci95 == (-1.0, -1.0)


def coverage(draw, truth: float, runs: int = 400) -> float:
    hits = 0
    for _ in range(runs):
        low, high = draw().ci95
        hits += low <= truth <= high
    return hits / runs


def test_intervals_cover_the_true_difference():
    rng = np.random.default_rng(11)
    def proportions(baseline_rate, baseline_n, candidate_rate, candidate_n):
        return lambda: proportion_test(Proportion(rng.binomial(baseline_n, baseline_rate), baseline_n),
                                       Proportion(rng.binomial(candidate_n, candidate_rate), candidate_n))

    def means():
        baseline, candidate = rng.normal(100, 10, 12), rng.normal(103, 30, 40)
        return welch_test(Moments(12, baseline.mean(), baseline.var(ddof=1)),
                          Moments(40, candidate.mean(), candidate.var(ddof=1)))

    accuracy = coverage(proportions(0.70, 200, 0.75, 300), 0.05)
    error_rate = coverage(proportions(0.01, 400, 0.02, 400), 0.01)

    assert 0.92 <= accuracy <= 0.98
    assert 0.92 <= error_rate <= 0.99
    assert 0.92 <= coverage(means, 3.0) <= 0.98


@pytest.mark.parametrize("difference, variance, tau2", [(0.03, 0.0004, 0.0016), (-0.5, 0.2, 0.01), (0.0, 1.0, 4.0)])
def test_msprt_closed_form_is_the_normal_mixture(difference, variance, tau2):
    sd = math.sqrt(variance)
    integrand = lambda theta: stats.norm.pdf(difference, theta, sd) * stats.norm.pdf(theta, 0, math.sqrt(tau2))
    mixture, _ = integrate.quad(integrand, -20 * math.sqrt(tau2), 20 * math.sqrt(tau2), points=[0.0, difference])
    ratio = mixture / stats.norm.pdf(difference, 0, sd)
    assert msprt_p_value(difference, variance, tau2) == pytest.approx(min(1.0, 1 / ratio), rel=1e-6)


def test_msprt_works_elementwise_and_handles_zero_variance():
    differences, variances = np.array([0.05, 0.0, 0.2, 0.0]), np.array([0.0004, 0.0004, 0.0, 0.0])
    p_values = msprt_p_value(differences, variances, 0.0016)
    assert p_values == pytest.approx([msprt_p_value(d, v, 0.0016) for d, v in zip(differences, variances)])
    assert p_values[1] == 1.0 and p_values[2] == 0.0 and p_values[3] == 1.0


def stream(rng, baseline_rate: float, candidate_rate: float, step: int, steps: int):
    """Cumulative (baseline, candidate) Proportions after each step of `step` samples per arm."""
    baseline = np.cumsum(rng.binomial(step, baseline_rate, steps))
    candidate = np.cumsum(rng.binomial(step, candidate_rate, steps))
    for k in range(steps):
        yield Proportion(int(baseline[k]), step * (k + 1)), Proportion(int(candidate[k]), step * (k + 1))


def test_msprt_p_value_falls_with_a_real_effect():
    rng = np.random.default_rng(5)
    p_values = [proportion_test(b, c).p_value_sequential for b, c in stream(rng, 0.80, 0.85, step=100, steps=40)]
    running_minimum = np.minimum.accumulate(p_values)
    assert running_minimum[-1] < 1e-3
    assert p_values[-1] < p_values[19] < p_values[4] < p_values[0]
    assert np.argmax(running_minimum < 0.05) > 3  # not at the first look: evidence accrues


def test_msprt_keeps_false_positives_under_alpha_when_peeked_but_fixed_test_does_not():
    rng = np.random.default_rng(2024)
    runs, fixed_hits, sequential_hits = 150, 0, 0
    for _ in range(runs):
        results = [proportion_test(b, c) for b, c in stream(rng, 0.80, 0.80, step=100, steps=30)]
        fixed_hits += any(r.p_value_fixed < 0.05 for r in results)
        sequential_hits += any(r.p_value_sequential < 0.05 for r in results)
    assert sequential_hits / runs <= 0.05
    assert fixed_hits / runs > 0.12  # peeking 30 times at a fixed-horizon test inflates it


def window(requests=1000, errors=10, n=0, correct=0, reward=None, latency=(50.0, 100.0), complete=True) -> dict:
    reward_n, reward_mean, reward_var = reward or (0, None, None)
    return {
        "agent": "sentiment", "version": "?", "since": 0.0, "until": 1.0, "complete": complete,
        "requests": requests, "errors": errors, "error_rate": errors / requests if requests else None,
        "p50_ms": latency[0], "p95_ms": None, "p99_ms": None,
        "latency_mean_ms": latency[0], "latency_var_ms2": latency[1], "labels": {}, "confidence_mean": None,
        "feedback": {"n": n, "correct": correct, "accuracy": correct / n if n else None,
                     "reward_n": reward_n, "reward_mean": reward_mean, "reward_var": reward_var},
    }


def by_metric(report: dict, candidate: str) -> dict:
    return {c["metric"]: c for c in report["comparisons"] if c["candidate"] == candidate}


def test_report_shape_baseline_and_primary_metric():
    report = experiment_report("sentiment", {
        "v2": window(requests=800, errors=8, n=400, correct=330),
        "v1": window(requests=5000, errors=50, n=2000, correct=1600),
    })
    assert report["baseline"] == "v1"  # the most requests
    assert report["primary_metric"] == "accuracy"
    assert report["versions"]["v1"] == {"requests": 5000, "error_rate": 0.01, "p50_ms": 50.0, "latency_mean_ms": 50.0,
                                        "complete": True, "accuracy": 0.8}
    assert "mean_reward" not in report["versions"]["v2"]
    assert [c["metric"] for c in report["comparisons"]] == ["accuracy", "error_rate", "latency_mean_ms"]
    accuracy = report["comparisons"][0]
    assert accuracy["difference"] == pytest.approx(330 / 400 - 0.8)
    assert accuracy["samples"] == {"baseline": 2000, "candidate": 400}
    low, high = accuracy["ci95"]
    assert low < accuracy["difference"] < high
    assert set(accuracy) == {"baseline", "candidate", "metric", "difference", "ci95", "p_value_fixed",
                             "p_value_sequential", "decision", "samples"}


def test_primary_metric_falls_back_to_reward_then_error_rate():
    with_reward = {"v1": window(reward=(500, 0.4, 0.2)), "v2": window(reward=(300, 0.5, 0.2))}
    assert experiment_report("a", with_reward)["primary_metric"] == "mean_reward"
    assert experiment_report("a", with_reward)["comparisons"][0]["metric"] == "mean_reward"
    assert experiment_report("a", {"v1": window(), "v2": window()})["primary_metric"] == "error_rate"


def test_metric_missing_on_one_side_is_not_compared():
    report = experiment_report("a", {"v1": window(n=500, correct=400), "v2": window(n=0)})
    assert "accuracy" not in by_metric(report, "v2")
    assert report["primary_metric"] == "accuracy"


def test_decisions_follow_the_sequential_p_value_and_the_metric_direction():
    report = experiment_report("a", {
        "v1": window(requests=20_000, errors=400, n=5000, correct=4000, latency=(50.0, 100.0)),
        "better": window(requests=20_000, errors=100, n=5000, correct=4300, latency=(40.0, 100.0)),
        "worse": window(requests=20_000, errors=900, n=5000, correct=3700, latency=(60.0, 100.0)),
        "same": window(requests=20_000, errors=402, n=5000, correct=4004, latency=(50.1, 100.0)),
    }, baseline="v1")
    for metric in ("accuracy", "error_rate", "latency_mean_ms"):
        assert by_metric(report, "better")[metric]["decision"] == "candidate_better"
        assert by_metric(report, "worse")[metric]["decision"] == "candidate_worse"
        assert by_metric(report, "same")[metric]["decision"] == "no_difference_yet"


def test_fixed_significance_alone_does_not_decide():
    # 0.80 vs 0.83 on 2000 each: the fixed test says p ~ 0.015, the always-valid one not yet.
    comparison = experiment_report("a", {"v1": window(n=2000, correct=1600), "v2": window(n=2000, correct=1660)},
                                   baseline="v1")["comparisons"][0]
    assert comparison["p_value_fixed"] < 0.05 <= comparison["p_value_sequential"]
    assert comparison["decision"] == "no_difference_yet"


def test_unknown_baseline_is_not_found_and_no_windows_is_an_empty_report():
    with pytest.raises(NotFound):
        experiment_report("a", {"v1": window()}, baseline="v9")
    assert experiment_report("a", {}) == {"agent": "a", "baseline": None, "primary_metric": None,
                                          "versions": {}, "comparisons": []}


def test_incomplete_window_is_flagged():
    report = experiment_report("a", {"v1": window(), "v2": window(complete=False)})
    assert report["versions"]["v2"]["complete"] is False
