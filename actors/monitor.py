"""Live outcome statistics per agent and version (requests, shadow comparisons, feedback, cost)
since start and over any window, and their Prometheus exposition; durable on storage, so a
restarted monitor rebuilds them. Plain Python; the Ray wrapper makes one named instance.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, NamedTuple, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from actors.outcome_log import OutcomeLog
from cluster.config import CostSettings
from cluster.storage import Storage

logger = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
QUANTILES = {"p50_ms": 0.5, "p95_ms": 0.95, "p99_ms": 0.99}
UNKNOWN = "none"
KINDS = ("request", "shadow", "feedback")
COST_FIELDS = ("cpu_s", "gpu_s", "input_tokens", "output_tokens")
LAST_MINUTE_KEYS = ("requests", "errors", "error_rate", *QUANTILES, "labels")
SHADOW_KEYS = ("requests", "agreement", "agreement_n", "p50_ms_delta", "error_rate_delta")
DRIFT_KINDS = ("prediction", "confidence", "input")
COST_METRICS = {
    "cpu_s": ("baton_cost_cpu_seconds", "CPU-seconds"),
    "gpu_s": ("baton_cost_gpu_seconds", "GPU-seconds"),
    "input_tokens": ("baton_cost_input_tokens", "LLM input tokens"),
    "output_tokens": ("baton_cost_output_tokens", "LLM output tokens"),
}
# One hour at 50 requests/s with every request shadowed, within a few hundred MB.
DEFAULT_MAX_HELD = 360_000

Key = tuple[str, str]
_ts = attrgetter("ts")


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

    def merge(self, other: LogHistogram) -> None:
        """Add another sketch of the same accuracy: the result sketches both sets of values."""
        self.count += other.count
        self._zeros += other._zeros
        self._buckets.update(other._buckets)

    def to_state(self) -> dict:
        return {"count": self.count, "zeros": self._zeros, "buckets": {str(index): n for index, n in self._buckets.items()}}

    @classmethod
    def from_state(cls, state: dict) -> LogHistogram:
        histogram = cls()
        histogram.count, histogram._zeros = state["count"], state["zeros"]
        histogram._buckets = Counter({int(index): n for index, n in state["buckets"].items()})
        return histogram


class Outcome(NamedTuple):
    """One reported outcome. ``kind`` says which fields apply: "request" (status, latency,
    routing, label, confidence, features, model, cost), "shadow" (the shadow version's status
    and latency beside the primary's, and their agreement) or "feedback" (correct, reward)."""

    ts: float
    agent: str
    version: str
    status: int | None
    latency_ms: float | None
    routed_by: str | None
    label: str | None
    kind: str = "request"
    confidence: float | None = None
    features: tuple[float, ...] | None = None
    model: str | None = None
    request_id: str | None = None
    cpu_s: float | None = None
    gpu_s: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    primary_version: str | None = None
    primary_status: int | None = None
    primary_latency_ms: float | None = None
    agreement: float | None = None
    correct: bool | None = None
    reward: float | None = None

    @property
    def key(self) -> Key:
        return self.agent, self.version

    @property
    def is_error(self) -> bool:
        return self.status is not None and self.status >= 500


def _optional(raw: dict[str, Any], name: str, cast: Callable[[Any], Any]) -> Any:
    value = raw.get(name)
    if value is None:
        return None
    try:
        return cast(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"outcome field {name!r} has a bad value {value!r}: {exc}") from exc


def _features(value: Any) -> tuple[float, ...]:
    return tuple(float(x) for x in value)


def _share(value: Any) -> float:
    share = float(value)
    if not 0.0 <= share <= 1.0:
        raise ValueError("must be within [0, 1]")
    return share


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("must be true, false or null")
    return value


def parse_outcome(raw: dict[str, Any], now: float) -> Outcome:
    """Normalise one reported outcome (unknown keys are ignored); raise ValueError if it
    lacks what its kind needs: status and latency for requests and shadows, correct or reward for feedback."""
    kind = raw.get("kind") or "request"
    if kind not in KINDS:
        raise ValueError(f"outcome kind must be one of {KINDS}, got {kind!r}")
    agent, ts = raw.get("agent"), raw.get("ts")
    common = {
        "kind": kind,
        "ts": now if ts is None else float(ts),
        "agent": UNKNOWN if agent is None else str(agent),
        # A version without an agent means nothing, so both collapse to "none".
        "version": str(raw.get("version") or UNKNOWN) if agent is not None else UNKNOWN,
        "label": _optional(raw, "label", str),
    }
    if kind == "feedback":
        feedback = Outcome(
            **common, status=None, latency_ms=None, routed_by=None, request_id=_optional(raw, "request_id", str),
            correct=_optional(raw, "correct", _flag), reward=_optional(raw, "reward", float),
        )
        if feedback.correct is None and feedback.reward is None:
            raise ValueError("a feedback outcome needs 'correct' or 'reward'")
        return feedback
    try:
        status, latency_ms = int(raw["status"]), float(raw["latency_ms"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"outcome needs numeric 'status' and 'latency_ms', got keys {sorted(raw)}") from exc
    if kind == "shadow":
        return Outcome(
            **common, status=status, latency_ms=latency_ms, routed_by=None,
            primary_version=_optional(raw, "primary_version", str),
            primary_status=_optional(raw, "primary_status", int),
            primary_latency_ms=_optional(raw, "primary_latency_ms", float),
            agreement=_optional(raw, "agreement", _share),
        )
    return Outcome(
        **common, status=status, latency_ms=latency_ms, routed_by=_optional(raw, "routed_by", str),
        confidence=_optional(raw, "confidence", float), features=_optional(raw, "features", _features),
        model=_optional(raw, "model", str), request_id=_optional(raw, "request_id", str),
        cpu_s=_optional(raw, "cpu_s", float), gpu_s=_optional(raw, "gpu_s", float),
        input_tokens=_optional(raw, "input_tokens", int), output_tokens=_optional(raw, "output_tokens", int),
    )


class DriftObserver(Protocol):
    """What the monitor needs of a drift detector (actors/drift.py provides one)."""

    def observe(self, outcome: Outcome) -> list[dict]:
        """Take one request outcome; return the alerts it raised (usually none)."""
        ...

    def report(self) -> dict:
        """{agent: {version: {"window_end", "prediction": {...}, "confidence": {...}, "input": {...}, "alert": bool}}}"""
        ...


# --- summaries -------------------------------------------------------------------------


def _summary(requests: int, errors: int, quantile: Callable[[float], float | None], labels: Counter[str]) -> dict:
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else 0.0,
        **{name: quantile(q) for name, q in QUANTILES.items()},
        "labels": dict(labels),
    }


def _exact_quantile(ordered: list[float]) -> Callable[[float], float | None]:
    return lambda q: ordered[_rank(q, len(ordered))] if ordered else None


def _mean_var(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and unbiased sample variance; None where there are too few values."""
    if not values:
        return None, None
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.var(ddof=1)) if len(values) > 1 else None


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


# Windows may hold an hour of outcomes: map() with these getters keeps the passes in C.
_GETTERS = {name: attrgetter(name) for name in Outcome._fields}


def _cost_of(outcomes: list[Outcome]) -> dict:
    # filter(None) drops missing values (and zeros, which add nothing).
    return {name: sum(filter(None, map(_GETTERS[name], outcomes))) for name in COST_FIELDS}


def _requests_summary(outcomes: list[Outcome]) -> dict:
    latencies = sorted(map(_GETTERS["latency_ms"], outcomes))
    errors = sum(map((500).__le__, map(_GETTERS["status"], outcomes)))
    labels = Counter(map(_GETTERS["label"], outcomes))
    labels.pop(None, None)
    mean, variance = _mean_var(latencies)
    confidence, _ = _mean_var([c for c in map(_GETTERS["confidence"], outcomes) if c is not None])
    return {
        **_summary(len(outcomes), errors, _exact_quantile(latencies), labels),
        "latency_mean_ms": mean,
        "latency_var_ms2": variance,
        "confidence_mean": confidence,
    }


def _shadow_summary(shadows: list[Outcome]) -> dict:
    """The shadow version against the primary on the same requests."""
    latency = _exact_quantile(sorted(o.latency_ms for o in shadows))
    primary_latency = _exact_quantile(sorted(o.primary_latency_ms for o in shadows if o.primary_latency_ms is not None))
    primary_statuses = [o.primary_status for o in shadows if o.primary_status is not None]
    agreements = [o.agreement for o in shadows if o.agreement is not None]
    return {
        "requests": len(shadows),
        "agreement": _mean_var(agreements)[0],
        "agreement_n": len(agreements),
        "p50_ms_delta": _difference(latency(0.5), primary_latency(0.5)),
        "error_rate_delta": _difference(
            sum(o.is_error for o in shadows) / len(shadows) if shadows else None,
            sum(s >= 500 for s in primary_statuses) / len(primary_statuses) if primary_statuses else None,
        ),
    }


def _feedback_summary(feedback: list[Outcome]) -> dict:
    judged = [o.correct for o in feedback if o.correct is not None]
    reward_mean, reward_var = _mean_var([o.reward for o in feedback if o.reward is not None])
    return {
        "n": len(judged),
        "correct": sum(judged),
        "accuracy": sum(judged) / len(judged) if judged else None,
        "reward_n": sum(o.reward is not None for o in feedback),
        "reward_mean": reward_mean,
        "reward_var": reward_var,
    }


def window_summary(requests: list[Outcome], shadows: list[Outcome], feedback: list[Outcome]) -> dict:
    """Exact statistics over one agent version's outcomes inside a window, by kind."""
    return {
        **_requests_summary(requests),
        "feedback": _feedback_summary(feedback),
        "shadow": _shadow_summary(shadows),
        "cost": _cost_of(requests),
    }


# --- since-start counters --------------------------------------------------------------


@dataclass
class _Tally:
    """Requests, 5xx errors and a latency sketch of one side of the traffic."""

    requests: int = 0
    errors: int = 0
    latency: LogHistogram = field(default_factory=LogHistogram)

    def add(self, status: int, latency_ms: float | None) -> None:
        self.requests += 1
        self.errors += status >= 500
        if latency_ms is not None:
            self.latency.add(latency_ms)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def merge(self, other: _Tally) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.latency.merge(other.latency)

    def to_state(self) -> dict:
        return {"requests": self.requests, "errors": self.errors, "latency": self.latency.to_state()}

    @classmethod
    def from_state(cls, state: dict) -> _Tally:
        return cls(state["requests"], state["errors"], LogHistogram.from_state(state["latency"]))


@dataclass
class _Totals:
    """Everything one agent version has counted since the monitor's first start."""

    served: _Tally = field(default_factory=_Tally)
    statuses: Counter[str] = field(default_factory=Counter)
    # Prometheus histogram buckets (per bucket, not cumulative; the last is +Inf) and sum.
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    latency_sum_s: float = 0.0
    labels: Counter[str] = field(default_factory=Counter)
    cost: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COST_FIELDS, 0))
    shadow: _Tally = field(default_factory=_Tally)
    primary: _Tally = field(default_factory=_Tally)
    agreement_sum: float = 0.0
    agreement_n: int = 0

    def add(self, outcome: Outcome) -> None:
        self.served.add(outcome.status, outcome.latency_ms)
        self.statuses[str(outcome.status)] += 1
        latency_s = outcome.latency_ms / 1000
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS_S, latency_s)] += 1
        self.latency_sum_s += latency_s
        if outcome.label is not None:
            self.labels[outcome.label] += 1
        for name in COST_FIELDS:
            self.cost[name] += getattr(outcome, name) or 0

    def add_shadow(self, outcome: Outcome) -> None:
        self.shadow.add(outcome.status, outcome.latency_ms)
        if outcome.primary_status is not None:
            self.primary.add(outcome.primary_status, outcome.primary_latency_ms)
        if outcome.agreement is not None:
            self.agreement_sum += outcome.agreement
            self.agreement_n += 1

    def merge(self, other: _Totals) -> None:
        """Add another monitor shard's counters of the same agent version."""
        self.served.merge(other.served)
        self.statuses.update(other.statuses)
        self.buckets = [mine + theirs for mine, theirs in zip(self.buckets, other.buckets)]
        self.latency_sum_s += other.latency_sum_s
        self.labels.update(other.labels)
        self.cost = {name: self.cost[name] + other.cost[name] for name in COST_FIELDS}
        self.shadow.merge(other.shadow)
        self.primary.merge(other.primary)
        self.agreement_sum += other.agreement_sum
        self.agreement_n += other.agreement_n

    def summary(self) -> dict:
        return _summary(self.served.requests, self.served.errors, self.served.latency.quantile, self.labels)

    def shadow_summary(self) -> dict:
        return {
            "requests": self.shadow.requests,
            "agreement": self.agreement_sum / self.agreement_n if self.agreement_n else None,
            "agreement_n": self.agreement_n,
            "p50_ms_delta": _difference(self.shadow.latency.quantile(0.5), self.primary.latency.quantile(0.5)),
            "error_rate_delta": _difference(self.shadow.error_rate, self.primary.error_rate),
        }

    def to_state(self) -> dict:
        return {
            "served": self.served.to_state(), "statuses": dict(self.statuses), "buckets": self.buckets,
            "latency_sum_s": self.latency_sum_s, "labels": dict(self.labels), "cost": self.cost,
            "shadow": self.shadow.to_state(), "primary": self.primary.to_state(),
            "agreement_sum": self.agreement_sum, "agreement_n": self.agreement_n,
        }

    @classmethod
    def from_state(cls, state: dict) -> _Totals:
        return cls(
            served=_Tally.from_state(state["served"]), statuses=Counter(state["statuses"]), buckets=state["buckets"],
            latency_sum_s=state["latency_sum_s"], labels=Counter(state["labels"]), cost=state["cost"],
            shadow=_Tally.from_state(state["shadow"]), primary=_Tally.from_state(state["primary"]),
            agreement_sum=state["agreement_sum"], agreement_n=state["agreement_n"],
        )


def _outcomes_from_table(table: pa.Table) -> list[Outcome]:
    """Outcomes back from the log, sharing one string object per distinct value."""

    def values(name: str) -> Iterable[Any]:
        # Held outcomes drop request ids and features (see Monitor._hold): no need to read them.
        if name in ("features", "request_id"):
            return itertools.repeat(None, table.num_rows)
        column = table[name].combine_chunks()
        if not pa.types.is_string(column.type):
            return column.to_pylist()
        encoded = column.dictionary_encode()
        distinct = encoded.dictionary.to_pylist()
        return [None if index is None else distinct[index] for index in encoded.indices.to_pylist()]

    return list(map(Outcome._make, zip(*(values(name) for name in Outcome._fields))))


class _FixedDrift:
    """The drift seam of a merged monitor: its shards' reports, and no observing."""

    def __init__(self, report: dict):
        self._report = report

    def observe(self, outcome: Outcome) -> list[dict]:
        return []

    def report(self) -> dict:
        return self._report


def _merged_drift(reports: list[dict]) -> dict:
    """Per agent version, the report of the shard whose last drift window ended latest."""
    merged: dict[str, dict[str, dict]] = defaultdict(dict)
    for report in reports:
        for agent, versions in report.items():
            for version, entry in versions.items():
                kept = merged[agent].get(version)
                if kept is None or (entry.get("window_end") or 0) > (kept.get("window_end") or 0):
                    merged[agent][version] = entry
    return dict(merged)


# --- the monitor -----------------------------------------------------------------------


class Monitor:
    """Aggregates outcomes; ``stats()`` feeds /v1/admin/stats, ``prometheus()`` /metrics,
    ``window()`` the rollout guards and A/B analysis.

    It holds the outcomes of the last ``retention_s`` seconds, at most ``max_window_samples``
    of them (the oldest go first; ``complete_since`` then moves past them), for exact windows.

    With ``storage``, every batch is written to the outcome log before ``record`` returns and
    before it is counted. Every ``checkpoint_s`` (and on ``checkpoint()``) the monitor compacts
    the log, writes a checkpoint of its since-start counters with the sequence number of the
    last batch they include, and removes segments older than ``retention_s`` that the
    checkpoint covers. A new monitor over the same storage restores the checkpoint, replays
    the batches after it into the counters and reloads the outcomes of the last
    ``retention_s`` into its window, so counters and windows are what they were. Outcomes
    sent while it was down come later, as reporters retry: for ``settle_s`` after a rebuild,
    windows reaching past the newest rebuilt outcome are incomplete.
    The drift observer's state is not rebuilt: it starts empty after a restart.

    Past one process, several monitors (``shard``: each its own outcome log) take a share of
    the outcomes each; ``export`` gives a shard's counters and held outcomes, and ``merged``
    builds from the shares a read-only monitor whose windows, stats and metrics are those of
    one monitor that got every outcome.
    """

    def __init__(
        self,
        window_s: float = 60.0,
        max_window_samples: int = DEFAULT_MAX_HELD,
        clock: Callable[[], float] = time.time,
        *,
        storage: Storage | None = None,
        retention_s: float = 3600.0,
        prices: CostSettings | None = None,
        drift: DriftObserver | None = None,
        checkpoint_s: float = 60.0,
        settle_s: float = 10.0,
        max_alerts: int = 1000,
        shard: int = 0,
    ):
        if min(window_s, checkpoint_s) <= 0 or min(max_window_samples, max_alerts) < 1 or retention_s < window_s or settle_s < 0:
            raise ValueError(
                "need window_s > 0, max_window_samples >= 1, retention_s >= window_s, checkpoint_s > 0, settle_s >= 0, "
                f"max_alerts >= 1; got {window_s}, {max_window_samples}, {retention_s}, {checkpoint_s}, {settle_s}, {max_alerts}"
            )
        self.window_s = window_s
        self.max_window_samples = max_window_samples
        self.retention_s = retention_s
        self.checkpoint_s = checkpoint_s
        self._clock = clock
        self._started = self._origin = self._last_checkpoint = clock()
        self._prices = prices or CostSettings()
        self._drift = drift
        self._alerts: deque[dict] = deque(maxlen=max_alerts)
        self._totals: dict[Key, _Totals] = defaultdict(_Totals)
        self._routes: Counter[str] = Counter()
        # Per (kind, agent, version), sorted by outcome time: windows are two bisections.
        self._held: dict[tuple[str, str, str], list[Outcome]] = defaultdict(list)
        self._held_count = 0
        self._evicted_through = -math.inf
        # Reporters resend what they could not deliver while the monitor was down; until they
        # have had settle_s to do so, windows reaching into that gap may lack outcomes.
        self._gap_from = math.inf
        self._settles_at = -math.inf
        self.settle_s = settle_s
        self._batch_ids: dict[str, float] = {}
        self._next_seq = 1
        self._log = None if storage is None else OutcomeLog(storage, compact_span_s=retention_s / 10, shard=shard)
        if self._log is not None:
            self._rebuild()
            self.checkpoint()
        self.registry = CollectorRegistry()
        self.registry.register(self)

    # --- intake ---

    def record(self, outcomes: Iterable[dict[str, Any]], batch_id: str | None = None) -> None:
        """Count a batch. A ``batch_id`` already recorded (within ``retention_s``, across
        restarts) is a redelivery and is skipped. Raises if the batch cannot be stored,
        and then counts none of it."""
        now = self._clock()
        # Parse everything first so a bad outcome leaves no half-counted batch behind.
        self.record_parsed([parse_outcome(raw, now) for raw in outcomes], batch_id, now)

    def record_parsed(self, parsed: list[Outcome], batch_id: str | None = None, now: float | None = None) -> None:
        """``record`` for outcomes that ``parse_outcome`` made already."""
        now = self._clock() if now is None else now
        if not parsed:
            return
        if batch_id is not None and batch_id in self._batch_ids:
            logger.info("monitor batch %s was already recorded; skipping the redelivery", batch_id)
            return
        if self._log is not None:
            self._log.append(self._next_seq, batch_id, parsed)
            self._next_seq += 1
        if batch_id is not None:
            self._batch_ids[batch_id] = now
        for outcome in parsed:
            self._count(outcome)
            self._hold(outcome)
            if outcome.kind == "request":
                self._observe_drift(outcome)
        self._prune(now)
        if self._log is not None and now - self._last_checkpoint >= self.checkpoint_s:
            self._checkpoint_keeping_errors()

    def _count(self, outcome: Outcome) -> None:
        if outcome.kind == "feedback":
            return
        if outcome.kind == "shadow":
            self._totals[outcome.key].add_shadow(outcome)
            return
        self._totals[outcome.key].add(outcome)
        if outcome.routed_by is not None:
            self._routes[outcome.routed_by] += 1

    def _hold(self, outcome: Outcome) -> None:
        # Windows need neither; dropping them keeps an hour of outcomes small.
        if outcome.features is not None or outcome.request_id is not None:
            outcome = outcome._replace(features=None, request_id=None)
        series = self._held[outcome.kind, outcome.agent, outcome.version]
        # Outcomes mostly arrive in time order: appending skips the bisection.
        if not series or series[-1].ts <= outcome.ts:
            series.append(outcome)
        else:
            bisect.insort_right(series, outcome, key=_ts)
        self._held_count += 1

    def _observe_drift(self, outcome: Outcome) -> None:
        if self._drift is None:
            return
        try:
            self._alerts.extend(self._drift.observe(outcome))
        except Exception:
            # The batch is stored and counted already; failing here would make the reporter resend it.
            logger.exception("drift observer failed on an outcome of %s/%s", outcome.agent, outcome.version)

    def _prune(self, now: float) -> None:
        horizon = now - self.retention_s
        for series in self._held.values():
            stale = bisect.bisect_left(series, horizon, key=_ts)
            if stale:
                del series[:stale]
                self._held_count -= stale
        self._evict_over_cap()
        while self._batch_ids and next(iter(self._batch_ids.values())) < horizon:
            del self._batch_ids[next(iter(self._batch_ids))]

    def _evict_over_cap(self) -> None:
        """Drop the oldest held outcomes beyond ``max_window_samples``, across all series."""
        excess = self._held_count - self.max_window_samples
        while excess > 0:
            oldest, *rest = sorted((s for s in self._held.values() if s), key=lambda s: s[0].ts)
            older_than_rest = bisect.bisect_left(oldest, rest[0][0].ts, key=_ts) if rest else len(oldest)
            take = max(1, min(excess, older_than_rest))
            self._evicted_through = max(self._evicted_through, oldest[take - 1].ts)
            del oldest[:take]
            self._held_count -= take
            excess -= take

    # --- durability ---

    def _rebuild(self) -> None:
        recovered = self._log.recover()
        covered = 0 if recovered.checkpoint is None else self._restore(recovered.checkpoint)
        if (recovered.checkpoint is None and recovered.table.num_rows) or recovered.unreadable:
            # Outcomes are missing (a lost checkpoint or segment): only what follows now is whole.
            logger.warning("monitor state on storage is incomplete; windows are complete from now on only")
            self._origin = self._started
        table = recovered.table
        outcomes = _outcomes_from_table(table)
        # Rows come in batch order, so the batches after the checkpoint are a tail.
        for outcome in outcomes[bisect.bisect_right(table["seq"].to_pylist(), covered) :]:
            self._count(outcome)
        horizon = self._started - self.retention_s
        self._hold_sorted([outcome for outcome in outcomes if outcome.ts >= horizon])
        batches = table.filter(pc.is_valid(table["batch_id"])).group_by("batch_id").aggregate([("ts", "max")])
        for batch_id, ts in zip(*batches.sort_by("ts_max").columns):
            self._batch_ids[batch_id.as_py()] = ts.as_py()
        self._next_seq = max(covered, pc.max(table["seq"]).as_py() or 0) + 1
        if recovered.checkpoint is not None:
            self._gap_from = pc.max(table["ts"]).as_py() if table.num_rows else self._started
            self._settles_at = self._started + self.settle_s
        self._prune(self._started)

    def _restore(self, state: dict) -> int:
        """Take the counters of a checkpoint; returns the last batch they include."""
        self._routes = Counter(state["routes"])
        self._totals.update({(t["agent"], t["version"]): _Totals.from_state(t["totals"]) for t in state["totals"]})
        self._origin = state["origin"]
        return state["seq"]

    def _hold_sorted(self, outcomes: list[Outcome]) -> None:
        """Hold many outcomes while nothing is held yet: one sort instead of an insertion each."""
        for outcome in sorted(outcomes, key=_ts):
            self._held[outcome.kind, outcome.agent, outcome.version].append(outcome)
        self._held_count += len(outcomes)

    def checkpoint(self) -> None:
        """Compact the outcome log, checkpoint the counters and expire old segments now
        (for example before the actor is replaced); without storage it does nothing."""
        if self._log is None:
            return
        now = self._last_checkpoint = self._clock()
        self._log.compact()
        self._log.write_checkpoint(
            {
                "origin": self._origin,
                "seq": self._next_seq - 1,
                "routes": dict(self._routes),
                "totals": [{"agent": a, "version": v, "totals": t.to_state()} for (a, v), t in self._totals.items()],
            }
        )
        self._log.expire(before_ts=now - self.retention_s, through_seq=self._next_seq - 1)

    def _checkpoint_keeping_errors(self) -> None:
        try:
            self.checkpoint()
        except Exception:
            # Every batch is in the log already; the next checkpoint catches up.
            logger.warning("monitor checkpoint failed; will retry in %g s", self.checkpoint_s, exc_info=True)

    @property
    def complete_since(self) -> float:
        """From this time on the monitor holds every outcome it was sent: its first start ever
        (or the rebuild that found outcomes missing), no earlier than ``retention_s`` ago and
        after any outcome it dropped to stay within ``max_window_samples``."""
        return max(self._origin, self._clock() - self.retention_s, math.nextafter(self._evicted_through, math.inf))

    # --- reading ---

    def uptime_s(self) -> float:
        return self._clock() - self._started

    def window(self, agent: str, version: str, since: float, until: float | None = None) -> dict:
        """Exact summary of the outcomes with ``since <= ts <= until`` (no upper bound when
        ``until`` is None; it is reported as now). ``complete`` is False when the monitor
        lacks outcomes from part of that time (before ``complete_since``, given too, or in the
        gap of a restart less than ``settle_s`` ago): read such a window as inconclusive."""
        now = self._clock()
        if until is not None and until < since:
            raise ValueError(f"window until ({until}) is before since ({since})")
        self._prune(now)
        parts = {kind: self._between(kind, agent, version, since, until) for kind in KINDS}
        return {
            "agent": agent,
            "version": version,
            "since": since,
            "until": now if until is None else until,
            "complete": self._is_complete(since, until, now),
            "complete_since": self.complete_since,
            **window_summary(parts["request"], parts["shadow"], parts["feedback"]),
        }

    def _is_complete(self, since: float, until: float | None, now: float) -> bool:
        settled = now >= self._settles_at or (until is not None and until < self._gap_from)
        return settled and since >= self.complete_since

    def _between(self, kind: str, agent: str, version: str, since: float, until: float | None) -> list[Outcome]:
        series = self._held.get((kind, agent, version), [])
        start = bisect.bisect_left(series, since, key=_ts)
        end = len(series) if until is None else bisect.bisect_right(series, until, key=_ts)
        return series[start:end]

    def window_summaries(self) -> dict[Key, dict]:
        """The last ``window_s`` for every agent version seen since start (zeros when idle)."""
        since = self._clock() - self.window_s
        return {key: self.window(*key, since) for key in list(self._totals)}

    def stats(self) -> dict:
        agents: dict[str, dict[str, dict]] = defaultdict(dict)
        for (agent, version), window in self.window_summaries().items():
            totals = self._totals[agent, version]
            entry = {
                "since_start": totals.summary(),
                "last_minute": {key: window[key] for key in LAST_MINUTE_KEYS},
                "cost": {
                    "since_start": self._cost_view(totals.cost, totals.served.requests),
                    "last_minute": self._cost_view(window["cost"], window["requests"]),
                },
            }
            if totals.shadow.requests:
                entry["shadow"] = {**totals.shadow_summary(), "last_minute": {k: window["shadow"][k] for k in SHADOW_KEYS}}
            agents[agent][version] = entry
        return {
            "uptime_s": self.uptime_s(),
            "complete_since": self.complete_since,
            "agents": dict(agents),
            "route_decisions": dict(self._routes),
        }

    def _cost_view(self, cost: dict[str, float], requests: int) -> dict:
        """Usage and its price, in total and per request (None without requests)."""
        prices = self._prices
        total = (
            cost["cpu_s"] * prices.cpu_second
            + cost["gpu_s"] * prices.gpu_second
            + cost["input_tokens"] / 1000 * prices.input_tokens_per_1k
            + cost["output_tokens"] / 1000 * prices.output_tokens_per_1k
        )
        per_request = {f"{name}_per_request": value for name, value in {**cost, "cost": total}.items()}
        return {
            "currency": prices.currency,
            "requests": requests,
            **cost,
            "cost_total": total,
            **{name: value / requests if requests else None for name, value in per_request.items()},
        }

    # --- shards ---

    def export(self, since: float, until: float | None = None, key: Key | None = None) -> dict:
        """This shard's share of a merged read: since-start counters, drift report, and the
        outcomes held with ``since <= ts <= until`` (of one agent version, or of all)."""
        now = self._clock()
        self._prune(now)
        held = {
            series: self._between(*series, since, until)
            for series in self._held
            if key is None or series[1:] == key
        }
        return {
            "now": now, "started": self._started, "complete_since": self.complete_since,
            "gap_from": self._gap_from, "settles_at": self._settles_at, "routes": dict(self._routes),
            "totals": {key: totals.to_state() for key, totals in self._totals.items()},
            "held": held, "drift": self.drift_report(),
        }

    @classmethod
    def merged(
        cls, shares: list[dict], window_s: float = 60.0, prices: CostSettings | None = None, clock: Callable[[], float] | None = None
    ) -> Monitor:
        """A read-only monitor over shards' ``export`` shares, its clock stopped at the latest
        export unless given one. A window is complete only where every shard's is: the latest
        ``complete_since``, the widest restart gap."""
        if not shares:
            raise ValueError("need at least one monitor share to merge")
        exported = max(share["now"] for share in shares)

        def at_export() -> float:
            return exported

        held_count = sum(len(series) for share in shares for series in share["held"].values())
        merged = cls(window_s=window_s, max_window_samples=held_count + 1, clock=clock or at_export, prices=prices,
                     drift=_FixedDrift(_merged_drift([share["drift"] for share in shares])))
        merged._started = min(share["started"] for share in shares)
        merged._origin = max(share["complete_since"] for share in shares)
        merged._gap_from = min(share["gap_from"] for share in shares)
        merged._settles_at = max(share["settles_at"] for share in shares)
        for share in shares:
            merged._routes.update(share["routes"])
            for key, state in share["totals"].items():
                merged._totals[key].merge(_Totals.from_state(state))
            for series, outcomes in share["held"].items():
                merged._held[series].extend(outcomes)
        for series in merged._held.values():
            series.sort(key=_ts)
        merged._held_count = held_count
        return merged

    # --- drift ---

    def take_alerts(self) -> list[dict]:
        """The drift alerts raised since the last call (the newest ``max_alerts``), oldest first."""
        alerts = list(self._alerts)
        self._alerts.clear()
        return alerts

    def drift_report(self) -> dict:
        return {} if self._drift is None else self._drift.report()

    # --- Prometheus ---

    def prometheus(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        """Every series from the monitor's own state at scrape time, so counters continue
        across a restart and window gauges age out without new traffic."""
        yield from self._counter_families()
        yield from self._window_families()
        yield self._drift_family()
        uptime = GaugeMetricFamily("baton_monitor_uptime_seconds", "Seconds since the monitor started.")
        uptime.add_metric([], self.uptime_s())
        yield uptime

    def _counter_families(self) -> Iterator[Metric]:
        agent_version = ["agent", "version"]
        requests = CounterMetricFamily(
            "baton_requests", "Requests by agent, version and HTTP status.", labels=[*agent_version, "status"]
        )
        latency = HistogramMetricFamily("baton_request_latency_seconds", "Request latency.", labels=agent_version)
        labels = CounterMetricFamily(
            "baton_labels", "Predicted labels by agent and version.", labels=[*agent_version, "label"]
        )
        costs = {
            name: CounterMetricFamily(metric, f"{what} used by requests, by agent and version.", labels=agent_version)
            for name, (metric, what) in COST_METRICS.items()
        }
        for (agent, version), totals in self._totals.items():
            if not totals.served.requests:
                continue
            for status, count in totals.statuses.items():
                requests.add_metric([agent, version, status], count)
            cumulative = list(itertools.accumulate(totals.buckets))
            bounds = [*map(floatToGoString, LATENCY_BUCKETS_S), "+Inf"]
            latency.add_metric([agent, version], list(zip(bounds, cumulative)), totals.latency_sum_s)
            for label, count in totals.labels.items():
                labels.add_metric([agent, version, label], count)
            for name, family in costs.items():
                family.add_metric([agent, version], totals.cost[name])
        routes = CounterMetricFamily(
            "baton_route_decisions", "Routing decisions by how the agent was chosen.", labels=["routed_by"]
        )
        for routed_by, count in self._routes.items():
            routes.add_metric([routed_by], count)
        yield from (requests, latency, routes, labels, *costs.values())

    def _window_families(self) -> Iterator[Metric]:
        window = f"over the last {self.window_s:g} s"
        labels = ["agent", "version"]
        requests = GaugeMetricFamily("baton_window_requests", f"Requests {window}.", labels=labels)
        error_rate = GaugeMetricFamily("baton_window_error_rate", f"Share of 5xx responses {window}.", labels=labels)
        p95 = GaugeMetricFamily("baton_window_latency_p95_seconds", f"95th percentile latency {window}.", labels=labels)
        agreement = GaugeMetricFamily(
            "baton_shadow_agreement",
            f"Mean agreement of the shadow version with the primary on shadowed requests {window}.",
            labels=labels,
        )
        for (agent, version), summary in self.window_summaries().items():
            requests.add_metric([agent, version], summary["requests"])
            error_rate.add_metric([agent, version], summary["error_rate"])
            if summary["p95_ms"] is not None:
                p95.add_metric([agent, version], summary["p95_ms"] / 1000)
            if summary["shadow"]["agreement"] is not None:
                agreement.add_metric([agent, version], summary["shadow"]["agreement"])
        yield from (requests, error_rate, p95, agreement)

    def _drift_family(self) -> Metric:
        alert = GaugeMetricFamily(
            "baton_drift_alert",
            "1 while the last drift check of this kind found drift, else 0.",
            labels=["agent", "version", "kind"],
        )
        for agent, versions in self.drift_report().items():
            for version, report in versions.items():
                for kind in DRIFT_KINDS:
                    check = report.get(kind)
                    if isinstance(check, dict) and "drift" in check:
                        alert.add_metric([agent, version, kind], float(bool(check["drift"])))
        return alert
