"""Retraining policies, the loop's last link: on a drift alert, a schedule or enough new
reviewed labels, fine-tune as a Ray job on the recipe's data plus the reviewed labels,
register, pass the quality gate, then start a guarded rollout of the candidate.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import yaml

from cluster.config import RetrainPolicy, RolloutPlan
from cluster.errors import Conflict
from cluster.registry import ModelRegistry, parse_ref
from cluster.storage import Storage
from cluster.version import REPO_ROOT

logger = logging.getLogger(__name__)
PRINCIPAL = "controller:retrain"
FINISHED_JOB = {"SUCCEEDED", "FAILED", "STOPPED"}
FINISHED_ROLLOUT = {"succeeded", "failed", "aborted"}


class Jobs(Protocol):
    def submit(self, entrypoint: str, env_vars: dict[str, str]) -> str: ...

    def status(self, job_id: str) -> str: ...


StartRollout = Callable[[str, str, RolloutPlan, str], Awaitable[dict]]
GetRollout = Callable[[str], Awaitable[dict]]
Audit = Callable[[str, dict, str | None, str | None], None]


class RetrainRunner:
    """One state per agent with a policy, kept at ``<storage>/retrain/<agent>.json``:
    idle → training (a Ray job) → rolling_out (a guarded rollout) → idle. Every step is audited
    (``retrain.trigger``, ``retrain.job``, ``retrain.gate``, ``retrain.rollout``, ``retrain.failed``).
    """

    def __init__(
        self,
        storage: Storage,
        policies: dict[str, RetrainPolicy],
        models: dict[str, str],
        jobs: Jobs,
        registry: ModelRegistry,
        labels: Callable[[str, float | None], list[dict]],
        start_rollout: StartRollout,
        get_rollout: GetRollout,
        audit: Audit,
        *,
        clock: Callable[[], float] = time.time,
    ):
        self.storage, self.policies, self.models, self.jobs, self.registry = storage, policies, models, jobs, registry
        self.labels, self.start_rollout, self.get_rollout, self.audit, self.clock = labels, start_rollout, get_rollout, audit, clock

    # -- triggers ---------------------------------------------------------------------------

    def on_drift(self, alerts: list[dict]) -> None:
        for alert in alerts:
            policy = self.policies.get(alert.get("agent"))
            if policy is not None and policy.on_drift:
                self._request(alert["agent"], {"reason": "drift", "alert": alert}, replace=False)

    def trigger(self, agent: str, reason: str = "manual") -> None:
        if agent not in self.policies:
            raise Conflict(f"agent {agent!r} has no retrain policy (or serves no registry model to retrain)")
        self._request(agent, {"reason": reason}, replace=True)

    def _request(self, agent: str, trigger: dict, replace: bool) -> None:
        """A run asked for is recorded on storage before anyone is told so: it survives a restart
        and starts once the agent is idle and out of its cooldown."""
        state = self.state(agent)
        if replace or "pending" not in state:
            state["pending"] = trigger
            self._save(agent, state)

    def _due(self, agent: str, policy: RetrainPolicy, state: dict) -> dict | None:
        now = self.clock()
        if now - state.get("last_run_at", float("-inf")) < policy.cooldown_s:
            return None
        if state.get("pending"):
            return state.pop("pending")
        if policy.every_s is not None and now - state.get("last_run_at", state["since"]) >= policy.every_s:
            return {"reason": "schedule"}
        if policy.min_new_labels is not None:
            new = len(self.labels(agent, state.get("labels_since")))
            if new >= policy.min_new_labels:
                return {"reason": "labels", "new_labels": new}
        return None

    # -- the loop ---------------------------------------------------------------------------

    async def tick(self) -> None:
        for agent, policy in self.policies.items():
            state = self.state(agent)
            step = {"idle": self._maybe_start, "training": self._follow_job, "rolling_out": self._follow_rollout}[state["state"]]
            try:
                await step(agent, policy, state)
            except Exception as error:  # noqa: BLE001 - one agent's failure leaves the others running
                logger.exception("retraining %s failed", agent)
                self._finish(agent, state, "retrain.failed", {"error": str(error)})

    def state(self, agent: str) -> dict:
        """The agent's recorded state; the first read records when its schedule started."""
        path = self._path(agent)
        if self.storage.exists(path):
            return self.storage.read_json(path)
        state = {"agent": agent, "state": "idle", "since": self.clock()}
        self._save(agent, state)
        return state

    async def _maybe_start(self, agent: str, policy: RetrainPolicy, state: dict) -> None:
        trigger = self._due(agent, policy, state)
        if trigger is None:
            return
        run = uuid.uuid4().hex[:12]
        self.audit("retrain.trigger", {"run": run, **trigger}, agent, None)
        recipe = self._recipe_with_labels(agent, policy, run)
        job = self.jobs.submit(f"python -m train.finetune --config {recipe} --fresh", {"BATON_STORAGE": self.storage.uri})
        state.update(state="training", run=run, job=job, trigger=trigger, started_at=self.clock(), last_run_at=self.clock(), labels_since=self.clock())
        self._save(agent, state)
        self.audit("retrain.job", {"run": run, "job": job, "recipe": recipe}, agent, None)

    def _recipe_with_labels(self, agent: str, policy: RetrainPolicy, run: str) -> str:
        """The policy's recipe plus this agent's reviewed labels as extra training rows."""
        recipe = yaml.safe_load((REPO_ROOT / policy.recipe).read_text(encoding="utf-8"))
        known = set((recipe["data"].get("label_map") or {}).values())
        # A reviewer may answer a label the model cannot learn (NEUTRAL for a binary model).
        rows = [r for r in self.labels(agent, None) if not known or r["label"] in known]
        folder = self.storage.path("retrain", agent, run)
        self.storage.fs.makedirs(folder, exist_ok=True)
        if rows:
            data = recipe["data"]
            labels_path = f"{folder}/reviewed.jsonl"
            lines = "".join(json.dumps({data.get("text_field", "text"): r["text"], data.get("label_field", "label"): r["label"]}) + "\n" for r in rows)
            self.storage.fs.pipe_file(labels_path, lines.encode())
            data["extra_train"] = [*data.get("extra_train", []), self.storage.url("retrain", agent, run, "reviewed.jsonl")]
            # Reviewed labels are already the model's labels: the recipe's map must not rename them.
            if data.get("label_map"):
                data["label_map"] = {**data["label_map"], **{v: v for v in data["label_map"].values()}}
        path = f"{folder}/recipe.yaml"
        self.storage.fs.pipe_file(path, yaml.safe_dump(recipe, sort_keys=False).encode())
        return path

    async def _follow_job(self, agent: str, policy: RetrainPolicy, state: dict) -> None:
        status = self.jobs.status(state["job"])
        if status not in FINISHED_JOB:
            return
        if status != "SUCCEEDED":
            self._finish(agent, state, "retrain.failed", {"job": state["job"], "status": status})
            return
        name = parse_ref(self.models[agent])[0]
        candidate = self._registered_since(name, state["started_at"])
        if candidate is None:
            self._finish(agent, state, "retrain.failed", {"job": state["job"], "error": f"the job registered no version of {name}"})
            return
        gate = self.registry.check_gate(name, candidate, **_gate_settings(self.registry, name, candidate))
        self.audit("retrain.gate", {"run": state["run"], "candidate": f"{name}:{candidate}", **gate}, agent, None)
        if not gate["passed"]:
            self._finish(agent, state, "retrain.failed", {"candidate": f"{name}:{candidate}", "error": gate["reason"]})
            return
        rollout = await self.start_rollout(agent, f"registry://{name}:{candidate}", policy.rollout, PRINCIPAL)
        state.update(state="rolling_out", candidate=f"{name}:{candidate}", rollout=rollout["id"])
        self._save(agent, state)
        self.audit("retrain.rollout", {"run": state["run"], "rollout": rollout["id"], "candidate": f"registry://{name}:{candidate}"}, agent, None)

    async def _follow_rollout(self, agent: str, policy: RetrainPolicy, state: dict) -> None:
        rollout = await self.get_rollout(state["rollout"])
        if rollout["state"] in FINISHED_ROLLOUT:
            state.update(state="idle", outcome=rollout["state"])
            self._save(agent, state)

    def _registered_since(self, name: str, since: float) -> str | None:
        fresh = [m for m in self.registry.versions(name) if m.created_at.timestamp() >= since]
        return fresh[-1].version if fresh else None

    def _finish(self, agent: str, state: dict, action: str, output: dict) -> None:
        state.update(state="idle", outcome=action)
        self._save(agent, state)
        self.audit(action, {"run": state.get("run"), **output}, agent, None)

    def _save(self, agent: str, state: dict) -> None:
        self.storage.write_json_atomic(self._path(agent), state)

    def _path(self, agent: str) -> str:
        return self.storage.path("retrain", f"{agent}.json")

    def view(self) -> dict[str, Any]:
        return {agent: self.state(agent) for agent in self.policies}


def _gate_settings(registry: ModelRegistry, name: str, version: str) -> dict:
    """The gate of the recipe that trained the version: its metric and promote margin."""
    evaluation = registry.manifest(name, version).recipe.get("evaluation", {})
    return {"metric": evaluation.get("metric", "accuracy"), "margin": float(evaluation.get("promote_margin", 0.0))}
