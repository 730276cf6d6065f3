"""Retraining policies without Ray: triggers (drift, schedule, labels, cooldown), the job,
the quality gate and the rollout it starts. Jobs and rollouts are test doubles that say so;
the registry and storage are real (a tmp path)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from actors.retrain import RetrainRunner
from cluster.config import RetrainPolicy
from cluster.registry import ModelRegistry
from cluster.storage import Storage
from tests.unit.test_registry import register, write_model

RECIPE = {
    "name": "sst2-sentiment",
    "data": {"train": "../shared/datasets/sst2/train.tsv", "text_field": "text", "label_field": "label", "label_map": {"0": "NEGATIVE", "1": "POSITIVE"}},
    "evaluation": {"metric": "accuracy", "promote_margin": 0.0},
}


class JobsDouble:
    """Test double for Ray jobs: records submissions; the test sets each job's status."""

    def __init__(self):
        self.submitted: list[tuple[str, dict]] = []
        self.statuses: dict[str, str] = {}

    def submit(self, entrypoint, env_vars):
        job = f"job-{len(self.submitted) + 1}"
        self.submitted.append((entrypoint, env_vars))
        self.statuses[job] = "RUNNING"
        return job

    def status(self, job_id):
        return self.statuses[job_id]


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    storage = Storage(str(tmp_path / "store"))
    registry = ModelRegistry(storage)
    models_dir = write_model(tmp_path / "model")
    champion = register(registry, models_dir, name="sst2-sentiment", metrics={"accuracy": 0.85})
    registry.set_alias("sst2-sentiment", champion.version, "champion")
    jobs, clock, audit, rollouts = JobsDouble(), Clock(), [], []
    labels = [{"text": "great film", "label": "POSITIVE"}, {"text": "meh", "label": "NEUTRAL"}]

    async def start_rollout(agent, candidate, plan, principal):
        rollouts.append((agent, candidate, plan, principal))
        return {"id": f"r{len(rollouts)}", "state": "pending"}

    async def get_rollout(rollout_id):
        return {"id": rollout_id, "state": "succeeded"}

    def runner(**policy) -> RetrainRunner:
        policies = {"sentiment": RetrainPolicy(recipe=str(recipe), **policy)}
        return RetrainRunner(
            storage, policies, {"sentiment": "registry://sst2-sentiment@champion"}, jobs, registry,
            lambda agent, since: labels, start_rollout, get_rollout,
            lambda action, output, agent, version: audit.append((action, output)), clock=clock,
        )

    return {"runner": runner, "jobs": jobs, "clock": clock, "audit": audit, "rollouts": rollouts, "registry": registry, "dir": models_dir}


def test_drift_alert_trains_on_recipe_plus_reviewed_labels_then_gates_and_rolls_out(setup):
    runner, jobs, clock = setup["runner"](), setup["jobs"], setup["clock"]
    asyncio.run(runner.tick())
    assert jobs.submitted == []  # nothing asked for a run yet
    runner.on_drift([{"agent": "sentiment", "kind": "input"}, {"agent": "other", "kind": "input"}])
    asyncio.run(runner.tick())
    (entrypoint, env), = jobs.submitted
    assert entrypoint.startswith("python -m train.finetune --config ") and entrypoint.endswith(" --fresh")
    derived = yaml.safe_load(Path(entrypoint.split()[4]).read_text())
    reviewed = Path(derived["data"]["extra_train"][0]).read_text().splitlines()
    # NEUTRAL is not a label the binary recipe can learn, so only the POSITIVE row goes in.
    assert reviewed == ['{"text": "great film", "label": "POSITIVE"}']
    assert runner.state("sentiment")["state"] == "training"
    clock.now += 60
    register(setup["registry"], setup["dir"], name="sst2-sentiment", metrics={"accuracy": 0.9})
    jobs.statuses["job-1"] = "SUCCEEDED"
    asyncio.run(runner.tick())
    (agent, candidate, plan, principal), = setup["rollouts"]
    assert (agent, candidate, principal) == ("sentiment", "registry://sst2-sentiment:v2", "controller:retrain")
    assert runner.state("sentiment")["state"] == "rolling_out"
    asyncio.run(runner.tick())
    assert runner.state("sentiment")["state"] == "idle" and runner.state("sentiment")["outcome"] == "succeeded"
    actions = [a for a, _ in setup["audit"]]
    assert actions == ["retrain.trigger", "retrain.job", "retrain.gate", "retrain.rollout"]


def test_a_candidate_that_fails_the_gate_is_not_rolled_out(setup):
    runner, jobs, clock = setup["runner"](), setup["jobs"], setup["clock"]
    runner.trigger("sentiment")
    asyncio.run(runner.tick())
    clock.now += 60
    register(setup["registry"], setup["dir"], name="sst2-sentiment", metrics={"accuracy": 0.5})
    jobs.statuses["job-1"] = "SUCCEEDED"
    asyncio.run(runner.tick())
    assert setup["rollouts"] == [] and runner.state("sentiment")["state"] == "idle"
    gate = next(output for action, output in setup["audit"] if action == "retrain.gate")
    assert gate["passed"] is False and "does not beat champion" in gate["reason"]
    assert setup["audit"][-1][0] == "retrain.failed"


def test_a_failed_job_is_audited_and_the_cooldown_holds_the_next_run(setup):
    runner, jobs, clock = setup["runner"](cooldown_s=600), setup["jobs"], setup["clock"]
    runner.trigger("sentiment")
    asyncio.run(runner.tick())
    jobs.statuses["job-1"] = "FAILED"
    asyncio.run(runner.tick())
    assert setup["audit"][-1] == ("retrain.failed", {"run": runner.state("sentiment")["run"], "job": "job-1", "status": "FAILED"})
    runner.on_drift([{"agent": "sentiment"}])
    clock.now += 300
    asyncio.run(runner.tick())
    assert len(jobs.submitted) == 1  # still cooling down
    # The request waits on storage: a runner built anew (the actor restarted) still starts it.
    restarted = setup["runner"](cooldown_s=600)
    clock.now += 301
    asyncio.run(restarted.tick())
    assert len(jobs.submitted) == 2 and restarted.state("sentiment")["trigger"]["reason"] == "drift"


def test_schedule_and_new_labels_trigger_and_state_survives_a_new_runner(setup):
    scheduled, jobs, clock = setup["runner"](on_drift=False, every_s=3600, cooldown_s=0), setup["jobs"], setup["clock"]
    asyncio.run(scheduled.tick())
    assert jobs.submitted == []
    clock.now += 3601
    asyncio.run(scheduled.tick())
    assert len(jobs.submitted) == 1
    # A runner built anew over the same storage (the actor restarted) follows the same job.
    again = setup["runner"](on_drift=False, every_s=3600, cooldown_s=0)
    assert again.state("sentiment")["job"] == "job-1"
    by_labels = setup["runner"](on_drift=False, min_new_labels=2, cooldown_s=0)
    jobs.statuses["job-1"] = "STOPPED"
    asyncio.run(by_labels.tick())
    asyncio.run(by_labels.tick())
    assert len(jobs.submitted) == 2 and by_labels.state("sentiment")["trigger"] == {"reason": "labels", "new_labels": 2}
