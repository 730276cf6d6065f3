"""Versions deployed at run time: a rollout candidate runs as a Serve application of its own
beside the orchestra's, so adding or retiring it restarts nothing else, and the shared
traffic table records where it is served so every ingress replica connects to it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from ray.serve import api as serve_api
from ray.serve.handle import DeploymentHandle

from cluster.config import AgentSettings, OrchestraConfig, VersionSettings
from cluster.errors import Conflict, NotFound
from cluster.version import code_version
from serve.agent import deployment_name

logger = logging.getLogger(__name__)


def candidate_app(agent: str, version: str) -> str:
    return f"baton.{agent}.{version}"


def template_version(agent: AgentSettings) -> VersionSettings:
    """The configured version a candidate copies its resources and params from: the heaviest."""
    return max(agent.versions, key=lambda v: v.weight)


class ServeFleet:
    """The rollout controller's Fleet port over Ray Serve.

    ``traffic`` is the shared traffic actor (a Ray handle); ``app_name`` is the orchestra's
    own application, whose deployments a candidate's ``uses`` reach.
    """

    def __init__(self, config: OrchestraConfig, storage_uri: str, traffic: Any, app_name: str):
        self.config, self.storage_uri, self.traffic, self.app_name = config, storage_uri, traffic, app_name

    async def deploy(self, agent: str, version: str, model_ref: str) -> None:
        """Submit the candidate's application and enter it in the traffic table at weight 0;
        ``ready`` follows it. Deploying again (a restarted controller) is harmless."""
        application = self._bind(self._agent(agent), version, model_ref)
        name = candidate_app(agent, version)
        # Not serve.run: it waits for the replicas, and the controller must stay free to abort meanwhile.
        await asyncio.to_thread(serve_api._run, application, _blocking=False, name=name, route_prefix=None)
        location = {"app": name, "deployment": deployment_name(agent, version), "model": model_ref}
        try:
            await self.traffic.add_version.remote(agent, version, location)
        except Conflict:  # already there: a controller deploying again after its restart
            logger.info("agent %s %s is already in the traffic table", agent, version)

    async def ready(self, agent: str, version: str) -> bool:
        status = await asyncio.to_thread(serve.status)
        application = status.applications.get(candidate_app(agent, version))
        return application is not None and application.status.value == "RUNNING"

    async def retire(self, agent: str, version: str) -> None:
        """Stop a run-time version that takes no traffic: out of the traffic table at once, its
        application deleted ``rollouts.drain_s`` later, once no ingress replica can still pick it.
        A configured version stays (no-op). Idempotent: a restarted controller finishes the job."""
        added = (await self.traffic.snapshot.remote())["agents"].get(agent, {}).get("added", {})
        app = added.get(version, {}).get("app") or candidate_app(agent, version)
        if version in added:
            await self.traffic.remove_version.remote(agent, version)
        if app not in (await asyncio.to_thread(serve.status)).applications:
            return
        await asyncio.sleep(self.config.rollouts.drain_s)
        await asyncio.to_thread(serve.delete, app)

    def _agent(self, agent: str) -> AgentSettings:
        settings = self.config.agent(agent)
        if settings is None or settings.composite:
            raise NotFound(f"agent {agent!r} is not a served agent of this orchestra")
        return settings

    def _bind(self, agent: AgentSettings, version: str, model_ref: str):
        from actors.specialists.registry import SPECIALISTS
        from serve.builder import bind_agent_version

        template = template_version(agent)
        if "model" not in SPECIALISTS[agent.version_kind(template)].Params.model_fields:
            raise Conflict(f"agent {agent.name!r} (kind {agent.version_kind(template)!r}) takes no model, so it has no candidate to roll out")
        settings = template.model_copy(update={"version": version, "model": model_ref, "weight": 0, "if_missing": "fail"})
        peers = {name: {v.version: self._handle(name, v.version) for v in self.config.agent(name).versions} for name in agent.uses}
        return bind_agent_version(self.config, agent, settings, self.storage_uri, peers, code_version())

    def _handle(self, agent: str, version: str) -> DeploymentHandle:
        return serve.get_deployment_handle(deployment_name(agent, version), app_name=self.app_name)
