"""actors.drift without Ray: the three tests flag shifted windows and pass same-distribution
ones (seeded), DriftWatch's windows, alerts and report, and reading profiles from the registry."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from scipy.stats import ks_2samp

from actors.drift import (
    DriftWatch,
    LengthProfile,
    Profile,
    Projection,
    confidence_test,
    input_test,
    prediction_test,
    registry_references,
)
from cluster.config import DriftSettings
from cluster.errors import ConfigError
from cluster.registry import ModelRegistry
from cluster.storage import Storage

LABELS = ("a", "b", "c")
SHARES = (0.5, 0.3, 0.2)
K = 4
MODEL = "registry://intent:v1"
ALPHA = 0.01


@dataclass
class Outcome:
    agent: str
    version: str
    model: str | None
    ts: float | None
    label: str | None
    confidence: float | None
    features: tuple[float, ...] | None
    kind: str | None = None


def reference_profile(seed: int = 0) -> Profile:
    """Labels a/b/c at 50/30/20%, confidences ~ Beta(5, 2), inputs ~ N(0, I) in k=4 (identity projection)."""
    rng = np.random.default_rng(seed)
    return Profile(
        lengths=LengthProfile(quantiles={"p50": 30.0}, histogram_edges=[0.0, 60.0], histogram_counts=[100]),
        projection=Projection(mean=[0.0] * K, components=np.eye(K).tolist(), explained_variance_ratio=[0.25] * K),
        reference=rng.normal(size=(1000, K)).tolist(),
        labels={label: int(share * 3000) for label, share in zip(LABELS, SHARES)},
        confidences=rng.beta(5, 2, 2000).round(4).tolist(),
        train_rows=2000,
        validation_rows=3000,
    )


def stream(n: int, seed: int, *, shares=SHARES, confidence=(5, 2), shift: float = 0.0, start_ts: float = 0.0, model: str = MODEL) -> list[Outcome]:
    """``n`` request outcomes; by default from the reference's own distributions."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(LABELS, size=n, p=shares)
    confidences = rng.beta(*confidence, n).round(4)
    features = rng.normal(size=(n, K))
    features[:, 1] += shift
    return [
        Outcome("intents", "v1", model, start_ts + i, str(labels[i]), float(confidences[i]), tuple(features[i]))
        for i in range(n)
    ]


def watch(window: int = 200, lookup=None) -> DriftWatch:
    return DriftWatch(DriftSettings(window_requests=window, p_value=ALPHA), lookup or (lambda model: reference_profile()), clock=lambda: 99.0)


def feed(drift: DriftWatch, outcomes: list[Outcome]) -> list[dict]:
    return [alert for outcome in outcomes for alert in drift.observe(outcome)]


# -- the tests on their own ------------------------------------------------------------------------


def test_prediction_test_flags_a_shifted_label_mix_and_passes_the_same_mix():
    reference = reference_profile().labels
    rng = np.random.default_rng(1)
    same = prediction_test(reference, list(rng.choice(LABELS, 200, p=SHARES)), ALPHA, np.random.default_rng(0))
    shifted = prediction_test(reference, list(rng.choice(LABELS, 200, p=(0.25, 0.3, 0.45))), ALPHA, np.random.default_rng(0))
    assert not same["drift"] and same["p_value"] > ALPHA
    assert shifted["drift"] and shifted["p_value"] <= ALPHA and shifted["stat"] > same["stat"]


def test_prediction_test_counts_labels_the_reference_never_predicted():
    result = prediction_test({"a": 900, "b": 100}, ["a"] * 150 + ["NEUTRAL"] * 50, ALPHA, np.random.default_rng(0))
    assert result["drift"] and result["p_value"] < 0.002


def test_prediction_test_of_one_label_on_both_sides_is_no_drift():
    assert prediction_test({"a": 10}, ["a"] * 30, ALPHA, np.random.default_rng(0)) == {"stat": 0.0, "p_value": 1.0, "drift": False}


def test_confidence_test_flags_lower_confidence_and_passes_the_same_distribution():
    rng = np.random.default_rng(2)
    reference = rng.beta(5, 2, 2000)
    same, lower = confidence_test(reference, rng.beta(5, 2, 200), ALPHA), confidence_test(reference, rng.beta(3, 2, 200), ALPHA)
    assert not same["drift"] and same["p_value"] > ALPHA
    assert lower["drift"] and lower["stat"] > same["stat"]


def test_input_test_flags_a_shift_in_one_dimension_with_bonferroni():
    rng = np.random.default_rng(3)
    reference, window = rng.normal(size=(1000, K)), rng.normal(size=(200, K))
    assert not input_test(reference, window, ALPHA)["drift"]
    window[:, 2] += 0.4
    result = input_test(reference, window, ALPHA)
    raw = ks_2samp(reference[:, 2], window[:, 2])
    assert result == {"stat": pytest.approx(raw.statistic), "p_value": pytest.approx(raw.pvalue * K), "drift": True}


def test_bonferroni_keeps_a_borderline_dimension_from_alarming():
    """One dimension's raw p-value under alpha but over alpha / k is not drift."""
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(1000, K))
    for seed in range(200):
        window = np.random.default_rng(seed).normal(size=(200, K))
        p_values = ks_2samp(reference, window, axis=0).pvalue
        if ALPHA / K < p_values.min() <= ALPHA:
            result = input_test(reference, window, ALPHA)
            assert not result["drift"] and result["p_value"] == pytest.approx(p_values.min() * K)
            return
    pytest.fail("no borderline window among 200 seeds")


@pytest.mark.parametrize("test", [
    lambda window: prediction_test({"a": 5, "b": 5}, ["a"] * window, ALPHA, np.random.default_rng(0)),
    lambda window: confidence_test([0.5] * 50, [0.9] * window, ALPHA),
    lambda window: input_test(np.zeros((50, K)), np.ones((window, K)), ALPHA),
])
def test_a_test_with_too_few_values_is_not_run(test):
    assert test(19) == {"stat": None, "p_value": None, "drift": False}
    assert test(20)["p_value"] is not None


# -- DriftWatch -----------------------------------------------------------------------------------


def test_same_distribution_windows_rarely_alert():
    """Three tests at alpha 0.01 over 20 windows: 0.6 false alarms expected; 3 or more is a
    miscalibrated test."""
    drift = watch()
    assert len(feed(drift, stream(200 * 20, seed=4))) <= 2
    entry = drift.report()["intents"]["v1"]
    assert entry["alert"] is False and entry["window_end"] == 3999.0
    assert all(entry[kind]["p_value"] > ALPHA for kind in ("prediction", "confidence", "input"))


@pytest.mark.parametrize(("kind", "shifted"), [
    ("prediction", {"shares": (0.2, 0.3, 0.5)}),
    ("confidence", {"confidence": (2, 2)}),
    ("input", {"shift": 0.5}),
])
def test_each_kind_of_drift_alerts_alone(kind, shifted):
    drift = watch()
    alerts = feed(drift, stream(200, seed=5, **shifted))
    assert [alert["kind"] for alert in alerts] == [kind]
    assert alerts[0] | {"stat": None, "p_value": None} == {
        "agent": "intents", "version": "v1", "model": MODEL, "kind": kind, "stat": None, "p_value": None, "window_end": 199.0,
    }
    assert alerts[0]["p_value"] <= ALPHA
    entry = drift.report()["intents"]["v1"]
    assert entry["alert"] is True and entry[kind]["drift"] is True
    assert [name for name in ("prediction", "confidence", "input") if entry[name]["drift"]] == [kind]


def test_a_window_is_tested_only_when_full_and_then_starts_again():
    drift = watch(window=50)
    shifted = stream(100, seed=6, shift=1.0)
    assert feed(drift, shifted[:49]) == [] and drift.report() == {}
    assert [alert["kind"] for alert in drift.observe(shifted[49])] == ["input"]
    assert feed(drift, stream(49, seed=7, start_ts=500.0)) == []
    assert drift.report()["intents"]["v1"]["window_end"] == 49.0


def test_versions_are_watched_apart():
    drift = watch(window=50)
    for outcome in stream(50, seed=8):
        drift.observe(outcome)
    shifted = [Outcome("intents", "v2", o.model, o.ts, o.label, o.confidence, o.features) for o in stream(50, seed=9, shift=1.0)]
    assert {alert["version"] for alert in feed(drift, shifted)} == {"v2"}
    report = drift.report()["intents"]
    assert (report["v1"]["alert"], report["v2"]["alert"]) == (False, True)


def test_references_are_looked_up_once_per_model_and_unprofiled_models_are_skipped():
    calls = []

    def lookup(model: str) -> Profile | None:
        calls.append(model)
        return reference_profile() if model == MODEL else None

    drift = watch(window=50, lookup=lookup)
    feed(drift, stream(120, seed=10) + stream(120, seed=11, model="registry://other:v1"))
    assert calls == [MODEL, "registry://other:v1"]
    assert list(drift.report()["intents"]) == ["v1"]


def test_outcomes_without_signals_model_or_request_kind_do_not_count():
    drift = watch(window=20)
    error = Outcome("intents", "v1", MODEL, 1.0, None, None, None)
    shadow = Outcome("intents", "v1", MODEL, 1.0, "a", 0.9, (0.0,) * K, kind="shadow")
    local = Outcome("intents", "v1", None, 1.0, "a", 0.9, (0.0,) * K)
    feed(drift, [error, shadow, local] * 30)
    assert drift.report() == {}


def test_a_new_model_for_the_same_version_starts_a_new_window():
    drift = watch(window=50)
    feed(drift, stream(30, seed=12, model="registry://intent:v2"))
    feed(drift, stream(30, seed=13))
    assert drift.report() == {}
    feed(drift, stream(20, seed=14, start_ts=30.0))
    assert drift.report()["intents"]["v1"]["window_end"] == 49.0


def test_features_of_another_width_are_ignored_and_a_missing_ts_uses_the_clock():
    drift = watch(window=30)
    outcomes = [Outcome("intents", "v1", MODEL, None, o.label, o.confidence, o.features[:2]) for o in stream(30, seed=15)]
    feed(drift, outcomes)
    entry = drift.report()["intents"]["v1"]
    assert entry["input"] == {"stat": None, "p_value": None, "drift": False}
    assert entry["prediction"]["p_value"] is not None and entry["window_end"] == 99.0


def test_report_is_a_copy():
    drift = watch(window=20)
    feed(drift, stream(20, seed=16))
    drift.report()["intents"]["v1"]["prediction"]["drift"] = True
    assert drift.report()["intents"]["v1"]["prediction"]["drift"] is False


# -- profiles in the registry -------------------------------------------------------------------


def register(registry: ModelRegistry, tmp_path, extra: dict) -> str:
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "weights.bin").write_bytes(b"weights")
    manifest = registry.register(
        "intent", model_dir, task="sequence-classification", base_model="random", labels=list(LABELS),
        metrics={"accuracy": 1.0}, dataset={"uri": "data.jsonl", "sha256": "0" * 64, "rows": 3}, recipe={}, extra=extra,
    )
    return manifest.version


def test_registry_references_read_the_manifest_profile(tmp_path):
    registry = ModelRegistry(Storage(str(tmp_path / "store")))
    profile = reference_profile()
    register(registry, tmp_path, {"profile": profile.model_dump(mode="json")})
    register(registry, tmp_path, {})
    registry.set_alias("intent", "v1", "champion")
    reference = registry_references(str(tmp_path / "store"))
    assert reference("registry://intent:v1") == profile
    assert reference("registry://intent@champion") == profile
    assert reference("registry://intent:v2") is None
    assert reference("registry://intent:v7") is None and reference("registry://missing@champion") is None
    assert reference(str(tmp_path / "model")) is None


def test_a_malformed_profile_is_a_config_error(tmp_path):
    registry = ModelRegistry(Storage(str(tmp_path / "store")))
    register(registry, tmp_path, {"profile": {"labels": {}}})
    with pytest.raises(ConfigError, match="drift profile of intent:v1 is invalid"):
        registry_references(str(tmp_path / "store"))("registry://intent:v1")


def test_profile_rejects_rows_of_the_wrong_width():
    raw = reference_profile().model_dump()
    with pytest.raises(ValueError, match="every reference row needs 4 values"):
        Profile.model_validate(raw | {"reference": [[0.0] * 3] * 30})
    with pytest.raises(ValueError, match="every component needs 5 values"):
        Profile.model_validate(raw | {"projection": raw["projection"] | {"mean": [0.0] * 5}})
