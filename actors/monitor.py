"""Live request statistics per agent and version, since start and over a sliding window,
and their Prometheus exposition. Plain Python; the Ray wrapper makes one named instance.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
QUANTILES = {"p50_ms": 0.5, "p95_ms": 0.95, "p99_ms": 0.99}
UNKNOWN = "none"

Key = tuple[str, str]


def _rank(q: float, n: int) -> int:
    """Zero-based nearest-rank index of quantile ``q`` among ``n`` sorted values."""
    return min(n - 1, max(0, math.ceil(q * n) - 1))


class LogHistogram:
    """Quantiles in bounded memory: log-spaced buckets give each estimate a relative error
    of at most ``relative_accuracy`` (the DDSketch scheme)."""

    # Latencies below a microsecond are indistinguishable from zero for our purposes and
    # would otherwise open an unbounded number of ever smaller buckets.
    MIN_VALUE = 1e-3

    def __init__(self, relative_accuracy: float = 0.01):
        self._gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._log_gamma = math.log(self._gamma)
        self._buckets: Counter[int] = Counter()
        self._zeros = 0
        self.count = 0

    def add(self, value: float) -> None:
        self.count += 1
        if value < self.MIN_VALUE:
            self._zeros += 1
        else:
            self._buckets[math.ceil(math.log(value) / self._log_gamma)] += 1

    def quantile(self, q: float) -> float | None:
        if not self.count:
            return None
        rank = _rank(q, self.count)
        seen = self._zeros
        if rank < seen:
            return 0.0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if rank < seen:
                break
        return 2 * self._gamma**index / (self._gamma + 1)


class Outcome(NamedTuple):
    ts: float
    agent: str
    version: str
    status: int
    latency_ms: float
    routed_by: str | None
    label: str | None

    @property
    def key(self) -> Key:
        return self.agent, self.version

    @property
    def is_error(self) -> bool:
        return self.status >= 500


def parse_outcome(raw: dict[str, Any], now: float) -> Outcome:
    """Normalise one reported outcome; raise ValueError if it lacks status or latency."""
    try:
        status, latency_ms = int(raw["status"]), float(raw["latency_ms"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"outcome needs numeric 'status' and 'latency_ms', got keys {sorted(raw)}") from exc
    agent = raw.get("agent")
    ts = raw.get("ts")
    label = raw.get("label")
    return Outcome(
        ts=now if ts is None else float(ts),
        agent=UNKNOWN if agent is None else str(agent),
        # A version without an agent means nothing, so both collapse to "none".
        version=str(raw.get("version") or UNKNOWN) if agent is not None else UNKNOWN,
        status=status,
        latency_ms=latency_ms,
        routed_by=raw.get("routed_by"),
        label=None if label is None else str(label),
    )


def _summary(requests: int, errors: int, quantile: Callable[[float], float | None], labels: Counter[str]) -> dict:
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else 0.0,
        **{name: quantile(q) for name, q in QUANTILES.items()},
        "labels": dict(labels),
    }


@dataclass
class _Totals:
    requests: int = 0
    errors: int = 0
    latency: LogHistogram = field(default_factory=LogHistogram)
    labels: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: Outcome) -> None:
        self.requests += 1
        self.errors += outcome.is_error
        self.latency.add(outcome.latency_ms)
        if outcome.label is not None:
            self.labels[outcome.label] += 1

    def summary(self) -> dict:
        return _summary(self.requests, self.errors, self.latency.quantile, self.labels)


def window_summary(outcomes: list[Outcome]) -> dict:
    """Exact statistics over the outcomes of one agent version inside the window."""
    latencies = sorted(o.latency_ms for o in outcomes)
    labels = Counter(o.label for o in outcomes if o.label is not None)
    errors = sum(o.is_error for o in outcomes)
    return _summary(len(outcomes), errors, lambda q: latencies[_rank(q, len(latencies))] if latencies else None, labels)


class _WindowCollector(Collector):
    """Computes the window gauges at scrape time, so they age out without new traffic."""

    def __init__(self, monitor: Monitor):
        self._monitor = monitor

    def collect(self) -> Iterator[Metric]:
        window = f"over the last {self._monitor.window_s:g} s"
        labels = ["agent", "version"]
        requests = GaugeMetricFamily("baton_window_requests", f"Requests {window}.", labels=labels)
        error_rate = GaugeMetricFamily("baton_window_error_rate", f"Share of 5xx responses {window}.", labels=labels)
        p95 = GaugeMetricFamily("baton_window_latency_p95_seconds", f"95th percentile latency {window}.", labels=labels)
        for (agent, version), summary in self._monitor.window_summaries().items():
            requests.add_metric([agent, version], summary["requests"])
            error_rate.add_metric([agent, version], summary["error_rate"])
            if summary["p95_ms"] is not None:
                p95.add_metric([agent, version], summary["p95_ms"] / 1000)
        uptime = GaugeMetricFamily("baton_monitor_uptime_seconds", "Seconds since the monitor started.")
        uptime.add_metric([], self._monitor.uptime_s())
        yield from (requests, error_rate, p95, uptime)


class Monitor:
    """Aggregates request outcomes; ``stats()`` feeds /v1/admin/stats, ``prometheus()`` /metrics.

    The window holds at most ``max_window_samples`` outcomes across all agents, so under
    very high traffic "last_minute" covers the most recent samples rather than the full window.
    """

    def __init__(self, window_s: float = 60.0, max_window_samples: int = 50_000, clock: Callable[[], float] = time.time):
        if window_s <= 0 or max_window_samples < 1:
            raise ValueError(f"window_s must be > 0 and max_window_samples >= 1, got {window_s}, {max_window_samples}")
        self.window_s = window_s
        self._clock = clock
        self._started = clock()
        self._totals: dict[Key, _Totals] = defaultdict(_Totals)
        self._routes: Counter[str] = Counter()
        self._window: deque[Outcome] = deque(maxlen=max_window_samples)
        self.registry = CollectorRegistry()
        agent_version = ["agent", "version"]
        self._requests_total = PromCounter(
            "baton_requests", "Requests by agent, version and HTTP status.", [*agent_version, "status"], registry=self.registry
        )
        self._latency = Histogram(
            "baton_request_latency_seconds", "Request latency.", agent_version,
            buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )
        self._route_decisions = PromCounter(
            "baton_route_decisions", "Routing decisions by how the agent was chosen.", ["routed_by"], registry=self.registry
        )
        self._labels_total = PromCounter(
            "baton_labels", "Predicted labels by agent and version.", [*agent_version, "label"], registry=self.registry
        )
        self.registry.register(_WindowCollector(self))

    def record(self, outcomes: Iterable[dict[str, Any]]) -> None:
        now = self._clock()
        # Parse everything first so a bad outcome leaves no half-counted batch behind.
        parsed = [parse_outcome(raw, now) for raw in outcomes]
        for outcome in parsed:
            self._count(outcome)
        self._prune(now)

    def _count(self, outcome: Outcome) -> None:
        self._totals[outcome.key].add(outcome)
        self._window.append(outcome)
        self._requests_total.labels(outcome.agent, outcome.version, str(outcome.status)).inc()
        self._latency.labels(outcome.agent, outcome.version).observe(outcome.latency_ms / 1000)
        if outcome.routed_by is not None:
            self._routes[outcome.routed_by] += 1
            self._route_decisions.labels(outcome.routed_by).inc()
        if outcome.label is not None:
            self._labels_total.labels(outcome.agent, outcome.version, outcome.label).inc()

    def _prune(self, now: float) -> float:
        cutoff = now - self.window_s
        while self._window and self._window[0].ts < cutoff:
            self._window.popleft()
        return cutoff

    def uptime_s(self) -> float:
        return self._clock() - self._started

    def window_summaries(self) -> dict[Key, dict]:
        """Window statistics for every agent version seen since start (zeros when idle)."""
        cutoff = self._prune(self._clock())
        grouped: dict[Key, list[Outcome]] = {key: [] for key in self._totals}
        # Reporters flush out of order, so an old outcome can sit behind a newer one.
        for outcome in self._window:
            if outcome.ts >= cutoff:
                grouped[outcome.key].append(outcome)
        return {key: window_summary(outcomes) for key, outcomes in grouped.items()}

    def stats(self) -> dict:
        agents: dict[str, dict[str, dict]] = defaultdict(dict)
        for (agent, version), window in self.window_summaries().items():
            agents[agent][version] = {"since_start": self._totals[agent, version].summary(), "last_minute": window}
        return {"uptime_s": self.uptime_s(), "agents": dict(agents), "route_decisions": dict(self._routes)}

    def prometheus(self) -> bytes:
        return generate_latest(self.registry)
