"""Guarded rollouts: a registry candidate deployed as a new version of an agent, optionally
shadowed, then given traffic step by step, its guards checked after each bake; a failed guard
rolls it back at once, the last step promotes it. Plain Python over small ports, durable on
``<storage>/rollouts/<id>.json``; the Ray actor calls :meth:`RolloutController.tick`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from actors.guards import SHADOW_METRICS, Check, check_guards, evaluate, shadow_view
from cluster.config import RolloutPlan
from cluster.errors import Conflict, NotFound
from cluster.storage import Storage, validate_segment

logger = logging.getLogger(__name__)

State = Literal["pending", "shadowing", "stepping", "paused", "succeeded", "failed", "aborted"]
ACTIVE = frozenset({"pending", "shadowing", "stepping", "paused"})
CHAMPION = "champion"
INCONCLUSIVE_PAST_DEADLINE = "inconclusive past deadline"


class Fleet(Protocol):
    """Where agent versions are served."""

    async def deploy(self, agent: str, version: str, model_ref: str) -> None:
        """Start serving ``model_ref`` as ``version`` of ``agent`` at weight 0; returns once submitted.
        Idempotent: a restarted controller may deploy the same version again."""

    async def ready(self, agent: str, version: str) -> bool: ...

    async def retire(self, agent: str, version: str) -> None:
        """Stop serving a version no longer used; a no-op for config versions and unknown ones."""


class Traffic(Protocol):
    async def weights(self, agent: str) -> dict[str, int]: ...

    async def set_weights(self, agent: str, weights: dict[str, int]) -> dict:
        """Apply the whole split (versions left out get 0); returns {"before", "after"}."""

    async def set_shadow(self, agent: str, version: str, percent: int) -> None:
        """Copy ``percent`` of the agent's requests to ``version``; 0 stops."""


class Window(Protocol):
    async def window(self, agent: str, version: str, since: float, until: float | None = None) -> dict:
        """The monitor's summary of one version over [since, until] (the brief's format)."""


class Models(Protocol):
    """The model registry; synchronous, so the controller calls it in a thread."""

    def resolve(self, ref: str) -> tuple[str, str]: ...

    def set_alias(self, name: str, number: str, alias: str) -> dict: ...

    def is_approved(self, name: str, number: str, environment: str) -> bool: ...


Audit = Callable[[str, dict, str | None, str | None], None]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CheckRecord(Check):
    step: int | None = Field(..., description="Index of the step checked; None for the shadow phase.")
    at: float = Field(..., description="When the check ran (epoch seconds).")


class Transition(Strict):
    at: float = Field(..., description="When the state changed (epoch seconds).")
    previous: str | None = Field(..., description="The state before; None when the rollout was created.")
    state: str = Field(..., description="The state after.")
    step: int | None = Field(..., description="The step index at the time, None before the steps.")
    reason: str | None = Field(None, description="Why, for failures, aborts and pauses.")


class Effects(Strict):
    """What a transition does outside the controller: written before it is done, cleared after,
    and done again (idempotently) by a controller that finds it still set after a restart."""

    action: str = Field(..., description="The audit action that reports these effects, e.g. 'rollout.step'.")
    shadow_percent: int | None = Field(None, description="Shadow share for the candidate to set; None leaves the shadow alone.")
    weights: dict[str, int] | None = Field(None, description="The split to apply; None leaves the weights alone.")
    champion: bool = Field(False, description="Point the model's champion alias at the candidate.")
    retire: list[str] = Field(default_factory=list, description="Versions to stop serving.")


class Rollout(Strict):
    """One rollout as stored and as GET /v1/admin/rollouts/{id} returns it."""

    id: str = Field(..., description="Rollout id, 'ro-' and 16 hex digits.")
    agent: str = Field(..., description="The agent whose traffic moves.")
    candidate: str = Field(..., description="The candidate as given, e.g. 'registry://intent:v3'.")
    model_name: str = Field(..., description="Registry name of the candidate model.")
    model_version: str = Field(..., description="Registry version of the candidate model, pinned at start.")
    candidate_version: str = Field(..., description="The agent version label the candidate is served as.")
    baseline_version: str = Field(..., description="The agent version with the highest weight at start; compared against.")
    state: State = Field(..., description="pending, shadowing, stepping, paused, succeeded, failed or aborted.")
    step: int | None = Field(None, description="Index into plan.steps of the current step; None before the steps.")
    weight: int = Field(0, description="The candidate's current traffic weight in percent.")
    plan: RolloutPlan = Field(..., description="Shadow phase, steps, bake, guards and deadline.")
    checks: list[CheckRecord] = Field(default_factory=list, description="Each guard check, newest last.")
    history: list[Transition] = Field(default_factory=list, description="Each state change, newest last.")
    reason: str | None = Field(None, description="Why the rollout failed, was aborted or is paused.")
    failed_check: CheckRecord | None = Field(None, description="The guard check that rolled the candidate back.")
    created_at: float = Field(..., description="When the rollout was started (epoch seconds).")
    updated_at: float = Field(..., description="When the record last changed (epoch seconds).")
    principal: str = Field(..., description="Who started the rollout.")
    start_weights: dict[str, int] = Field(..., description="The agent's split at start; a rollback restores it.")
    deployed: bool = Field(False, description="Whether the candidate's deployment was submitted.")
    phase_started_at: float = Field(..., description="When the current phase or step began; its deadline counts from here.")
    measure_since: float = Field(..., description="Start of the current measurement window (moves on lost monitor data).")
    paused_from: State | None = Field(None, description="The state a paused rollout resumes to.")
    reference: dict | None = Field(
        None, description="The baseline's last measured window, the reference at a step where the baseline serves nothing."
    )
    effects: Effects | None = Field(None, description="Effects written but not yet confirmed done.")
    last_error: str | None = Field(None, description="The last error a port raised while advancing; the next tick retries.")

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def public(self) -> dict:
        return self.model_dump(mode="json")


def step_weights(start: dict[str, int], candidate: str, percent: int) -> dict[str, int]:
    """The candidate at ``percent``; the other versions share the rest in their starting
    proportions (largest remainder, ties to the earlier version), so the split sums to 100."""
    others = {version: weight for version, weight in start.items() if version != candidate}
    total = sum(others.values())
    rest = 100 - percent
    exact = {version: rest * weight / total for version, weight in others.items()}
    split = {version: int(share) for version, share in exact.items()}
    order = list(others)
    for version in sorted(exact, key=lambda v: (split[v] - exact[v], order.index(v)))[: rest - sum(split.values())]:
        split[version] += 1
    return {**split, candidate: percent}


def _live(weights: dict[str, int]) -> dict[str, int]:
    # Only non-zero weights are sent: versions left out get 0, and a version retired in the
    # meantime (a candidate after a crash mid-rollback) must not make the split a conflict.
    return {version: weight for version, weight in weights.items() if weight > 0}


def version_label(number: str, taken: set[str]) -> str:
    """The registry version ('v3') as the agent version label, suffixed until unique."""
    base = number if str(number).startswith("v") else f"v{number}"
    label, suffix = base, 2
    while label in taken:
        label, suffix = f"{base}-{suffix}", suffix + 1
    return label


class RolloutController:
    """Starts, advances, pauses, resumes and aborts rollouts; one per cluster (a Ray actor)."""

    def __init__(
        self,
        storage: Storage,
        fleet: Fleet,
        traffic: Traffic,
        window: Window,
        models: Models,
        audit: Audit,
        *,
        environment: str = "dev",
        require_approval: bool = False,
        history: int = 200,
        clock: Callable[[], float] = time.time,
    ):
        self.storage, self.fleet, self.traffic, self.monitor, self.models = storage, fleet, traffic, window, models
        self._audit_sink = audit
        self.environment, self.require_approval, self.history, self.clock = environment, require_approval, history, clock
        self._rollouts: dict[str, Rollout] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._start_lock = asyncio.Lock()
        self._load()

    # -- the API ------------------------------------------------------------------------------

    async def start(self, agent: str, candidate_ref: str, plan: RolloutPlan, principal: str) -> dict:
        """Record a new rollout (pending); the next ticks deploy and advance it.

        409 when the agent has an active rollout or the candidate is not approved for this
        environment (approving it resolves the conflict); 404 for an unknown model or agent;
        422 for guards that could never pass.
        """
        async with self._start_lock:
            running = [r.id for r in self._rollouts.values() if r.agent == agent and r.active]
            if running:
                raise Conflict(f"agent {agent!r} already has an active rollout {running[0]}; abort it or wait for it to finish")
            check_guards(plan.guards, plan.copies)
            name, number = await asyncio.to_thread(self.models.resolve, candidate_ref)
            if self.require_approval and not await asyncio.to_thread(self.models.is_approved, name, number, self.environment):
                raise Conflict(
                    f"candidate {name}:{number} is not approved for environment {self.environment!r}; "
                    f"run 'baton models approve {name}:{number} --env {self.environment}' first"
                )
            weights = await self.traffic.weights(agent)
            now = self.clock()
            rollout = Rollout(
                id=f"ro-{uuid.uuid4().hex[:16]}",
                agent=agent,
                candidate=candidate_ref,
                model_name=name,
                model_version=number,
                candidate_version=version_label(number, set(weights)),
                baseline_version=max(weights, key=weights.__getitem__),
                state="pending",
                plan=plan,
                history=[Transition(at=now, previous=None, state="pending", step=None)],
                created_at=now,
                updated_at=now,
                principal=str(principal),
                start_weights=dict(weights),
                phase_started_at=now,
                measure_since=now,
            )
            await self._save(rollout)
            self._rollouts[rollout.id] = rollout
        output = {"candidate": candidate_ref, "model": f"{name}:{number}", "baseline": rollout.baseline_version, "weights": weights}
        self._audit("rollout.start", rollout, {**output, "plan": plan.model_dump(mode="json")})
        return rollout.public()

    async def tick(self) -> None:
        """Advance every active rollout, and finish effects left undone by a crash or a port error."""
        for rollout in [r for r in self._rollouts.values() if r.active or r.effects is not None]:
            lock = self._lock(rollout.id)
            if lock.locked():  # an operator call or a slower tick holds it; next tick
                continue
            async with lock:
                try:
                    await self._advance(rollout)
                except Exception as error:  # one rollout's port failure must not stop the others
                    logger.exception("rollout %s: tick failed", rollout.id)
                    rollout.last_error = f"{type(error).__name__}: {error}"

    async def pause(self, rollout_id: str, principal: str) -> dict:
        """Freeze at the current weights; the guards are not checked until resumed."""
        rollout = self._require(rollout_id)
        async with self._lock(rollout.id):
            if rollout.state not in ACTIVE - {"paused"}:
                raise Conflict(f"rollout {rollout_id} is {rollout.state}; only a pending, shadowing or stepping rollout can pause")
            rollout.paused_from = rollout.state
            await self._transition(rollout, "paused", reason=f"paused by {principal}")
            self._audit("rollout.pause", rollout, {"principal": str(principal), "paused_from": rollout.paused_from})
            return rollout.public()

    async def resume(self, rollout_id: str, principal: str) -> dict:
        """Continue where it paused; the step bakes again from now and its deadline restarts."""
        rollout = self._require(rollout_id)
        async with self._lock(rollout.id):
            if rollout.state != "paused":
                raise Conflict(f"rollout {rollout_id} is {rollout.state}, not paused")
            now = self.clock()
            rollout.phase_started_at = rollout.measure_since = now
            state, rollout.paused_from = rollout.paused_from, None
            await self._transition(rollout, state, reason=None)
            self._audit("rollout.resume", rollout, {"principal": str(principal)})
            return rollout.public()

    async def abort(self, rollout_id: str, principal: str) -> dict:
        """Give the starting split back, stop the shadow and retire the candidate."""
        rollout = self._require(rollout_id)
        async with self._lock(rollout.id):
            if not rollout.active:
                raise Conflict(f"rollout {rollout_id} is {rollout.state} already")
            await self._finish(rollout, "aborted", f"aborted by {principal}", "rollout.abort")
            return rollout.public()

    def get(self, rollout_id: str) -> dict:
        return self._require(rollout_id).public()

    def list(self) -> list[dict]:
        """Active rollouts (oldest first), then the last ``history`` finished ones (newest first)."""
        active = sorted((r for r in self._rollouts.values() if r.active), key=lambda r: r.created_at)
        done = sorted((r for r in self._rollouts.values() if not r.active), key=lambda r: r.updated_at, reverse=True)
        return [r.public() for r in active + done[: self.history]]

    # -- the phases ---------------------------------------------------------------------------

    async def _advance(self, rollout: Rollout) -> None:
        if rollout.effects is not None:
            await self._apply(rollout)
        handler = {"pending": self._pending, "shadowing": self._shadowing, "stepping": self._stepping}.get(rollout.state)
        if handler is not None:
            await handler(rollout)
            rollout.last_error = None

    async def _pending(self, rollout: Rollout) -> None:
        if not rollout.deployed:
            try:
                await self.fleet.deploy(rollout.agent, rollout.candidate_version, _pinned(rollout))
            except Exception as error:  # noqa: BLE001 - any deploy failure fails the rollout, with its message
                await self._finish(rollout, "failed", f"deploying {_pinned(rollout)} failed: {error}", "rollout.fail")
                return
            rollout.deployed = True
            await self._save(rollout)
        if not await self.fleet.ready(rollout.agent, rollout.candidate_version):
            if self.clock() - rollout.phase_started_at > rollout.plan.deadline_s:
                await self._finish(rollout, "failed", f"candidate not ready within deadline_s {rollout.plan.deadline_s:g}", "rollout.fail")
            return
        if rollout.plan.shadow is not None:
            await self._enter_shadow(rollout)
        else:
            await self._enter_step(rollout, 0)

    async def _enter_shadow(self, rollout: Rollout) -> None:
        now = self.clock()
        rollout.phase_started_at = rollout.measure_since = now
        effects = Effects(action="rollout.step", shadow_percent=rollout.plan.shadow.percent)
        await self._transition(rollout, "shadowing", effects=effects)

    async def _shadowing(self, rollout: Rollout) -> None:
        plan, now = rollout.plan, self.clock()
        if now < rollout.measure_since + plan.shadow.duration_s:
            return
        guards = [g for g in plan.guards if g.metric in SHADOW_METRICS]
        if not guards:
            await self._enter_step(rollout, 0)
            return
        candidate = await self.monitor.window(rollout.agent, rollout.candidate_version, rollout.measure_since, now)
        baseline = await self.monitor.window(rollout.agent, rollout.baseline_version, rollout.measure_since, now)
        if await self._lost_data(rollout, [g.metric for g in guards], candidate, baseline, now=now):
            return
        view = shadow_view(candidate, baseline)
        checks = [evaluate(g, view, baseline, plan.min_requests) for g in guards]
        if await self._judge(rollout, checks, now):
            rollout.reference = baseline
            await self._enter_step(rollout, 0)

    async def _enter_step(self, rollout: Rollout, index: int) -> None:
        plan, now = rollout.plan, self.clock()
        percent = plan.steps[index]
        weights = step_weights(rollout.start_weights, rollout.candidate_version, percent)
        if weights.get(rollout.baseline_version, 0) == 0 and rollout.reference is None:
            # The baseline serves nothing at this step: compare with its last bake before it.
            rollout.reference = await self.monitor.window(rollout.agent, rollout.baseline_version, now - plan.bake_s, now)
        rollout.step, rollout.weight = index, percent
        rollout.phase_started_at = rollout.measure_since = now
        # Copies need a primary other than the candidate; at 100 there is none.
        shadow = (plan.step_shadow_percent if percent < 100 else 0) if plan.copies else None
        effects = Effects(action="rollout.step", weights=_live(weights), shadow_percent=shadow)
        await self._transition(rollout, "stepping", effects=effects)

    async def _stepping(self, rollout: Rollout) -> None:
        plan, now = rollout.plan, self.clock()
        baking = now < rollout.measure_since + plan.bake_s
        weights = step_weights(rollout.start_weights, rollout.candidate_version, rollout.weight)
        baseline_serves = weights.get(rollout.baseline_version, 0) > 0
        compared = rollout.weight < 100 and plan.step_shadow_percent > 0
        guards = [g for g in plan.guards if g.metric != "agreement" or compared]
        candidate = await self.monitor.window(rollout.agent, rollout.candidate_version, rollout.measure_since, now)
        if baseline_serves:
            baseline = await self.monitor.window(rollout.agent, rollout.baseline_version, rollout.measure_since, now)
            live = [candidate, baseline]
        else:
            baseline, live = rollout.reference, [candidate]
        labels = await self._label_evidence(rollout, now) if baseline_serves and any(g.metric == "labels" for g in guards) else None

        def check(guard) -> Check:
            if guard.metric == "labels" and labels is not None:
                return evaluate(guard, *labels, plan.min_requests)
            return evaluate(guard, candidate, baseline, plan.min_requests)

        if baking:
            # During the bake only a failure counts: a candidate whose guard already fails on
            # min_requests is rolled back at once; passing waits for the whole bake.
            if all(w.get("complete", False) for w in live):
                failed = [c for c in map(check, guards) if c.verdict == "fail"]
                if failed:
                    await self._judge(rollout, failed, now)
            return
        if await self._lost_data(rollout, [g.metric for g in guards], *live, now=now):
            return
        checks = [check(g) for g in guards]
        if not await self._judge(rollout, checks, now):
            return
        if baseline_serves:
            rollout.reference = baseline
        if rollout.step + 1 < len(plan.steps):
            await self._enter_step(rollout, rollout.step + 1)
        else:
            await self._promote(rollout)

    async def _label_evidence(self, rollout: Rollout, now: float) -> tuple[dict, dict] | None:
        """Candidate and baseline windows since the first step: a version's label mix does not
        depend on its weight, so the labels test keeps the evidence of earlier steps. None when
        there is none yet, or the monitor lost part of it (the step's own windows decide then)."""
        first = next((t.at for t in rollout.history if t.state == "stepping"), rollout.measure_since)
        if first >= rollout.measure_since:
            return None
        windows = [await self.monitor.window(rollout.agent, v, first, now) for v in (rollout.candidate_version, rollout.baseline_version)]
        return (windows[0], windows[1]) if all(w.get("complete", False) for w in windows) else None

    async def _lost_data(self, rollout: Rollout, metrics: list[str], *windows: dict, now: float) -> bool:
        """An incomplete window restarts the measurement where the monitor's data is whole again;
        every guard is recorded inconclusive for it. True when that happened."""
        lost = [w for w in windows if not w.get("complete", False)]
        if not lost:
            return False
        restart = max(float(w.get("complete_since") or now) for w in lost)
        rollout.measure_since = min(now, max(rollout.measure_since, restart))
        reason = f"the monitor lost data in the window; the measurement restarts at {rollout.measure_since:.3f}"
        guards = [g for g in rollout.plan.guards if g.metric in metrics]
        unknown = {"threshold": None, "observed": None, "baseline": None, "verdict": "inconclusive", "reason": reason}
        checks = [Check(metric=g.metric, op=g.op, **unknown) for g in guards]
        await self._judge(rollout, checks, now)
        return True

    async def _judge(self, rollout: Rollout, checks: list[Check], now: float) -> bool:
        """Record the checks; fail the rollout on a failed guard or an inconclusive one past the
        deadline. True when every guard passed."""
        records = [CheckRecord(**c.model_dump(), step=rollout.step, at=now) for c in checks]
        news = self._record_checks(rollout, records)
        verdicts = {c.verdict for c in records}
        decision = "fail" if "fail" in verdicts else "wait" if "inconclusive" in verdicts else "pass"
        if news or decision != "wait":
            checks = [c.model_dump(mode="json") for c in records]
            self._audit("rollout.check", rollout, {"step": rollout.step, "decision": decision, "checks": checks})
        if decision == "fail":
            failed = next(c for c in records if c.verdict == "fail")
            reason = f"guard {failed.metric}{failed.op}{failed.threshold:.4g} failed: observed {failed.observed:.4g} ({failed.reason})"
            await self._finish(rollout, "failed", reason, "rollout.fail", failed)
            return False
        if decision == "wait":
            if now - rollout.phase_started_at > rollout.plan.deadline_s:
                waiting = next(c for c in records if c.verdict == "inconclusive")
                reason = f"{INCONCLUSIVE_PAST_DEADLINE}: {waiting.metric}: {waiting.reason}"
                await self._finish(rollout, "failed", reason, "rollout.fail", waiting)
            else:
                await self._save(rollout)
            return False
        return True

    @staticmethod
    def _record_checks(rollout: Rollout, records: list[CheckRecord]) -> bool:
        """Append the checks; True when one is news. A waiting step is checked on every tick, so
        an inconclusive check replaces the inconclusive one it repeats instead of piling up."""
        news = False
        for record in records:
            same = [i for i, check in enumerate(rollout.checks) if (check.step, check.metric) == (record.step, record.metric)]
            index = same[-1] if same else None
            if index is not None and rollout.checks[index].verdict == record.verdict == "inconclusive":
                del rollout.checks[index]
            else:
                news = True
            rollout.checks.append(record)
        return news

    async def _promote(self, rollout: Rollout) -> None:
        drained = [v for v, w in rollout.start_weights.items() if w > 0 and v != rollout.candidate_version]
        effects = Effects(
            action="rollout.promote",
            weights={rollout.candidate_version: 100},
            shadow_percent=0 if rollout.plan.copies else None,
            champion=True,
            retire=drained,
        )
        await self._transition(rollout, "succeeded", effects=effects)

    async def _finish(self, rollout: Rollout, state: State, reason: str, action: str, failed: CheckRecord | None = None) -> None:
        """Fail or abort: the starting split back (if weights moved), shadow off, candidate retired."""
        rollout.failed_check = failed
        moved = rollout.step is not None
        effects = Effects(
            action=action,
            weights=_live({**rollout.start_weights, rollout.candidate_version: 0}) if moved else None,
            shadow_percent=0 if rollout.plan.copies and rollout.deployed else None,
            retire=[rollout.candidate_version],
        )
        rollout.weight = 0
        await self._transition(rollout, state, reason=reason, effects=effects)

    # -- durable state and effects ------------------------------------------------------------

    async def _transition(self, rollout: Rollout, state: State, *, reason: str | None = None, effects: Effects | None = None) -> None:
        """Write the new state and its effects, then do the effects (write intent, act, write done)."""
        now = self.clock()
        rollout.history.append(Transition(at=now, previous=rollout.state, state=state, step=rollout.step, reason=reason))
        rollout.state, rollout.reason, rollout.updated_at = state, reason, now
        rollout.effects = effects
        await self._save(rollout)
        if effects is not None:
            await self._apply(rollout)
        if not rollout.active:
            self._forget_old()

    async def _apply(self, rollout: Rollout) -> None:
        """Do the recorded effects, each idempotent, then clear them and audit what changed."""
        effects = rollout.effects
        output: dict = {"state": rollout.state, "step": rollout.step, "weight": rollout.weight, "reason": rollout.reason}
        if rollout.failed_check is not None and effects.action == "rollout.fail":
            output["failed_check"] = rollout.failed_check.model_dump(mode="json")
        if effects.shadow_percent is not None:
            await self.traffic.set_shadow(rollout.agent, rollout.candidate_version, effects.shadow_percent)
            output["shadow_percent"] = effects.shadow_percent
        if effects.weights is not None:
            change = await self.traffic.set_weights(rollout.agent, effects.weights)
            output.update(before=change["before"], after=change["after"])
        if effects.champion:
            output["alias"] = await asyncio.to_thread(self.models.set_alias, rollout.model_name, rollout.model_version, CHAMPION)
        for version in effects.retire:
            await self.fleet.retire(rollout.agent, version)
        if effects.retire:
            output["retired"] = list(effects.retire)
        rollout.effects = None
        await self._save(rollout)
        self._audit(effects.action, rollout, output)

    async def _save(self, rollout: Rollout) -> None:
        rollout.updated_at = max(rollout.updated_at, self.clock())
        await asyncio.to_thread(self.storage.write_json_atomic, self._path(rollout.id), rollout.public())

    def _load(self) -> None:
        """Adopt every rollout on the storage that is active or has effects left to do, and the
        newest finished ones for the list."""
        root = self.storage.path("rollouts")
        if not self.storage.exists(root):
            return
        for path in self.storage.fs.glob(f"{root}/*.json"):
            try:
                rollout = Rollout.model_validate(self.storage.read_json(path))
            except (ValueError, ValidationError) as error:  # keep the controller up; the file stays for a person
                logger.error("rollout record %s is unreadable, skipped: %s", path, error)
                continue
            self._rollouts[rollout.id] = rollout
        self._forget_old()

    def _forget_old(self) -> None:
        """Keep in memory the active rollouts and the last ``history`` finished (the files stay)."""
        done = sorted((r for r in self._rollouts.values() if not r.active and r.effects is None), key=lambda r: r.updated_at, reverse=True)
        for rollout in done[self.history :]:
            del self._rollouts[rollout.id]
            self._locks.pop(rollout.id, None)

    def _path(self, rollout_id: str) -> str:
        return self.storage.path("rollouts", f"{rollout_id}.json")

    def _require(self, rollout_id: str) -> Rollout:
        if rollout_id in self._rollouts:
            return self._rollouts[rollout_id]
        try:
            path = self._path(validate_segment(rollout_id, "rollout id"))
            return Rollout.model_validate(self.storage.read_json(path))
        except (ValueError, FileNotFoundError, ValidationError):
            raise NotFound(f"rollout {rollout_id!r} not found") from None

    def _lock(self, rollout_id: str) -> asyncio.Lock:
        return self._locks.setdefault(rollout_id, asyncio.Lock())

    def _audit(self, action: str, rollout: Rollout, output: dict) -> None:
        output = {"rollout": rollout.id, "principal": rollout.principal, **output}
        self._audit_sink(action, output, rollout.agent, rollout.candidate_version)


def _pinned(rollout: Rollout) -> str:
    """The candidate by exact version: an alias moving during the rollout must not change it."""
    return f"registry://{rollout.model_name}:{rollout.model_version}"
