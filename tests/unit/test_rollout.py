"""RolloutController with test doubles for its ports: every state transition, each verdict,
deadlines, pause/resume/abort, one active rollout per agent, approval, a restart mid-rollout
(the controller object dropped and rebuilt over the same storage), lost monitor data, audit."""

from __future__ import annotations

import asyncio

import pytest

from actors.rollout import (
    INCONCLUSIVE_PAST_DEADLINE,
    RolloutController,
    step_weights,
    version_label,
)
from cluster.config import RolloutPlan
from cluster.errors import Conflict, NotFound, Unavailable, ValidationFailed
from cluster.storage import Storage

AGENT = "intent"
GOOD = {"requests": 400, "errors": 0, "p50_ms": 40.0, "p95_ms": 90.0, "p99_ms": 140.0, "labels": {"a": 200, "b": 200}}


class Killed(BaseException):
    """The controller's process dies here (not an Exception: nothing may catch it)."""


class FakeTraffic:
    """Test double of the Traffic port: a split per agent and one shadow per agent."""

    def __init__(self):
        self.table = {AGENT: {"v1": 100}, "sentiment": {"v1": 100}}
        self.shadow: dict[str, tuple[str, int]] = {}
        self.kill_on_set_weights = False
        self.set_calls = 0

    async def weights(self, agent):
        if agent not in self.table:
            raise NotFound(f"agent {agent!r} does not exist")
        return dict(self.table[agent])

    async def set_weights(self, agent, weights):
        if self.kill_on_set_weights:
            self.kill_on_set_weights = False
            raise Killed()
        unknown = set(weights) - set(self.table[agent])
        if unknown or sum(weights.values()) != 100:
            raise Conflict(f"bad split {weights}")
        self.set_calls += 1
        before = dict(self.table[agent])
        self.table[agent] = {v: weights.get(v, 0) for v in self.table[agent]}
        return {"before": before, "after": dict(self.table[agent])}

    async def set_shadow(self, agent, version, percent):
        if percent:
            self.shadow[agent] = (version, percent)
        else:
            self.shadow.pop(agent, None)


class FakeFleet:
    """Test double of the Fleet port; config versions ('v1') are never retired."""

    def __init__(self, traffic: FakeTraffic):
        self.traffic = traffic
        self.ready_now = True
        self.deploy_error: Exception | None = None
        self.deployed: list[tuple[str, str, str]] = []
        self.retired: list[str] = []

    async def deploy(self, agent, version, model_ref):
        if self.deploy_error is not None:
            raise self.deploy_error
        self.deployed.append((agent, version, model_ref))
        self.traffic.table[agent].setdefault(version, 0)

    async def ready(self, agent, version):
        return self.ready_now

    async def retire(self, agent, version):
        self.retired.append(version)
        if version != "v1" and self.traffic.table[agent].get(version) == 0:
            del self.traffic.table[agent][version]


class FakeWindow:
    """Test double of the monitor: a summary per version, complete unless told otherwise."""

    def __init__(self):
        self.summaries = {"v1": dict(GOOD, requests=5000, labels={"a": 2500, "b": 2500})}
        # (version, since) -> summary: what a window from that moment holds, when a test says so.
        self.since: dict[tuple[str, float], dict] = {}
        self.calls: list[tuple[str, float, float]] = []

    async def window(self, agent, version, since, until=None):
        self.calls.append((version, since, until))
        summary = self.since.get((version, since), self.summaries.get(version, GOOD))
        error_rate = summary["errors"] / summary["requests"] if summary["requests"] else 0.0
        return {"agent": agent, "version": version, "since": since, "until": until, "complete": True, "error_rate": error_rate, **summary}


class FakeModels:
    """Test double of the registry port."""

    def __init__(self):
        self.versions = {("intent-model", "v3"), ("intent-model", "v4")}
        self.approved: set[tuple[str, str, str]] = set()
        self.aliases: dict[str, str] = {}

    def resolve(self, ref):
        name, _, number = ref.removeprefix("registry://").partition(":")
        if (name, number) not in self.versions:
            raise NotFound(f"model {name}:{number} not found")
        return name, number

    def set_alias(self, name, number, alias):
        before, self.aliases[alias] = self.aliases.get(alias), number
        return {"name": name, "alias": alias, "before": before, "after": number}

    def is_approved(self, name, number, environment):
        return (name, number, environment) in self.approved


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


class World:
    """The doubles and storage one controller (or its successor after a restart) runs on."""

    def __init__(self, uri: str):
        self.storage = Storage(uri)
        self.traffic = FakeTraffic()
        self.fleet = FakeFleet(self.traffic)
        self.monitor = FakeWindow()
        self.models = FakeModels()
        self.audits: list[tuple[str, dict, str | None, str | None]] = []
        self.clock = Clock()

    def controller(self, **options) -> RolloutController:
        audit = lambda action, output, agent, version: self.audits.append((action, output, agent, version))
        return RolloutController(self.storage, self.fleet, self.traffic, self.monitor, self.models, audit, clock=self.clock, **options)

    def actions(self) -> list[str]:
        return [a[0] for a in self.audits]


@pytest.fixture(params=["local", "s3"])
def world(request, tmp_path):
    return World(request.getfixturevalue("s3_uri") if request.param == "s3" else str(tmp_path / "store"))


def plan(**changes) -> RolloutPlan:
    fields = {"steps": [10, 50, 100], "bake_s": 60, "min_requests": 200, "guards": ["error_rate<0.01", "p95_ms<1.2x"], "deadline_s": 600}
    return RolloutPlan.model_validate({**fields, **changes})


async def bake(controller: RolloutController, world: World, seconds: float = 61) -> None:
    world.clock.now += seconds
    await controller.tick()


def test_a_good_candidate_steps_through_and_is_promoted(world):
    async def main():
        controller = world.controller()
        started = await controller.start(AGENT, "registry://intent-model:v3", plan(), "alice")
        assert (started["state"], started["candidate_version"], started["baseline_version"]) == ("pending", "v3", "v1")
        await controller.tick()
        record = controller.get(started["id"])
        assert (record["state"], record["step"], record["weight"]) == ("stepping", 0, 10)
        assert world.fleet.deployed == [(AGENT, "v3", "registry://intent-model:v3")]
        assert world.traffic.table[AGENT] == {"v1": 90, "v3": 10}
        world.clock.now += 30
        await controller.tick()  # mid-bake: nothing is checked yet
        assert controller.get(started["id"])["checks"] == []
        await bake(controller, world)
        assert world.traffic.table[AGENT] == {"v1": 50, "v3": 50}
        await bake(controller, world)
        assert world.traffic.table[AGENT] == {"v1": 0, "v3": 100}
        await bake(controller, world)
        return controller.get(started["id"])

    record = asyncio.run(main())
    assert record["state"] == "succeeded" and record["weight"] == 100
    assert world.models.aliases == {"champion": "v3"}
    assert world.fleet.retired == ["v1"]
    assert [t["state"] for t in record["history"]] == ["pending", "stepping", "stepping", "stepping", "succeeded"]
    assert {c["verdict"] for c in record["checks"]} == {"pass"} and {c["step"] for c in record["checks"]} == {0, 1, 2}
    # At 100 the baseline serves nothing: the latency guard compares with its last bake.
    last = next(c for c in record["checks"] if c["step"] == 2 and c["metric"] == "p95_ms")
    assert last["baseline"] == 90.0 and last["threshold"] == pytest.approx(108.0)
    assert world.actions() == ["rollout.start", *["rollout.step", "rollout.check"] * 3, "rollout.promote"]
    step = world.audits[1]
    assert step[1]["before"] == {"v1": 100, "v3": 0} and step[1]["after"] == {"v1": 90, "v3": 10} and step[2:] == (AGENT, "v3")
    promote = world.audits[-1][1]
    assert promote["alias"]["after"] == "v3" and promote["retired"] == ["v1"] and promote["principal"] == "alice"


def test_a_failed_guard_rolls_back_at_once_with_the_guard_observed_and_threshold(world):
    async def main():
        controller = world.controller()
        world.monitor.summaries["v3"] = dict(GOOD, errors=20)
        started = await controller.start(AGENT, "registry://intent-model:v3", plan(), "alice")
        await controller.tick()
        await bake(controller, world)
        return controller.get(started["id"])

    record = asyncio.run(main())
    assert record["state"] == "failed" and record["weight"] == 0
    assert world.traffic.table[AGENT] == {"v1": 100}  # back to the start, the candidate retired
    assert world.fleet.retired == ["v3"]
    failed = record["failed_check"]
    assert (failed["metric"], failed["observed"], failed["threshold"], failed["verdict"]) == ("error_rate", 0.05, 0.01, "fail")
    assert "error_rate<0.01" in record["reason"] and "0.05" in record["reason"]
    fail = next(a for a in world.audits if a[0] == "rollout.fail")[1]
    assert fail["before"] == {"v1": 90, "v3": 10} and fail["after"] == {"v1": 100, "v3": 0}
    assert fail["failed_check"]["metric"] == "error_rate"


def test_a_guard_that_fails_mid_bake_rolls_back_before_the_bake_ends_but_passing_waits(world):
    async def main():
        controller = world.controller()
        started = await controller.start(AGENT, "registry://intent-model:v3", plan(), "alice")
        await controller.tick()
        await bake(controller, world, 10)  # good so far: nothing is decided before the bake ends
        good = controller.get(started["id"])
        world.monitor.summaries["v3"] = dict(GOOD, errors=40)
        await bake(controller, world, 10)
        return good, controller.get(started["id"])

    good, record = asyncio.run(main())
    assert good["state"] == "stepping" and good["step"] == 0 and good["checks"] == []
    assert record["state"] == "failed" and record["failed_check"]["metric"] == "error_rate"
    assert world.clock.now - record["history"][1]["at"] == 20  # 20 s into a 60 s bake
    assert world.traffic.table[AGENT] == {"v1": 100}


def test_the_labels_test_keeps_the_evidence_of_earlier_steps(world):
    async def main():
        controller = world.controller()
        started = await controller.start(AGENT, "registry://intent-model:v3", plan(guards=["labels>0.01"]), "alice")
        await controller.tick()
        first_step = world.clock.now
        await bake(controller, world)  # step 0: the same label mix as the baseline passes
        assert controller.get(started["id"])["step"] == 1
        # On its own, step 1's window is a mild difference (p about 0.05); since step 0 it is not.
        world.monitor.summaries["v3"] = dict(GOOD, requests=200, labels={"a": 120, "b": 80})
        world.monitor.since[("v3", first_step)] = dict(GOOD, requests=1200, labels={"a": 800, "b": 400})
        world.monitor.since[("v1", first_step)] = dict(GOOD, requests=10_000, labels={"a": 5000, "b": 5000})
        await bake(controller, world)
        return controller.get(started["id"])

    record = asyncio.run(main())
    assert record["state"] == "failed" and record["failed_check"]["metric"] == "labels"
    assert record["failed_check"]["observed"] < 1e-4


def test_thin_data_waits_then_fails_past_the_deadline(world):
    async def main():
        controller = world.controller()
        world.monitor.summaries["v3"] = dict(GOOD, requests=50)
        started = await controller.start(AGENT, "registry://intent-model:v3", plan(deadline_s=300), "alice")
        await controller.tick()
        for _ in range(4):
            await bake(controller, world)
            assert controller.get(started["id"])["state"] == "stepping"
        waiting = controller.get(started["id"])
        await bake(controller, world, 100)
        return waiting, controller.get(started["id"])

    waiting, record = asyncio.run(main())
    assert [c["verdict"] for c in waiting["checks"]] == ["inconclusive", "inconclusive"]  # replaced, not piled up
    assert world.actions()[-2:] == ["rollout.check", "rollout.fail"]  # the first wait, then the decision
    assert record["state"] == "failed" and record["reason"].startswith(INCONCLUSIVE_PAST_DEADLINE)
    assert world.traffic.table[AGENT] == {"v1": 100}


def test_an_incomplete_window_never_passes_and_restarts_the_measurement(world):
    async def main():
        controller = world.controller()
        started = await controller.start(AGENT, "registry://intent-model:v3", plan(), "alice")
        await controller.tick()
        step_started = world.clock.now
        world.monitor.summaries["v3"] = dict(GOOD, requests=100_000, complete=False, complete_since=step_started + 40)
        await bake(controller, world)
        first = controller.get(started["id"])
        states = []
        for _ in range(10):
            await bake(controller, world)
            states.append(controller.get(started["id"])["state"])
        return step_started, first, states, controller.get(started["id"])

    step_started, first, states, last = asyncio.run(main())
    assert first["state"] == "stepping" and first["measure_since"] == step_started + 40
    assert {c["verdict"] for c in first["checks"]} == {"inconclusive"} and "lost data" in first["checks"][0]["reason"]
    assert "succeeded" not in states and last["step"] == 0
    assert last["state"] == "failed" and last["reason"].startswith(INCONCLUSIVE_PAST_DEADLINE)


def test_a_monitor_that_comes_back_whole_lets_the_step_pass_on_new_data_only(world):
    async def main():
        controller = world.controller()
        started = await controller.start(AGENT, "registry://intent-model:v3", plan(), "alice")
        await controller.tick()
        world.monitor.summaries["v3"] = dict(GOOD, complete=False)
        await bake(controller, world)
        restarted = world.clock.now
        world.monitor.summaries["v3"] = dict(GOOD)
        world.clock.now += 30
        await controller.tick()  # bake not over since the restart
        assert controller.get(started["id"])["step"] == 0
        await bake(controller, world, 31)
        return restarted, controller.get(started["id"])

    restarted, record = asyncio.run(main())
    assert record["step"] == 1
    assert ("v3", restarted, restarted + 61) in world.monitor.calls


def test_shadow_phase_checks_agreement_before_any_caller_sees_the_candidate(world):
    async def main():
        controller = world.controller()
        shadow = {"requests": 500, "agreement": 0.97, "agreement_n": 480, "error_rate_delta": 0.0}
        world.monitor.summaries["v3"] = dict(GOOD, shadow=shadow)
        shadowed = plan(shadow={"percent": 50, "duration_s": 120}, guards=["error_rate<0.01", "agreement>0.9"])
        started = await controller.start(AGENT, "registry://intent-model:v3", shadowed, "alice")
        await controller.tick()
        assert controller.get(started["id"])["state"] == "shadowing"
        assert world.traffic.shadow[AGENT] == ("v3", 50) and world.traffic.set_calls == 0
        await bake(controller, world)  # 61 s of 120: still shadowing
        assert controller.get(started["id"])["state"] == "shadowing"
        await bake(controller, world)
        assert controller.get(started["id"])["state"] == "stepping"
        assert world.traffic.table[AGENT] == {"v1": 90, "v3": 10} and world.traffic.shadow[AGENT] == ("v3", 50)
        await bake(controller, world)
        await bake(controller, world)
        assert AGENT not in world.traffic.shadow  # at 100 there is no primary to compare with
        await bake(controller, world)
        return controller.get(started["id"])

    record = asyncio.run(main())
    assert record["state"] == "succeeded"
    shadow_checks = [c for c in record["checks"] if c["step"] is None]
    assert {c["metric"] for c in shadow_checks} == {"error_rate", "agreement"} and {c["verdict"] for c in shadow_checks} == {"pass"}
    assert "agreement" not in {c["metric"] for c in record["checks"] if c["step"] == 2}


def test_a_disagreeing_shadow_fails_without_moving_any_weight(world):
    async def main():
        controller = world.controller()
        world.monitor.summaries["v3"] = dict(GOOD, shadow={"requests": 500, "agreement": 0.5, "agreement_n": 480, "error_rate_delta": 0.0})
        shadowed = plan(shadow={"percent": 100, "duration_s": 60}, guards=["agreement>0.9"])
        started = await controller.start(AGENT, "registry://intent-model:v3", shadowed, "alice")
        await controller.tick()
        await bake(controller, world)
        return controller.get(started["id"])

    record = asyncio.run(main())
    assert record["state"] == "failed" and record["failed_check"]["metric"] == "agreement"
    assert world.traffic.set_calls == 0 and AGENT not in world.traffic.shadow
    assert world.fleet.retired == ["v3"]


def test_agreement_without_a_shadow_phase_copies_a_share_at_each_step_and_fails_mid_bake(world):
    """An agreement guard alone makes the steps copy 10% of the baseline's requests to the
    candidate; a candidate that disagrees is rolled back during its first bake."""

    async def main():
        controller = world.controller()
        started = await controller.start(AGENT, "registry://intent-model:v3", plan(guards=["error_rate<0.01", "agreement>0.9"]), "alice")
        await controller.tick()
        stepping = controller.get(started["id"])
        copies = world.traffic.shadow.get(AGENT)
        world.monitor.summaries["v3"] = dict(GOOD, shadow={"requests": 300, "agreement": 0.7, "agreement_n": 300, "error_rate_delta": 0.0})
        await bake(controller, world, seconds=20)  # a third of the bake: the failure is sure already
        return stepping, copies, controller.get(started["id"])

    stepping, copies, record = asyncio.run(main())
    assert (stepping["state"], stepping["weight"], copies) == ("stepping", 10, ("v3", 10))
    assert record["state"] == "failed" and record["failed_check"]["metric"] == "agreement"
    assert record["failed_check"]["step"] == 0 and record["failed_check"]["observed"] == 0.7
    assert world.traffic.table[AGENT] == {"v1": 100} and AGENT not in world.traffic.shadow


def test_compare_percent_zero_after_a_shadow_phase_stops_copies_and_the_agreement_check(world):
    async def main():
        controller = world.controller()
        world.monitor.summaries["v3"] = dict(GOOD, shadow={"requests": 500, "agreement": 0.97, "agreement_n": 480, "error_rate_delta": 0.0})
        shadowed = plan(shadow={"percent": 50, "duration_s": 60}, guards=["agreement>0.9"], compare_percent=0)
        started = await controller.start(AGENT, "registry://intent-model:v3", shadowed, "alice")
        await controller.tick()
        await bake(controller, world)
        copies_at_first_step = world.traffic.shadow.get(AGENT)
        for _ in range(3):
            await bake(controller, world)
        return copies_at_first_step, controller.get(started["id"])

    copies, record = asyncio.run(main())
    assert copies is None and record["state"] == "succeeded"
    assert {c["metric"] for c in record["checks"] if c["step"] is not None} == set()


def test_pending_waits_for_ready_and_fails_past_the_deadline(world):
    async def main():
        controller = world.controller()
        world.fleet.ready_now = False
        started = await controller.start(AGENT, "registry://intent-model:v3", plan(deadline_s=120), "alice")
        await controller.tick()
        await bake(controller, world)
        waiting = controller.get(started["id"])["state"]
        await bake(controller, world)
        return waiting, controller.get(started["id"])

    waiting, record = asyncio.run(main())
    assert waiting == "pending" and len(world.fleet.deployed) == 1
    assert record["state"] == "failed" and "not ready" in record["reason"]
    assert world.traffic.set_calls == 0 and world.fleet.retired == ["v3"]


def test_a_failed_deploy_fails_the_rollout(world):
    async def main():
        controller = world.controller()
        world.fleet.deploy_error = Unavailable("no GPU left")
        started = await controller.start(AGENT, "registry://intent-model:v3", plan(), "alice")
        await controller.tick()
        return controller.get(started["id"])

    record = asyncio.run(main())
    assert record["state"] == "failed" and "no GPU left" in record["reason"] and record["deployed"] is False


def test_pause_freezes_resume_rebakes_abort_gives_the_traffic_back(world):
    async def main():
        controller = world.controller()
        started = await controller.start(AGENT, "registry://intent-model:v3", plan(), "alice")
        rollout_id = started["id"]
        await controller.tick()
        paused = await controller.pause(rollout_id, "bob")
        calls = len(world.monitor.calls)
        await bake(controller, world, 1000)  # past bake and deadline: a paused rollout is not judged
        assert controller.get(rollout_id)["state"] == "paused" and len(world.monitor.calls) == calls
        with pytest.raises(Conflict):
            await controller.pause(rollout_id, "bob")
        resumed = await controller.resume(rollout_id, "bob")
        await bake(controller, world, 30)
        assert controller.get(rollout_id)["step"] == 0  # the bake restarted at resume
        with pytest.raises(Conflict):
            await controller.resume(rollout_id, "bob")
        aborted = await controller.abort(rollout_id, "carol")
        with pytest.raises(Conflict):
            await controller.abort(rollout_id, "carol")
        return paused, resumed, aborted

    paused, resumed, aborted = asyncio.run(main())
    assert (paused["state"], paused["paused_from"], paused["reason"]) == ("paused", "stepping", "paused by bob")
    assert (resumed["state"], resumed["weight"]) == ("stepping", 10)
    assert (aborted["state"], aborted["reason"]) == ("aborted", "aborted by carol")
    assert world.traffic.table[AGENT] == {"v1": 100} and world.fleet.retired == ["v3"]
    operator = ["rollout.pause", "rollout.resume", "rollout.abort"]
    assert [a for a in world.actions() if a in operator] == operator
    abort = next(a for a in world.audits if a[0] == "rollout.abort")[1]
    assert abort["before"] == {"v1": 90, "v3": 10} and abort["after"] == {"v1": 100, "v3": 0}


def test_a_second_active_rollout_of_the_agent_is_a_conflict(world):
    async def main():
        controller = world.controller()
        first = await controller.start(AGENT, "registry://intent-model:v3", plan(), "alice")
        with pytest.raises(Conflict) as refused:
            await controller.start(AGENT, "registry://intent-model:v4", plan(), "alice")
        other = await controller.start("sentiment", "registry://intent-model:v4", plan(), "alice")
        await controller.abort(first["id"], "alice")
        again = await controller.start(AGENT, "registry://intent-model:v4", plan(), "alice")
        return refused.value, other, again

    refused, other, again = asyncio.run(main())
    assert refused.status == 409 and "active rollout" in refused.message
    assert other["state"] == again["state"] == "pending"


def test_an_unapproved_candidate_is_refused_where_approval_is_required(world):
    async def main():
        controller = world.controller(environment="prod", require_approval=True)
        with pytest.raises(Conflict, match="baton models approve intent-model:v3 --env prod"):
            await controller.start(AGENT, "registry://intent-model:v3", plan(), "alice")
        assert controller.list() == []
        world.models.approved.add(("intent-model", "v3", "prod"))
        return await controller.start(AGENT, "registry://intent-model:v3", plan(), "alice")

    assert asyncio.run(main())["state"] == "pending"


def test_bad_starts_are_refused_with_their_status(world):
    async def main():
        controller = world.controller()
        with pytest.raises(NotFound):
            await controller.start(AGENT, "registry://intent-model:v9", plan(), "alice")
        with pytest.raises(NotFound):
            await controller.start("ghost", "registry://intent-model:v3", plan(), "alice")
        with pytest.raises(ValidationFailed, match="compare_percent"):
            await controller.start(AGENT, "registry://intent-model:v3", plan(guards=["agreement>0.9"], compare_percent=0), "alice")
        with pytest.raises(NotFound):
            controller.get("ro-0000000000000000")
        with pytest.raises(NotFound):
            controller.get("../../etc/passwd")
        return controller.list()

    assert asyncio.run(main()) == []


def test_the_candidate_label_is_unique_among_the_agents_versions(world):
    async def main():
        world.traffic.table[AGENT] = {"v1": 60, "v3": 40}
        controller = world.controller()
        return await controller.start(AGENT, "registry://intent-model:v3", plan(), "alice")

    started = asyncio.run(main())
    assert started["candidate_version"] == "v3-2" and started["baseline_version"] == "v1"
    assert version_label("v3", {"v3", "v3-2"}) == "v3-3"


def test_step_weights_share_the_rest_in_starting_proportions():
    assert step_weights({"v1": 90, "v2": 10}, "v3", 25) == {"v1": 68, "v2": 7, "v3": 25}
    assert step_weights({"a": 34, "b": 33, "c": 33}, "d", 5) == {"a": 32, "b": 32, "c": 31, "d": 5}
    assert step_weights({"v1": 100}, "v3", 100) == {"v1": 0, "v3": 100}


def test_a_new_controller_continues_a_rollout_from_its_last_recorded_step(world):
    async def first_life():
        controller = world.controller()
        started = await controller.start(AGENT, "registry://intent-model:v3", plan(), "alice")
        await controller.tick()
        await bake(controller, world)
        return started["id"]

    async def second_life(rollout_id):
        controller = world.controller()
        record = controller.get(rollout_id)
        assert (record["state"], record["step"], record["weight"]) == ("stepping", 1, 50)
        with pytest.raises(Conflict):  # the restarted controller still knows the agent is busy
            await controller.start(AGENT, "registry://intent-model:v4", plan(), "alice")
        await bake(controller, world)
        await bake(controller, world)
        return controller.get(rollout_id)

    rollout_id = asyncio.run(first_life())
    record = asyncio.run(second_life(rollout_id))
    assert record["state"] == "succeeded" and world.models.aliases == {"champion": "v3"}
    assert [c["step"] for c in record["checks"] if c["metric"] == "error_rate"] == [0, 1, 2]


def test_a_crash_between_recording_a_step_and_applying_it_is_repaired_on_restart(world):
    async def first_life():
        controller = world.controller()
        started = await controller.start(AGENT, "registry://intent-model:v3", plan(), "alice")
        await controller.tick()
        world.traffic.kill_on_set_weights = True
        with pytest.raises(Killed):
            await bake(controller, world)
        return started["id"]

    async def second_life(rollout_id):
        assert world.traffic.table[AGENT] == {"v1": 90, "v3": 10}  # the crash left step 0's split
        controller = world.controller()
        assert controller.get(rollout_id)["effects"]["weights"] == {"v1": 50, "v3": 50}
        await controller.tick()
        repaired = dict(world.traffic.table[AGENT])
        await bake(controller, world)
        await bake(controller, world)
        return repaired, controller.get(rollout_id)

    rollout_id = asyncio.run(first_life())
    repaired, record = asyncio.run(second_life(rollout_id))
    assert repaired == {"v1": 50, "v3": 50}
    assert record["state"] == "succeeded" and record["effects"] is None


def test_a_crash_during_rollback_finishes_the_rollback_on_restart(world):
    async def first_life():
        controller = world.controller()
        started = await controller.start(AGENT, "registry://intent-model:v3", plan(), "alice")
        await controller.tick()
        world.monitor.summaries["v3"] = dict(GOOD, errors=40)
        world.traffic.kill_on_set_weights = True
        with pytest.raises(Killed):
            await bake(controller, world)
        return started["id"]

    async def second_life(rollout_id):
        controller = world.controller()
        assert controller.get(rollout_id)["state"] == "failed"
        await controller.tick()
        return controller.get(rollout_id)

    rollout_id = asyncio.run(first_life())
    record = asyncio.run(second_life(rollout_id))
    assert record["effects"] is None and world.traffic.table[AGENT] == {"v1": 100} and world.fleet.retired == ["v3"]


def test_a_port_error_is_retried_on_the_next_tick(world):
    async def main():
        controller = world.controller()
        started = await controller.start(AGENT, "registry://intent-model:v3", plan(), "alice")
        failing = world.monitor.window

        async def down(*args, **kwargs):
            raise Unavailable("monitor restarting")

        await controller.tick()
        world.monitor.window = down
        await bake(controller, world)
        broken = controller.get(started["id"])
        world.monitor.window = failing
        await controller.tick()
        return broken, controller.get(started["id"])

    broken, record = asyncio.run(main())
    assert broken["state"] == "stepping" and "monitor restarting" in broken["last_error"]
    assert record["step"] == 1 and record["last_error"] is None


def test_list_shows_active_rollouts_then_the_latest_finished(world):
    async def main():
        controller = world.controller(history=2)
        ids = []
        for _ in range(3):
            started = await controller.start(AGENT, "registry://intent-model:v3", plan(), "alice")
            world.clock.now += 1
            await controller.abort(started["id"], "alice")
            ids.append(started["id"])
        active = await controller.start(AGENT, "registry://intent-model:v4", plan(), "alice")
        listed = [r["id"] for r in controller.list()]
        old = controller.get(ids[0])  # forgotten in memory, still on storage
        return ids, active["id"], listed, old

    ids, active, listed, old = asyncio.run(main())
    assert listed == [active, ids[2], ids[1]]
    assert old["state"] == "aborted"


def test_pause_and_resume_in_the_shadow_phase_and_abort_before_deploy(world):
    async def main():
        controller = world.controller()
        shadowed = plan(shadow={"percent": 20, "duration_s": 60})
        first = await controller.start(AGENT, "registry://intent-model:v3", shadowed, "alice")
        await controller.tick()
        paused = await controller.pause(first["id"], "bob")
        resumed = await controller.resume(first["id"], "bob")
        aborted = await controller.abort(first["id"], "bob")
        second = await controller.start(AGENT, "registry://intent-model:v4", plan(), "alice")
        early = await controller.abort(second["id"], "bob")  # before any tick: nothing deployed
        return paused, resumed, aborted, early

    paused, resumed, aborted, early = asyncio.run(main())
    assert (paused["paused_from"], resumed["state"], aborted["state"]) == ("shadowing", "shadowing", "aborted")
    assert early["state"] == "aborted" and early["deployed"] is False
    assert world.traffic.set_calls == 0 and AGENT not in world.traffic.shadow
    assert world.fleet.retired == ["v3", "v4"] and [d[1] for d in world.fleet.deployed] == ["v3"]


def test_a_crash_after_deploying_deploys_again_and_goes_on(world):
    deploy = world.fleet.deploy

    async def deploy_then_die(agent, version, model_ref):
        await deploy(agent, version, model_ref)
        raise Killed()

    async def first_life():
        controller = world.controller()
        started = await controller.start(AGENT, "registry://intent-model:v3", plan(), "alice")
        world.fleet.deploy = deploy_then_die
        with pytest.raises(Killed):
            await controller.tick()
        world.fleet.deploy = deploy
        return started["id"]

    async def second_life(rollout_id):
        controller = world.controller()
        assert controller.get(rollout_id)["state"] == "pending"
        await controller.tick()
        return controller.get(rollout_id)

    record = asyncio.run(second_life(asyncio.run(first_life())))
    assert (record["state"], record["weight"]) == ("stepping", 10)
    assert [d[1] for d in world.fleet.deployed] == ["v3", "v3"]  # Fleet.deploy is idempotent by contract
