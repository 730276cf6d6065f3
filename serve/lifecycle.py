"""The lifecycle's HTTP surface (API.md §10): guarded rollouts, shadow copies, A/B reports and
drift. Each handler is a thin call into the control actors; every change is audited.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, Path, Query, Request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import Field, StrictStr

from actors.experiments import experiment_report
from cluster.config import RolloutPlan
from cluster.errors import NotFound
from cluster.keys import Principal
from serve.schemas import Body, JsonInt

if TYPE_CHECKING:
    from serve.ingress import Gateway

RolloutId = Path(..., pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The rollout's id.")


class ShadowBody(Body):
    version: StrictStr = Field(..., min_length=1, max_length=32, description="The version that receives the copies.")
    percent: JsonInt = Field(..., ge=0, le=100, description="Share of the agent's requests copied; 0 stops shadowing.")


class RolloutBody(RolloutPlan):
    agent: StrictStr = Field(..., min_length=1, max_length=64, description="The agent whose model is rolled out.")
    candidate: StrictStr = Field(
        ..., pattern=r"^registry://", max_length=200, description="The candidate model: registry://name:version or registry://name@alias."
    )


def lifecycle_router(gate: Gateway, require) -> APIRouter:
    router = APIRouter()
    admin_key = Depends(require("admin"))

    @router.post("/v1/admin/rollouts", status_code=201, summary="Start a guarded rollout of a candidate model.")
    async def start_rollout(request: Request, body: RolloutBody, principal: Principal = admin_key) -> dict:
        gate.known(body.agent)
        plan = RolloutPlan.model_validate(body.model_dump(exclude={"agent", "candidate"}))
        rollout = await gate.control.call(gate.control.rollouts, "start", body.agent, body.candidate, plan.model_dump(), principal.key_id)
        gate.note_action(request, "admin.rollouts.start", agent=body.agent, after={"id": rollout["id"], "candidate": body.candidate})
        return rollout

    @router.get("/v1/admin/rollouts", summary="Active rollouts and the most recent finished ones.")
    async def list_rollouts(_: Principal = admin_key) -> dict:
        return {"rollouts": await gate.control.call(gate.control.rollouts, "list")}

    @router.get("/v1/admin/rollouts/{rollout_id}", summary="One rollout: state, step, weight and every check.")
    async def get_rollout(rollout_id: str = RolloutId, _: Principal = admin_key) -> dict:
        return await gate.control.call(gate.control.rollouts, "get", rollout_id)

    for action in ("pause", "resume", "abort"):
        router.add_api_route(
            f"/v1/admin/rollouts/{{rollout_id}}/{action}", _rollout_action(gate, action, admin_key), methods=["POST"],
            summary=f"{action.capitalize()} a rollout.",
        )

    @router.put("/v1/admin/agents/{name}/shadow", summary="Copy a share of an agent's requests to a shadow version.")
    async def set_shadow(request: Request, name: str, body: ShadowBody, _: Principal = admin_key) -> dict:
        gate.known(name)
        change = await gate.control.call(gate.control.traffic, "set_shadow", name, body.version, body.percent)
        gate.adopt_traffic(change["snapshot"])
        gate.note_action(request, "admin.shadow.set", agent=name, version=body.version, before=change["before"], after=change["after"])
        return {"agent": name, "shadow": change["after"]}

    @router.get("/v1/admin/experiments/{agent}", summary="A/B report: per version metrics, differences, CIs, fixed and sequential tests.")
    async def experiment(
        agent: str,
        window_s: float = Query(3600.0, gt=0, le=30 * 86400, description="How far back the comparison looks, in seconds."),
        _: Principal = admin_key,
    ) -> dict:
        gate.known(agent)
        windows = await gate.version_windows(agent, window_s)
        if not windows:
            raise NotFound(f"agent {agent!r} has no versions to compare")
        return experiment_report(agent, windows)

    @router.get("/v1/admin/retraining", summary="Each retraining policy's state: idle, training (a Ray job) or rolling out.")
    async def retraining(_: Principal = admin_key) -> dict:
        return {"agents": await gate.control.call(gate.control.rollouts, "retraining_view")}

    @router.post("/v1/admin/agents/{name}/retrain", status_code=202, summary="Retrain an agent now, as its policy would on drift.")
    async def retrain(request: Request, name: str, principal: Principal = admin_key) -> dict:
        gate.known(name)
        answer = await gate.control.call(gate.control.rollouts, "retrain", name, principal.key_id)
        gate.note_action(request, "admin.retrain.trigger", agent=name, after=answer)
        return answer

    @router.get("/v1/admin/drift", summary="Drift of each agent version against its model's reference profile.")
    async def drift(_: Principal = admin_key) -> dict:
        return {"agents": await gate.control.call(gate.control.monitor, "drift_report")}

    return router


def _rollout_action(gate: Gateway, action: str, admin_key):
    async def handler(request: Request, rollout_id: str = RolloutId, principal: Principal = admin_key) -> dict:
        rollout = await gate.control.call(gate.control.rollouts, action, rollout_id, principal.key_id)
        gate.note_action(request, f"admin.rollouts.{action}", agent=rollout.get("agent"), after={"id": rollout_id, "state": rollout.get("state")})
        return rollout

    handler.__name__ = f"{action}_rollout"
    return handler


def lifecycle_metrics(weights: dict[str, dict[str, int]], rollouts: list[dict]) -> bytes:
    """``baton_rollout_weight`` from the replica's traffic table and ``baton_rollouts_failed_total``
    from the controller's recorded rollouts, in Prometheus text format."""
    registry = CollectorRegistry()
    registry.register(_LifecycleCollector(weights, rollouts))
    return generate_latest(registry)


class _LifecycleCollector(Collector):
    def __init__(self, weights: dict[str, dict[str, int]], rollouts: list[dict]):
        self.weights, self.rollouts = weights, rollouts

    def collect(self):
        weight = GaugeMetricFamily("baton_rollout_weight", "Traffic weight of each agent version, in percent.", labels=["agent", "version"])
        for agent, versions in self.weights.items():
            for version, value in versions.items():
                weight.add_metric([agent, version], value)
        failed = CounterMetricFamily("baton_rollouts_failed", "Rollouts that ended failed (rolled back), among those recorded.", labels=["agent"])
        for agent, count in Counter(r["agent"] for r in self.rollouts if r.get("state") == "failed").items():
            failed.add_metric([agent], count)
        yield from (weight, failed)
