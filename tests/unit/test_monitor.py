"""Monitor: the outcome record, counts, quantiles, windows with shadow, feedback and cost, the
rebuild after a restart, the drift seam and the Prometheus text."""

from __future__ import annotations

import random

import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.monitor import DriftObserver, LogHistogram, Monitor, Outcome, parse_outcome
from actors.outcome_log import OUTCOME_COLUMNS
from cluster.config import CostSettings
from cluster.storage import Storage


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


def test_late_outcomes_land_in_time_order_within_a_window(clock):
    monitor = Monitor(window_s=60, clock=clock)
    for ts, latency in ((990, 1), (995, 2), (980, 3), (999, 4), (985, 5)):
        monitor.record([outcome(ts, latency_ms=latency)])
    assert monitor.window("sentiment", "v1", since=984, until=996)["requests"] == 3
    assert monitor.window("sentiment", "v1", since=980, until=985)["p50_ms"] == 3


def test_record_parsed_counts_as_record_does(clock):
    raw = [outcome(clock.now, latency_ms=ms) for ms in (5, 15, 25)]
    by_raw, by_parsed = Monitor(clock=clock), Monitor(clock=clock)
    by_raw.record(raw, batch_id="b-1")
    by_parsed.record_parsed([parse_outcome(o, clock.now) for o in raw], batch_id="b-1")
    by_parsed.record_parsed([parse_outcome(o, clock.now) for o in raw], batch_id="b-1")  # a redelivery
    assert by_parsed.stats() == by_raw.stats()


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


# --- the outcome record ------------------------------------------------------------------


def shadow(ts: float, latency_ms: float, primary_latency_ms: float, agreement: float | None = 1.0, status: int = 200,
           primary_status: int = 200, version: str = "v2") -> dict:
    return {"kind": "shadow", "ts": ts, "agent": "sentiment", "version": version, "primary_version": "v1", "status": status,
            "latency_ms": latency_ms, "primary_status": primary_status, "primary_latency_ms": primary_latency_ms,
            "agreement": agreement, "label": "POSITIVE"}


def feedback(ts: float, correct: bool | None = None, reward: float | None = None, version: str = "v1") -> dict:
    return {"kind": "feedback", "ts": ts, "agent": "sentiment", "version": version, "request_id": "r1",
            "correct": correct, "reward": reward}


def test_parse_outcome_reads_every_field_of_each_kind():
    request = parse_outcome(
        outcome(5.0, label="POSITIVE", confidence="0.9", features=[1, 2.5], model="registry://m:v3", request_id="r1",
                cpu_s=0.5, gpu_s=0.25, input_tokens=12, output_tokens=3), now=9.0,
    )
    assert request.kind == "request"
    assert (request.confidence, request.features, request.model, request.request_id) == (0.9, (1.0, 2.5), "registry://m:v3", "r1")
    assert (request.cpu_s, request.gpu_s, request.input_tokens, request.output_tokens) == (0.5, 0.25, 12, 3)

    mirrored = parse_outcome(shadow(5.0, 20.0, 10.0, agreement=0.5, primary_status=503), now=9.0)
    assert (mirrored.kind, mirrored.version, mirrored.primary_version) == ("shadow", "v2", "v1")
    assert (mirrored.primary_status, mirrored.primary_latency_ms, mirrored.agreement) == (503, 10.0, 0.5)

    judged = parse_outcome({**feedback(5.0, correct=False, reward=1), "ts": None}, now=9.0)
    assert (judged.kind, judged.ts, judged.correct, judged.reward, judged.status) == ("feedback", 9.0, False, 1.0, None)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({**outcome(1.0), "kind": "guess"}, "kind"),
        (feedback(1.0), "correct' or 'reward"),
        (feedback(1.0, correct="yes"), "correct"),
        (shadow(1.0, 1.0, 1.0, agreement=1.5), "agreement"),
        ({**shadow(1.0, 1.0, 1.0), "latency_ms": None}, "latency_ms"),
        (outcome(1.0, input_tokens="many"), "input_tokens"),
    ],
)
def test_parse_outcome_rejects_what_its_kind_cannot_use(raw, message):
    with pytest.raises(ValueError, match=message):
        parse_outcome(raw, now=1.0)


def test_the_log_stores_every_field_the_monitor_holds():
    assert set(OUTCOME_COLUMNS) == set(Outcome._fields) - {"features"}


# --- windows -------------------------------------------------------------------------------


def test_window_has_the_brief_shape_with_exact_statistics(clock):
    monitor = Monitor(clock=clock, prices=CostSettings(cpu_second=2.0))
    start = clock.now
    monitor.record(
        [outcome(start + i, float(ms), status=500 if ms == 40 else 200, label="POSITIVE" if ms < 30 else "NEGATIVE",
                 confidence=ms / 100, cpu_s=0.1, input_tokens=10) for i, ms in enumerate((10, 20, 30, 40))]
        + [shadow(start + 1, 30.0, 10.0, agreement=1.0), shadow(start + 2, 50.0, 20.0, agreement=0.0, status=503),
           shadow(start + 3, 40.0, 30.0, agreement=None)]
        + [feedback(start + 1, correct=True, reward=1.0), feedback(start + 2, correct=False, reward=0.0),
           feedback(start + 3, reward=0.5)]
    )
    clock.now += 10

    window = monitor.window("sentiment", "v1", since=start)
    assert window == {
        "agent": "sentiment", "version": "v1", "since": start, "until": clock.now, "complete": True, "complete_since": start,
        "requests": 4, "errors": 1, "error_rate": 0.25, "p50_ms": 20.0, "p95_ms": 40.0, "p99_ms": 40.0,
        "latency_mean_ms": 25.0, "latency_var_ms2": pytest.approx(500 / 3), "labels": {"POSITIVE": 2, "NEGATIVE": 2},
        "confidence_mean": pytest.approx(0.25),
        "feedback": {"n": 2, "correct": 1, "accuracy": 0.5, "reward_n": 3, "reward_mean": 0.5, "reward_var": 0.25},
        "shadow": {"requests": 0, "agreement": None, "agreement_n": 0, "p50_ms_delta": None, "error_rate_delta": None},
        "cost": {"cpu_s": pytest.approx(0.4), "gpu_s": 0, "input_tokens": 40, "output_tokens": 0},
    }
    candidate = monitor.window("sentiment", "v2", since=start)
    # Shadow outcomes count under the shadow version, in "shadow" only.
    assert (candidate["requests"], candidate["feedback"]["n"]) == (0, 0)
    assert candidate["shadow"] == {"requests": 3, "agreement": 0.5, "agreement_n": 2, "p50_ms_delta": 20.0,
                                   "error_rate_delta": pytest.approx(1 / 3)}


def test_window_bounds_are_inclusive_and_checked(clock):
    monitor = Monitor(clock=clock)
    monitor.record([outcome(clock.now + i, float(i)) for i in range(5)])
    assert monitor.window("sentiment", "v1", clock.now + 1, clock.now + 3)["requests"] == 3
    assert monitor.window("sentiment", "other", clock.now)["requests"] == 0
    with pytest.raises(ValueError, match="before since"):
        monitor.window("sentiment", "v1", clock.now + 3, clock.now + 1)


def test_a_window_before_complete_since_is_incomplete(clock):
    monitor = Monitor(window_s=60, retention_s=600, clock=clock)
    assert monitor.complete_since == clock.now
    monitor.record([outcome(clock.now - 5), outcome(clock.now)])  # a late report from before the start
    assert monitor.window("sentiment", "v1", clock.now - 10)["complete"] is False
    assert monitor.window("sentiment", "v1", clock.now)["complete"] is True

    clock.now += 700  # older outcomes than retention_s are gone, so is the completeness of their time
    assert monitor.complete_since == clock.now - 600
    assert monitor.window("sentiment", "v1", clock.now - 650)["complete"] is False


def test_dropping_outcomes_over_the_sample_cap_makes_their_time_incomplete(clock):
    monitor = Monitor(max_window_samples=3, clock=clock)
    start = clock.now
    monitor.record([outcome(start + i) for i in range(5)])
    assert monitor.complete_since > start + 1
    assert monitor.window("sentiment", "v1", start + 1)["complete"] is False
    window = monitor.window("sentiment", "v1", start + 2)
    assert (window["complete"], window["requests"]) == (True, 3)


# --- stats: shadow and cost ----------------------------------------------------------------


def test_stats_show_shadow_comparison_per_shadow_version(clock):
    monitor = Monitor(clock=clock)
    monitor.record([outcome(clock.now, 10.0)] + [shadow(clock.now, 30.0, 10.0, agreement=a) for a in (1.0, 1.0, 0.0, None)])
    clock.now += 120
    monitor.record([shadow(clock.now, 40.0, 20.0, agreement=0.0, status=500)])

    stats = monitor.stats()["agents"]["sentiment"]
    assert "shadow" not in stats["v1"]
    since_start = stats["v2"]["shadow"]
    assert since_start["requests"] == 5 and since_start["agreement_n"] == 4
    assert since_start["agreement"] == 0.5
    assert since_start["p50_ms_delta"] == pytest.approx(20.0, rel=0.03)
    assert since_start["error_rate_delta"] == pytest.approx(0.2)
    assert since_start["last_minute"] == {"requests": 1, "agreement": 0.0, "agreement_n": 1, "p50_ms_delta": 20.0,
                                          "error_rate_delta": 1.0}
    assert stats["v2"]["since_start"]["requests"] == 0  # shadow traffic is not served traffic
    assert monitor.stats()["route_decisions"] == {"router": 1}


def test_stats_price_cost_per_request_since_start_and_over_the_window(clock):
    prices = CostSettings(cpu_second=0.01, gpu_second=0.1, input_tokens_per_1k=1.0, output_tokens_per_1k=2.0, currency="EUR")
    monitor = Monitor(clock=clock, prices=prices)
    monitor.record([outcome(clock.now, cpu_s=2.0, gpu_s=1.0, input_tokens=1000, output_tokens=500)])
    clock.now += 120
    monitor.record([outcome(clock.now, cpu_s=4.0), outcome(clock.now)])

    cost = monitor.stats()["agents"]["sentiment"]["v1"]["cost"]
    since_start = cost["since_start"]
    # 6 CPU-s * 0.01 + 1 GPU-s * 0.1 + 1k input * 1.0 + 0.5k output * 2.0
    assert since_start == {
        "currency": "EUR", "requests": 3, "cpu_s": 6.0, "gpu_s": 1.0, "input_tokens": 1000, "output_tokens": 500,
        "cost_total": pytest.approx(2.16), "cpu_s_per_request": 2.0, "gpu_s_per_request": pytest.approx(1 / 3),
        "input_tokens_per_request": pytest.approx(1000 / 3), "output_tokens_per_request": pytest.approx(500 / 3),
        "cost_per_request": pytest.approx(0.72),
    }
    last_minute = cost["last_minute"]
    assert (last_minute["requests"], last_minute["cpu_s_per_request"]) == (2, 2.0)
    assert last_minute["cost_total"] == pytest.approx(0.04)
    clock.now += 120
    assert monitor.stats()["agents"]["sentiment"]["v1"]["cost"]["last_minute"]["cost_per_request"] is None


# --- durability ----------------------------------------------------------------------------


@pytest.fixture
def storage(tmp_path) -> Storage:
    return Storage(str(tmp_path / "store"))


def segment_files(storage: Storage) -> list[str]:
    return sorted(storage.fs.ls(storage.path("monitor", "outcomes"), detail=False))


def mixed_traffic(monitor: Monitor, clock: FakeClock, batches: int, step_s: float = 5.0) -> None:
    rng = random.Random(batches)
    for batch in range(batches):
        monitor.record(
            [outcome(clock.now + rng.random(), rng.lognormvariate(3, 1), status=rng.choice((200, 200, 200, 503)),
                     label=rng.choice(("POSITIVE", "NEGATIVE")), routed_by=rng.choice(("router", "session")),
                     confidence=rng.random(), cpu_s=rng.random() / 10, request_id=f"r{batch}-{i}", features=[rng.random()])
             for i in range(20)]
            + [shadow(clock.now, rng.uniform(5, 50), rng.uniform(5, 50), agreement=rng.choice((0.0, 1.0)))]
            + [feedback(clock.now, correct=rng.random() < 0.8)],
            batch_id=f"batch-{batch}",
        )
        clock.now += step_s


def views(monitor: Monitor, since: float) -> tuple:
    """What a restart must give back: windows of every version, the stats and the exposition."""
    stats = monitor.stats()
    del stats["uptime_s"]
    exposition = sorted(line for line in monitor.prometheus().decode().splitlines() if "uptime" not in line)
    windows = [monitor.window("sentiment", version, since) for version in ("v1", "v2")]
    return windows, stats, exposition


def test_a_restart_rebuilds_windows_and_counters(clock, storage):
    first = Monitor(clock=clock, storage=storage, checkpoint_s=60)
    started = clock.now
    mixed_traffic(first, clock, batches=50)  # 250 s: checkpoints at 60, 120, ... plus batches after the last
    clock.now += 30  # the actor dies and Ray starts a new one
    rebuilt = Monitor(clock=clock, storage=storage, checkpoint_s=60, settle_s=10)
    clock.now += 10  # reporters have resent what they held while it was down

    after = views(rebuilt, started)
    assert after == views(first, started)
    assert rebuilt.complete_since == started
    assert after[0][0]["complete"] is True and after[0][0]["requests"] == 1000
    assert after[1]["agents"]["sentiment"]["v1"]["since_start"]["requests"] == 1000


def test_windows_into_the_restart_gap_are_incomplete_until_reporters_resend(clock, storage):
    first = Monitor(clock=clock, storage=storage)
    started = clock.now
    first.record([outcome(started), outcome(started + 5)])
    clock.now += 20  # down after started + 5: reporters hold the outcomes since
    rebuilt = Monitor(clock=clock, storage=storage, settle_s=10)

    assert rebuilt.window("sentiment", "v1", started)["complete"] is False
    assert rebuilt.window("sentiment", "v1", started, until=started + 10)["complete"] is False
    assert rebuilt.window("sentiment", "v1", started, until=started + 1)["complete"] is True  # before the gap
    rebuilt.record([outcome(started + 10, status=500)])
    clock.now += 10
    window = rebuilt.window("sentiment", "v1", started)
    assert (window["complete"], window["requests"], window["errors"]) == (True, 3, 1)


def test_counters_since_start_outlive_the_retained_outcomes(clock, storage):
    first = Monitor(window_s=60, retention_s=600, clock=clock, storage=storage, checkpoint_s=60)
    started = clock.now
    mixed_traffic(first, clock, batches=100, step_s=10)  # 1000 s, beyond retention
    files_kept = segment_files(storage)
    rebuilt = Monitor(window_s=60, retention_s=600, clock=clock, storage=storage, checkpoint_s=60)

    assert rebuilt.stats()["agents"]["sentiment"]["v1"]["since_start"]["requests"] == 2000
    assert views(rebuilt, started) == views(first, started)
    window = rebuilt.window("sentiment", "v1", started)
    assert window["complete"] is False and window["requests"] < 2000
    # Retention removed the old segments; compaction merged the rest into files of up to retention_s / 10
    # each, beside the batches since the last checkpoint.
    assert "seg-000000000001-" not in files_kept[0]
    assert len(files_kept) <= 600 / 60 + 60 / 10 + 1


def test_retention_removes_old_segments(clock, storage):
    monitor = Monitor(window_s=60, retention_s=600, clock=clock, storage=storage, checkpoint_s=60)
    monitor.record([outcome(clock.now)])
    oldest = segment_files(storage)
    clock.now += 700
    monitor.record([outcome(clock.now)])
    monitor.checkpoint()
    remaining = segment_files(storage)
    assert oldest and not set(oldest) & set(remaining)
    assert len(remaining) == 1


def test_compaction_keeps_results_identical(clock, storage):
    monitor = Monitor(clock=clock, storage=storage, checkpoint_s=10_000)  # no checkpoint while traffic runs
    started = clock.now
    mixed_traffic(monitor, clock, batches=40)
    assert len(segment_files(storage)) == 40
    uncompacted = views(Monitor(clock=clock, storage=storage, checkpoint_s=10_000, settle_s=0), started)  # rebuilding compacts

    assert len(segment_files(storage)) == 1
    compacted = views(Monitor(clock=clock, storage=storage, checkpoint_s=10_000, settle_s=0), started)
    assert compacted == uncompacted == views(monitor, started)


def test_a_redelivered_batch_is_not_counted_twice_even_after_a_restart(clock, storage):
    monitor = Monitor(clock=clock, storage=storage)
    batch = [outcome(clock.now), outcome(clock.now, status=500)]
    monitor.record(batch, batch_id="b1")
    monitor.record(batch, batch_id="b1")
    assert monitor.stats()["agents"]["sentiment"]["v1"]["since_start"]["requests"] == 2

    restarted = Monitor(clock=clock, storage=storage)
    restarted.record(batch, batch_id="b1")
    restarted.record(batch, batch_id="b2")
    assert restarted.stats()["agents"]["sentiment"]["v1"]["since_start"]["requests"] == 4
    assert restarted.window("sentiment", "v1", clock.now)["requests"] == 4


def test_lost_segments_make_the_rebuilt_window_incomplete(clock, storage):
    first = Monitor(clock=clock, storage=storage)
    started = clock.now
    first.record([outcome(clock.now)])
    storage.fs.pipe_file(segment_files(storage)[0], b"torn")
    clock.now += 30

    rebuilt = Monitor(clock=clock, storage=storage)
    assert rebuilt.complete_since == clock.now
    assert rebuilt.window("sentiment", "v1", started)["complete"] is False
    clock.now += 30
    assert Monitor(clock=clock, storage=storage).complete_since == clock.now - 30  # the loss is remembered, not repeated


def test_a_batch_that_cannot_be_stored_is_not_counted(clock, storage, monkeypatch):
    monitor = Monitor(clock=clock, storage=storage)

    def refuse(*_args):
        raise OSError("storage is down")

    monkeypatch.setattr(monitor._log, "append", refuse)
    with pytest.raises(OSError):
        monitor.record([outcome(clock.now)])
    assert monitor.stats()["agents"] == {}


def test_a_monitor_on_an_object_store_rebuilds_too(clock):
    storage = Storage(f"memory://monitor-{random.Random().getrandbits(64):x}")
    first = Monitor(clock=clock, storage=storage)
    mixed_traffic(first, clock, batches=3)
    assert views(Monitor(clock=clock, storage=storage), clock.now - 100) == views(first, clock.now - 100)


# --- drift seam and metrics ------------------------------------------------------------------


class FakeDrift(DriftObserver):
    """Raises an alert on every outcome with label "odd"; reports prediction drift once it has."""

    def __init__(self):
        self.seen: list[Outcome] = []

    def observe(self, outcome: Outcome) -> list[dict]:
        if outcome.label == "boom":
            raise RuntimeError("detector bug")
        self.seen.append(outcome)
        return [{"agent": outcome.agent, "version": outcome.version, "kind": "prediction"}] if outcome.label == "odd" else []

    def report(self) -> dict:
        drifted = any(o.label == "odd" for o in self.seen)
        return {"sentiment": {"v1": {"window_end": 1.0, "prediction": {"stat": 1.0, "p_value": 0.01, "drift": drifted},
                                     "confidence": {"stat": 0.1, "p_value": 0.5, "drift": False}, "input": None,
                                     "alert": drifted}}}


def test_the_drift_observer_sees_request_outcomes_and_its_alerts_are_kept(clock):
    drift = FakeDrift()
    monitor = Monitor(clock=clock, drift=drift, max_alerts=2)
    monitor.record([outcome(clock.now, label="odd", features=[0.5, 1.5]), shadow(clock.now, 1.0, 1.0), feedback(clock.now, True)])
    assert [(o.kind, o.features) for o in drift.seen] == [("request", (0.5, 1.5))]
    monitor.record([outcome(clock.now, label="odd") for _ in range(3)] + [outcome(clock.now, label="boom")])

    assert len(monitor.take_alerts()) == 2  # bounded
    assert monitor.take_alerts() == []
    assert monitor.stats()["agents"]["sentiment"]["v1"]["since_start"]["requests"] == 5  # a detector bug loses nothing
    assert monitor.drift_report()["sentiment"]["v1"]["alert"] is True
    assert Monitor(clock=clock).drift_report() == {}


def test_metrics_expose_shadow_agreement_cost_and_drift(clock, storage):
    monitor = Monitor(clock=clock, drift=FakeDrift(), storage=storage)
    monitor.record(
        [outcome(clock.now, label="odd", cpu_s=1.5, gpu_s=0.5, input_tokens=100, output_tokens=20), outcome(clock.now, cpu_s=0.5)]
        + [shadow(clock.now, 10.0, 10.0, agreement=a) for a in (1.0, 0.0, 1.0, 1.0)]
    )
    values = samples(monitor.prometheus())
    v1, v2 = (("agent", "sentiment"), ("version", "v1")), (("agent", "sentiment"), ("version", "v2"))
    assert values["baton_shadow_agreement", v2] == 0.75
    assert ("baton_shadow_agreement", v1) not in values
    assert values["baton_cost_cpu_seconds_total", v1] == 2.0
    assert values["baton_cost_gpu_seconds_total", v1] == 0.5
    assert values["baton_cost_input_tokens_total", v1] == 100
    assert values["baton_cost_output_tokens_total", v1] == 20
    assert values["baton_drift_alert", (("agent", "sentiment"), ("kind", "prediction"), ("version", "v1"))] == 1
    assert values["baton_drift_alert", (("agent", "sentiment"), ("kind", "confidence"), ("version", "v1"))] == 0
    assert not any(name == "baton_drift_alert" and ("kind", "input") in labels for name, labels in values)
    # Counters continue across a restart instead of starting again from zero.
    restarted = samples(Monitor(clock=clock, storage=storage).prometheus())
    assert restarted["baton_cost_cpu_seconds_total", v1] == 2.0
    assert restarted["baton_requests_total", (("agent", "sentiment"), ("status", "200"), ("version", "v1"))] == 2


# --- shards: several monitors read as one ---


def traffic(clock: FakeClock, batches: int = 12) -> list[list[dict]]:
    rng = random.Random(3)
    return [
        [
            outcome(clock.now - rng.random() * 90, latency_ms=rng.lognormvariate(3, 0.5), status=503 if rng.random() < 0.1 else 200,
                    label=rng.choice(("POSITIVE", "NEGATIVE")), cpu_s=0.25)  # exact in binary: sums agree in any order
            for _ in range(20)
        ]
        + [shadow(clock.now - 5, 30.0, 20.0, agreement=rng.random()), feedback(clock.now - 5, correct=rng.random() < 0.5)]
        for _ in range(batches)
    ]


def test_merged_shards_read_as_one_monitor_that_got_every_outcome(clock, storage):
    whole = Monitor(clock=clock)
    shards = [Monitor(clock=clock, storage=storage, shard=index) for index in range(3)]
    for index, batch in enumerate(traffic(clock)):
        whole.record(batch)
        shards[index % 3].record(batch)
    merged = Monitor.merged([shard.export(clock.now - 60) for shard in shards], window_s=60, clock=clock)
    assert merged.stats() == whole.stats()
    assert samples(merged.prometheus()) == pytest.approx(samples(whole.prometheus()))
    since = clock.now - 80
    one_version = [shard.export(since, key=("sentiment", "v1")) for shard in shards]
    assert Monitor.merged(one_version, clock=clock).window("sentiment", "v1", since) == whole.window("sentiment", "v1", since)


def test_each_shard_keeps_and_rebuilds_its_own_log(clock, storage):
    from actors.outcome_log import stored_shards

    assert stored_shards(storage) == 1
    first, second = Monitor(clock=clock, storage=storage), Monitor(clock=clock, storage=storage, shard=1)
    first.record([outcome(clock.now)])
    second.record([outcome(clock.now), outcome(clock.now)])
    assert stored_shards(storage) == 2
    assert storage.fs.exists(storage.path("monitor", "shard-1", "outcomes"))
    rebuilt = [Monitor(clock=clock, storage=storage, shard=index) for index in (0, 1)]
    assert [m.stats()["agents"]["sentiment"]["v1"]["since_start"]["requests"] for m in rebuilt] == [1, 2]


def test_a_merged_window_is_complete_only_where_every_shard_is(clock, storage):
    Monitor(clock=clock, storage=storage).record([outcome(clock.now)])
    clock.now += 30
    restarted = Monitor(clock=clock, storage=storage, settle_s=10)  # in its restart gap for 10 s
    fresh = Monitor(clock=clock, storage=storage, shard=1)
    shares = [m.export(clock.now - 60) for m in (restarted, fresh)]
    assert fresh.window("sentiment", "v1", clock.now - 20)["complete"] is False  # before it first started
    assert Monitor.merged(shares, clock=clock).window("sentiment", "v1", clock.now - 1)["complete"] is False
    clock.now += 11
    shares = [m.export(clock.now - 60) for m in (restarted, fresh)]
    assert Monitor.merged(shares, clock=clock).window("sentiment", "v1", clock.now - 5)["complete"] is True
