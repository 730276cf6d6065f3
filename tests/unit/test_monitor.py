"""Monitor: counts, error rates, quantiles, the sliding window and the Prometheus text."""

from __future__ import annotations

import random

import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.monitor import LogHistogram, Monitor


class FakeClock:
    def __init__(self, now: float = 1_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def outcome(ts: float, latency_ms: float = 10.0, status: int = 200, agent: str | None = "sentiment", **extra) -> dict:
    return {"ts": ts, "agent": agent, "version": "v1" if agent else None, "status": status, "latency_ms": latency_ms,
            "routed_by": "router", "label": None, **extra}


def samples(text: bytes) -> dict[tuple[str, tuple], float]:
    """Every sample of the exposition keyed by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_counts_errors_and_quantiles(clock):
    monitor = Monitor(clock=clock)
    latencies = list(range(1, 101))
    random.Random(0).shuffle(latencies)
    monitor.record([outcome(clock.now, ms, status=503 if ms % 10 == 0 else 200) for ms in latencies])

    entry = monitor.stats()["agents"]["sentiment"]["v1"]
    for view in ("since_start", "last_minute"):
        stats = entry[view]
        assert (stats["requests"], stats["errors"]) == (100, 10)
        assert stats["error_rate"] == pytest.approx(0.1)
        assert stats["p50_ms"] == pytest.approx(50, rel=0.02)
        assert stats["p95_ms"] == pytest.approx(95, rel=0.02)
        assert stats["p99_ms"] == pytest.approx(99, rel=0.02)
    assert entry["last_minute"]["p50_ms"] == 50  # the window is exact


def test_client_errors_are_not_errors(clock):
    monitor = Monitor(clock=clock)
    monitor.record([outcome(clock.now, status=422), outcome(clock.now, status=429), outcome(clock.now, status=500)])
    stats = monitor.stats()["agents"]["sentiment"]["v1"]["since_start"]
    assert (stats["requests"], stats["errors"]) == (3, 1)


def test_log_histogram_relative_error_and_bounded_memory():
    histogram = LogHistogram(relative_accuracy=0.01)
    values = [random.Random(1).lognormvariate(3, 2) for _ in range(20_000)]
    for value in values:
        histogram.add(value)
    ordered = sorted(values)
    for q in (0.5, 0.9, 0.99):
        exact = ordered[int(q * len(ordered)) - 1]
        assert histogram.quantile(q) == pytest.approx(exact, rel=0.02)
    assert len(histogram._buckets) < 2_000
    assert LogHistogram().quantile(0.5) is None


def test_window_expires_without_new_traffic(clock):
    monitor = Monitor(window_s=60, clock=clock)
    monitor.record([outcome(clock.now, 100.0, status=500)])
    clock.now += 30
    monitor.record([outcome(clock.now, 10.0)])

    clock.now += 40  # the first outcome is now 70 s old, the second 40 s
    window = monitor.stats()["agents"]["sentiment"]["v1"]["last_minute"]
    assert (window["requests"], window["errors"], window["p50_ms"]) == (1, 0, 10.0)

    clock.now += 30
    stats = monitor.stats()["agents"]["sentiment"]["v1"]
    assert stats["last_minute"] == {"requests": 0, "errors": 0, "error_rate": 0.0, "p50_ms": None, "p95_ms": None,
                                    "p99_ms": None, "labels": {}}
    assert stats["since_start"]["requests"] == 2
    assert stats["since_start"]["errors"] == 1


def test_out_of_order_outcomes_are_filtered_by_their_own_time(clock):
    monitor = Monitor(window_s=60, clock=clock)
    monitor.record([outcome(clock.now), outcome(clock.now - 120)])
    assert monitor.stats()["agents"]["sentiment"]["v1"]["last_minute"]["requests"] == 1


def test_window_is_bounded_by_sample_count(clock):
    monitor = Monitor(max_window_samples=10, clock=clock)
    monitor.record([outcome(clock.now, float(ms)) for ms in range(1, 26)])
    stats = monitor.stats()["agents"]["sentiment"]["v1"]
    assert stats["last_minute"]["requests"] == 10
    assert stats["last_minute"]["p50_ms"] == 20.0  # samples 16..25 remain
    assert stats["since_start"]["requests"] == 25


def test_labels_versions_and_route_decisions(clock):
    monitor = Monitor(clock=clock)
    monitor.record(
        [
            outcome(clock.now, label="POSITIVE"),
            outcome(clock.now, label="POSITIVE"),
            outcome(clock.now, label="NEGATIVE", routed_by="session"),
            {**outcome(clock.now, label="fr", routed_by="direct"), "agent": "language", "version": "v2"},
            outcome(clock.now, agent=None, routed_by="none", unknown_extra="ignored"),
        ]
    )
    stats = monitor.stats()
    assert stats["agents"]["sentiment"]["v1"]["since_start"]["labels"] == {"POSITIVE": 2, "NEGATIVE": 1}
    assert stats["agents"]["sentiment"]["v1"]["last_minute"]["labels"] == {"POSITIVE": 2, "NEGATIVE": 1}
    assert stats["agents"]["language"]["v2"]["since_start"]["labels"] == {"fr": 1}
    assert stats["agents"]["none"]["none"]["since_start"]["requests"] == 1
    assert stats["route_decisions"] == {"router": 2, "session": 1, "direct": 1, "none": 1}


def test_uptime_follows_the_clock(clock):
    monitor = Monitor(clock=clock)
    clock.now += 12.5
    assert monitor.stats()["uptime_s"] == 12.5


def test_bad_outcome_rejects_the_whole_batch(clock):
    monitor = Monitor(clock=clock)
    with pytest.raises(ValueError, match="latency_ms"):
        monitor.record([outcome(clock.now), {"ts": clock.now, "status": 200}])
    assert monitor.stats()["agents"] == {}


def test_prometheus_exposition(clock):
    monitor = Monitor(clock=clock)
    monitor.record(
        [outcome(clock.now, 3.0), outcome(clock.now, 40.0), outcome(clock.now, 2_000.0, status=500, label="NEGATIVE")]
        + [outcome(clock.now, 1.0, agent=None, routed_by="none")]
    )
    text = monitor.prometheus()
    values = samples(text)

    assert values["baton_requests_total", (("agent", "sentiment"), ("status", "200"), ("version", "v1"))] == 2
    assert values["baton_requests_total", (("agent", "sentiment"), ("status", "500"), ("version", "v1"))] == 1
    assert values["baton_requests_total", (("agent", "none"), ("status", "200"), ("version", "none"))] == 1
    bucket = "baton_request_latency_seconds_bucket"
    labels = (("agent", "sentiment"),)
    assert values[bucket, labels + (("le", "0.005"), ("version", "v1"))] == 1
    assert values[bucket, labels + (("le", "0.05"), ("version", "v1"))] == 2
    assert values[bucket, labels + (("le", "2.5"), ("version", "v1"))] == 3
    assert values[bucket, labels + (("le", "30.0"), ("version", "v1"))] == 3
    assert values["baton_request_latency_seconds_count", labels + (("version", "v1"),)] == 3
    assert values["baton_request_latency_seconds_sum", labels + (("version", "v1"),)] == pytest.approx(2.043)
    assert values["baton_route_decisions_total", (("routed_by", "router"),)] == 3
    assert values["baton_route_decisions_total", (("routed_by", "none"),)] == 1
    assert values["baton_labels_total", (("agent", "sentiment"), ("label", "NEGATIVE"), ("version", "v1"))] == 1
    assert values["baton_window_requests", labels + (("version", "v1"),)] == 3
    assert values["baton_window_error_rate", labels + (("version", "v1"),)] == pytest.approx(1 / 3)
    assert values["baton_window_latency_p95_seconds", labels + (("version", "v1"),)] == 2.0

    clock.now += 61
    assert samples(monitor.prometheus())["baton_window_requests", labels + (("version", "v1"),)] == 0


def test_instances_do_not_share_metrics(clock):
    first, second = Monitor(clock=clock), Monitor(clock=clock)
    first.record([outcome(clock.now)])
    assert b"baton_requests_total{" in first.prometheus()
    assert b"baton_requests_total{" not in second.prometheus()
