"""Guarded rollouts on a virtual clock: how fast a bad candidate is rolled back, how much traffic
it serves first, and whether a good candidate is ever rolled back.

The real ``actors.rollout.RolloutController`` drives the real ``actors.traffic.TrafficTable``
(which picks the version of every simulated request) and reads its windows from the real
``actors.monitor.Monitor``, fed with synthetic outcomes: a baseline with 0.2% errors, log-normal
latency (median 40 ms) and four labels; a candidate that is the same (good) or has 5% errors,
doubled latency, or 30% of its labels replaced at random (bad). Requests arrive as a Poisson
stream; the controller ticks every ``--tick`` virtual seconds, as the actor does. The guards
include ``agreement>0.9``, so the steps copy 10% of the baseline's requests to the candidate
(``compare_percent``'s default); one row leaves it out to show what the labels test alone sees.

Flagger's floor for the same step and interval: it checks every interval and rolls back after
``threshold`` failed checks, so a bad canary takes at least ``interval × threshold`` and serves
the first step's share of the traffic meanwhile. Print-only.

Run: ``python -m benchmarks.rollout [--seeds 20] [--rate 100] [--bake 60] [--flagger-threshold 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import tempfile
import time
from dataclasses import dataclass

from actors.monitor import Monitor
from actors.rollout import RolloutController
from actors.traffic import TrafficTable
from cluster.config import RolloutPlan
from cluster.errors import Conflict
from cluster.storage import Storage

AGENT, BASELINE = "intent", "v1"
LABELS = {"billing": 0.4, "refund": 0.25, "cancel": 0.15, "other": 0.2}
GUARDS = ["error_rate<0.01", "p95_ms<1.2x", "labels>0.01", "agreement>0.9"]
STEPS = [5, 25, 50, 100]


@dataclass(frozen=True)
class Behaviour:
    """How a version answers: its error share, latency factor and share of answers whose label
    differs from the baseline's on the same request."""

    error_rate: float = 0.002
    latency_factor: float = 1.0
    disagree: float = 0.0

    def answer(self, rng: random.Random, baseline_label: str) -> tuple[int, float, str]:
        label = baseline_label
        if rng.random() < self.disagree:
            label = rng.choice([other for other in LABELS if other != baseline_label])
        latency_ms = 40.0 * self.latency_factor * math.exp(rng.gauss(0, 0.5))
        return (500 if rng.random() < self.error_rate else 200), latency_ms, label


@dataclass(frozen=True)
class Scenario:
    name: str
    candidate: Behaviour
    shadowed: bool  # a shadow phase of one bake at 100% before the steps
    good: bool = False
    agreement: bool = True  # False: GUARDS without agreement, so no copies during the steps


SCENARIOS = [
    Scenario("5% errors", Behaviour(error_rate=0.05), False),
    Scenario("doubled latency", Behaviour(latency_factor=2.0), False),
    Scenario("50% labels disagree", Behaviour(disagree=0.5), False),
    Scenario("30% labels disagree", Behaviour(disagree=0.3), False),
    Scenario("30% labels disagree, shadowed first", Behaviour(disagree=0.3), True),
    Scenario("30% labels disagree, without the agreement guard", Behaviour(disagree=0.3), False, agreement=False),
    Scenario("good: same as baseline", Behaviour(), False, good=True),
    Scenario("good: 3% labels differ", Behaviour(disagree=0.03), False, good=True),
    Scenario("good: 3% labels differ, shadowed first", Behaviour(disagree=0.03), True, good=True),
]


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class TableTraffic:
    """The Traffic port over a TrafficTable in this process."""

    def __init__(self, table: TrafficTable):
        self.table = table

    async def weights(self, agent: str) -> dict[str, int]:
        return self.table.weights(agent)

    async def set_weights(self, agent: str, weights: dict[str, int]) -> dict:
        before, after = self.table.set_weights(agent, weights)
        return {"before": before["weights"], "after": after["weights"]}

    async def set_shadow(self, agent: str, version: str, percent: int) -> None:
        self.table.set_shadow(agent, version, percent)


class TableFleet:
    """The Fleet port: a candidate is ready at once; deploying adds it to the table at weight 0."""

    def __init__(self, table: TrafficTable):
        self.table = table

    async def deploy(self, agent: str, version: str, model_ref: str) -> None:
        self.table.add_version(agent, version, {"model": model_ref})

    async def ready(self, agent: str, version: str) -> bool:
        return True

    async def retire(self, agent: str, version: str) -> None:
        try:
            self.table.remove_version(agent, version)
        except Conflict:  # a configured version stays
            pass


class MonitorWindow:
    def __init__(self, monitor: Monitor):
        self.monitor = monitor

    async def window(self, agent: str, version: str, since: float, until: float | None = None) -> dict:
        return self.monitor.window(agent, version, since, until)


class Registry:
    """The Models port: one candidate model, approved everywhere."""

    def __init__(self):
        self.aliases: dict[str, str] = {}

    def resolve(self, ref: str) -> tuple[str, str]:
        return "intent-model", ref.rsplit(":", 1)[-1]

    def set_alias(self, name: str, number: str, alias: str) -> dict:
        self.aliases[alias] = number
        return {"name": name, "alias": alias, "after": number}

    def is_approved(self, name: str, number: str, environment: str) -> bool:
        return True


@dataclass
class Run:
    state: str
    started: float
    reached_traffic: float | None  # None: rolled back before any caller saw it
    finished: float
    requests: int  # the agent's requests from the candidate's first step to the end
    candidate_requests: int
    failed_metric: str | None


class Simulation:
    """One rollout: Poisson requests picked by the table, answered per version, reported to the
    monitor each tick (with shadow copies compared with the primary), then a controller tick."""

    def __init__(self, scenario: Scenario, plan: RolloutPlan, seed: int, rate: float, tick_s: float, storage_uri: str):
        self.rng, self.clock, self.plan, self.rate, self.tick_s = random.Random(seed), Clock(), plan, rate, tick_s
        self.table = TrafficTable({AGENT: {"weights": {BASELINE: 100}, "sticky": False}})
        self.monitor = Monitor(window_s=60.0, clock=self.clock, retention_s=4 * plan.deadline_s)
        self.controller = RolloutController(
            Storage(storage_uri), TableFleet(self.table), TableTraffic(self.table), MonitorWindow(self.monitor), Registry(),
            lambda *_: None, clock=self.clock,
        )
        self.behaviours = {BASELINE: Behaviour()}
        self.candidate_behaviour = scenario.candidate
        self.counted = {"all": 0, "candidate": 0}

    async def run(self) -> Run:
        started = await self.controller.start(AGENT, "registry://intent-model:v2", self.plan, "benchmark")
        candidate = started["candidate_version"]
        self.behaviours[candidate] = self.candidate_behaviour
        self.clock.now -= 60  # a minute of baseline-only traffic first, as on a live agent
        reached: float | None = None
        while True:
            self.monitor.record(self._requests(candidate, counting=reached is not None))
            self.clock.now += self.tick_s
            if self.clock.now < started["created_at"]:
                continue
            await self.controller.tick()
            record = self.controller.get(started["id"])
            if reached is None and record["weight"] > 0:
                reached = self.clock.now
            if record["state"] in ("succeeded", "failed", "aborted"):
                failed = (record["failed_check"] or {}).get("metric")
                counted = self.counted
                return Run(record["state"], started["created_at"], reached, self.clock.now, counted["all"], counted["candidate"], failed)

    def _requests(self, candidate: str, counting: bool) -> list[dict]:
        rng, outcomes = self.rng, []
        shadow = self.table.shadow(AGENT)
        for _ in range(_poisson(rng, self.rate * self.tick_s)):
            ts = self.clock.now + rng.random() * self.tick_s
            truth = rng.choices(list(LABELS), weights=list(LABELS.values()))[0]
            version = self.table.pick(AGENT, rng=rng)
            status, latency_ms, label = self.behaviours[version].answer(rng, truth)
            outcomes.append({"ts": ts, "agent": AGENT, "version": version, "status": status, "latency_ms": latency_ms, "label": label})
            if counting:
                self.counted["all"] += 1
                self.counted["candidate"] += version == candidate
            if shadow and shadow["version"] != version and rng.random() * 100 < shadow["percent"]:
                copy_status, copy_latency, copy_label = self.behaviours[shadow["version"]].answer(rng, truth)
                both_ok = status < 500 and copy_status < 500
                outcomes.append({
                    "kind": "shadow", "ts": ts, "agent": AGENT, "version": shadow["version"], "primary_version": version,
                    "status": copy_status, "latency_ms": copy_latency, "primary_status": status, "primary_latency_ms": latency_ms,
                    "agreement": float(copy_label == label) if both_ok else None, "label": copy_label,
                })
        return outcomes


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method is slow for large means; a rounded normal is exact enough above 50.
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count, product = count + 1, product * rng.random()
    return count


def plan_for(scenario: Scenario, bake_s: float, min_requests: int) -> RolloutPlan:
    shadow = {"shadow": {"percent": 100, "duration_s": bake_s}} if scenario.shadowed else {}
    guards = GUARDS if scenario.agreement else [g for g in GUARDS if not g.startswith("agreement")]
    return RolloutPlan.model_validate(
        {"steps": STEPS, "bake_s": bake_s, "min_requests": min_requests, "guards": guards, "deadline_s": 10 * bake_s, **shadow}
    )


def row(scenario: Scenario, runs: list[Run], bake_s: float, rate: float, flagger_threshold: int) -> str:
    failed = [r for r in runs if r.state == "failed"]
    if scenario.good:
        promoted = [r for r in runs if r.state == "succeeded"]
        to_promotion = statistics.median((r.finished - r.started) / bake_s for r in promoted) if promoted else math.nan
        outcome = f"{len(failed)} of {len(runs)} (promoted {len(promoted)}, median {to_promotion:.2f} bakes from start)"
        return f"| {scenario.name} | {outcome} | — | — | — | — | — | — |"
    bakes = [(r.finished - r.reached_traffic) / bake_s if r.reached_traffic else 0.0 for r in failed]
    before_traffic = sum(r.reached_traffic is None for r in failed)
    share = sum(r.candidate_requests for r in failed) / max(1, sum(r.requests for r in failed))
    metrics = ", ".join(sorted({r.failed_metric or "?" for r in failed}))
    flagger_s = bake_s * flagger_threshold
    caught = f"; {before_traffic} in the shadow phase" if before_traffic else ""
    return (
        f"| {scenario.name} | {len(failed)} of {len(runs)} ({metrics}{caught}) | {statistics.median(bakes):.2f} / {max(bakes):.2f} "
        f"| {sum(b <= 2 for b in bakes)} of {len(runs)} "
        f"| {statistics.median(r.requests for r in failed):.0f} / {max(r.requests for r in failed)} "
        f"| {statistics.median(r.candidate_requests for r in failed):.0f} / {max(r.candidate_requests for r in failed)} "
        f"| {share:.1%} | {flagger_threshold} bakes / {rate * flagger_s:.0f} / {rate * flagger_s * STEPS[0] / 100:.0f} ({STEPS[0]}%) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="Rollouts per scenario.")
    parser.add_argument("--rate", type=float, default=100.0, help="Requests per second to the agent.")
    parser.add_argument("--bake", type=float, default=60.0, help="Bake per step (Flagger's interval), seconds.")
    parser.add_argument("--tick", type=float, default=2.0, help="Controller tick, seconds.")
    parser.add_argument("--min-requests", type=int, default=200)
    parser.add_argument("--flagger-threshold", type=int, default=5, help="Flagger's failed checks before rollback.")
    args = parser.parse_args()
    print(
        f"steps {STEPS}, bake {args.bake:g} s, min_requests {args.min_requests}, guards {', '.join(GUARDS)}; "
        f"{args.rate:g} req/s, tick {args.tick:g} s, {args.seeds} seeds per row; Flagger threshold {args.flagger_threshold}"
    )
    lines, wall = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        for number, scenario in enumerate(SCENARIOS):
            plan = plan_for(scenario, args.bake, args.min_requests)
            runs = [
                asyncio.run(Simulation(scenario, plan, seed, args.rate, args.tick, f"{root}/s{number}-{seed}").run())
                for seed in range(args.seeds)
            ]
            lines.append(row(scenario, runs, args.bake, args.rate, args.flagger_threshold))
    print(f"simulated in {time.perf_counter() - wall:.1f} s wall\n")
    print(
        "| candidate | rolled back | bakes from first traffic to rollback (median / max) | within 2 bakes "
        "| agent requests meanwhile (median / max) "
        "| served by the candidate (median / max) | candidate's share | Flagger's minimum: time / requests / candidate's |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
