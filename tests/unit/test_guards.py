"""Rollout guards: each metric, each verdict, inconclusive on thin or lost data, and the false
rollback rate of a good candidate against the detection rate of a bad one."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from actors.guards import check_guards, evaluate, shadow_view
from cluster.config import GuardSettings
from cluster.errors import ValidationFailed

LABELS = {"billing": 0.4, "refund": 0.25, "cancel": 0.15, "other": 0.2}


def window(requests=300, errors=0, p50=40.0, p95=90.0, p99=140.0, labels=None, complete=True, shadow=None, feedback=None) -> dict:
    """A window summary in the brief's format (only what guards read)."""
    return {
        "complete": complete,
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else 0.0,
        "p50_ms": p50 if requests else None,
        "p95_ms": p95 if requests else None,
        "p99_ms": p99 if requests else None,
        "labels": labels if labels is not None else {},
        "shadow": shadow or {"requests": 0, "agreement": None, "agreement_n": 0, "p50_ms_delta": None, "error_rate_delta": None},
        "feedback": feedback or {"n": 0, "correct": 0, "accuracy": None, "reward_n": 0, "reward_mean": None, "reward_var": None},
    }


def guard(text: str) -> GuardSettings:
    return GuardSettings.model_validate(text)


def draw_labels(rng: random.Random, n: int, shares: dict[str, float]) -> dict[str, int]:
    return dict(Counter(rng.choices(list(shares), weights=list(shares.values()), k=n)))


def test_error_rate_passes_on_a_clean_window_of_min_requests():
    check = evaluate(guard("error_rate<0.01"), window(requests=200, errors=0), None, 200)
    assert (check.verdict, check.observed, check.threshold) == ("pass", 0.0, 0.01)


def test_error_rate_fails_on_injected_errors_with_observed_and_threshold():
    check = evaluate(guard("error_rate<0.01"), window(requests=200, errors=10), None, 200)
    assert (check.verdict, check.observed, check.threshold) == ("fail", 0.05, 0.01)
    assert "lower bound" in check.reason


def test_a_violation_within_noise_waits_for_more_data_then_fails():
    slightly_over = evaluate(guard("error_rate<0.01"), window(requests=200, errors=3), None, 200)
    assert slightly_over.verdict == "inconclusive" and "not significantly" in slightly_over.reason
    sustained = evaluate(guard("error_rate<0.01"), window(requests=3000, errors=60), None, 200)
    assert sustained.verdict == "fail"


@pytest.mark.parametrize(
    "text, candidate, words",
    [
        ("error_rate<0.01", window(requests=199), "199 requests"),
        ("p95_ms<500", window(requests=10), "10 requests"),
        ("labels>0.01", window(requests=300, labels={"a": 150}), "150 labelled"),
        ("agreement>0.9", window(shadow={"requests": 400, "agreement": 1.0, "agreement_n": 50}), "50 shadowed"),
        ("accuracy>0.8", window(feedback={"n": 20, "correct": 20, "accuracy": 1.0}), "20 feedback"),
        ("mean_reward>0.5", window(feedback={"n": 0, "reward_n": 3, "reward_mean": 1.0, "reward_var": 0.0}), "3 rewards"),
    ],
)
def test_thin_data_is_inconclusive_never_a_pass(text, candidate, words):
    check = evaluate(guard(text), candidate, window(requests=5000, labels={"a": 2500, "b": 2500}), 200)
    assert check.verdict == "inconclusive" and words in check.reason


@pytest.mark.parametrize("text", ["error_rate<0.01", "p95_ms<1.2x", "labels>0.01", "agreement>0.5"])
def test_an_incomplete_candidate_window_is_inconclusive_however_good(text):
    shadow = {"requests": 9000, "agreement": 1.0, "agreement_n": 9000}
    perfect = window(requests=10_000, labels={"a": 10_000}, complete=False, shadow=shadow)
    check = evaluate(guard(text), perfect, window(requests=10_000, labels={"a": 10_000}), 200)
    assert check.verdict == "inconclusive" and "incomplete" in check.reason


def test_relative_latency_reports_the_absolute_threshold_and_the_baseline():
    baseline = window(requests=4000, p50=40, p95=100, p99=150)
    same = evaluate(guard("p95_ms<1.2x"), window(requests=300, p50=41, p95=104, p99=160), baseline, 200)
    assert (same.verdict, same.threshold, same.baseline, same.observed) == ("pass", pytest.approx(120.0), 100.0, 104.0)
    doubled = evaluate(guard("p95_ms<1.2x"), window(requests=300, p50=80, p95=200, p99=300), baseline, 200)
    assert doubled.verdict == "fail" and doubled.observed == 200.0


def test_a_p95_just_over_a_relative_threshold_on_few_requests_waits():
    baseline = window(requests=4000, p50=40, p95=100, p99=150)
    check = evaluate(guard("p95_ms<1.2x"), window(requests=200, p50=42, p95=125, p99=180), baseline, 200)
    assert check.verdict == "inconclusive"


@pytest.mark.parametrize(
    "baseline, words",
    [
        (None, "no baseline"),
        (window(requests=4000, complete=False), "baseline's window is incomplete"),
        (window(requests=20), "20 samples"),
    ],
)
def test_a_relative_guard_without_baseline_data_is_inconclusive(baseline, words):
    check = evaluate(guard("p95_ms<1.2x"), window(requests=300), baseline, 200)
    assert check.verdict == "inconclusive" and words in check.reason and check.threshold is None


def test_absolute_guards_need_no_baseline():
    assert evaluate(guard("p99_ms<=200"), window(requests=300, p99=150), None, 200).verdict == "pass"


def test_labels_pass_for_the_same_distribution_and_fail_for_a_different_one():
    rng = random.Random(3)
    baseline = window(requests=4000, labels=draw_labels(rng, 4000, LABELS))
    same = evaluate(guard("labels>0.01"), window(labels=draw_labels(rng, 300, LABELS)), baseline, 200)
    assert same.verdict == "pass" and same.observed > 0.01 and same.threshold == 0.01
    shifted = {"billing": 0.2, "refund": 0.25, "cancel": 0.35, "other": 0.2}
    differ = evaluate(guard("labels>0.01"), window(labels=draw_labels(rng, 300, shifted)), baseline, 200)
    assert differ.verdict == "fail" and differ.observed < 1e-4


def test_labels_p_value_between_threshold_and_fail_level_waits():
    baseline = window(requests=2000, labels={"a": 1000, "b": 1000})
    # 120 vs 100 of 220: p ≈ 0.2 passes; 130/90 gives p ≈ 0.006, under 0.01 but not under 1e-4.
    assert evaluate(guard("labels>0.01"), window(labels={"a": 120, "b": 100}), baseline, 200).verdict == "pass"
    waiting = evaluate(guard("labels>0.01"), window(labels={"a": 135, "b": 85}), baseline, 200)
    assert waiting.verdict == "inconclusive" and 1e-4 < waiting.observed < 0.01


def test_labels_need_a_baseline():
    check = evaluate(guard("labels>0.01"), window(labels={"a": 300}), None, 200)
    assert check.verdict == "inconclusive" and "no baseline" in check.reason


def test_agreement_comes_from_the_shadow_comparison():
    good = window(shadow={"requests": 500, "agreement": 0.96, "agreement_n": 480})
    bad = window(shadow={"requests": 500, "agreement": 0.6, "agreement_n": 480})
    assert evaluate(guard("agreement>0.9"), good, None, 200).verdict == "pass"
    check = evaluate(guard("agreement>0.9"), bad, None, 200)
    assert (check.verdict, check.observed) == ("fail", 0.6)


def test_accuracy_and_mean_reward_come_from_feedback():
    feedback = {"n": 400, "correct": 260, "accuracy": 0.65, "reward_n": 400, "reward_mean": 0.2, "reward_var": 0.05}
    assert evaluate(guard("accuracy>0.9"), window(feedback=feedback), None, 200).verdict == "fail"
    assert evaluate(guard("mean_reward>=0.1"), window(feedback=feedback), None, 200).verdict == "pass"
    assert evaluate(guard("mean_reward>0.5"), window(feedback=feedback), None, 200).verdict == "fail"
    baseline = window(feedback={**feedback, "accuracy": 0.7, "n": 4000})
    relative = evaluate(guard("accuracy>=0.9x"), window(feedback=feedback), baseline, 200)
    assert relative.verdict == "pass" and relative.threshold == pytest.approx(0.63)


def test_shadow_view_derives_the_error_rate_from_the_baseline_and_the_delta():
    candidate = window(requests=0, shadow={"requests": 400, "agreement": 0.9, "agreement_n": 390, "error_rate_delta": 0.04})
    view = shadow_view(candidate, window(requests=4000, errors=40))
    assert view["requests"] == 400 and view["error_rate"] == pytest.approx(0.05)
    assert evaluate(guard("error_rate<0.01"), view, None, 200).verdict == "fail"
    lost = shadow_view(candidate, window(requests=4000, complete=False))
    assert evaluate(guard("agreement>0.5"), lost, None, 200).verdict == "inconclusive"


@pytest.mark.parametrize(
    "texts, shadowed, words",
    [
        (["labels>1.5x"], False, "absolute"),
        (["labels<0.05"], False, "use > or >="),
        (["agreement>0.9x"], True, "absolute"),
        (["agreement>0.9"], False, "compare_percent"),
    ],
)
def test_guards_that_could_never_pass_are_refused(texts, shadowed, words):
    with pytest.raises(ValidationFailed, match=words):
        check_guards([guard(t) for t in texts], shadowed)


def test_good_candidates_are_not_failed_and_bad_ones_are():
    """Per look, over seeded bakes of 300 requests: a good candidate's chance of failing a
    look is about FAIL_ALPHA (2e-4 measured for labels, nil for errors), where failing on the
    point estimate would fail about 1 look in 100; a bad one fails nearly every look."""
    rng = np.random.default_rng(11)
    names, shares = list(LABELS), list(LABELS.values())
    base_labels = window(requests=5700, labels=dict(zip(names, rng.multinomial(5700, shares).tolist())))

    def verdicts(text: str, candidates: list[dict]) -> Counter:
        return Counter(evaluate(guard(text), c, base_labels, 200).verdict for c in candidates)

    def labelled(counts) -> list[dict]:
        return [window(labels=dict(zip(names, row.tolist()))) for row in counts]

    good_errors = verdicts("error_rate<0.01", [window(errors=int(e)) for e in rng.binomial(300, 0.002, 2000)])
    good_labels = verdicts("labels>0.01", labelled(rng.multinomial(300, shares, 1000)))
    bad_errors = verdicts("error_rate<0.01", [window(errors=int(e)) for e in rng.binomial(300, 0.05, 2000)])
    bad_labels = verdicts("labels>0.01", labelled(rng.multinomial(300, [0.25] * 4, 200)))
    assert good_errors["fail"] == 0 and good_labels["fail"] <= 1
    assert good_errors["pass"] + good_labels["pass"] >= 0.97 * 3000
    assert bad_errors["fail"] >= 0.9 * 2000 and bad_errors["pass"] == 0
    assert bad_labels["fail"] >= 0.9 * 200
