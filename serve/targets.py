"""The dispatcher's view of a Serve deployment: an agent version behind a handle, with
Serve's and Ray's own exceptions turned into the typed errors of ``cluster.errors``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from ray.exceptions import RayTaskError
from ray.serve.handle import DeploymentHandle

from actors.dispatcher import Target
from actors.invocation import Failure, Invocation, Result, StreamItem
from actors.specialists.registry import SPECIALISTS
from cluster.config import OrchestraConfig
from cluster.errors import BatonError
from serve.http_errors import SERVE_UNAVAILABLE, from_serve_error

logger = logging.getLogger(__name__)


def typed(error: Exception, where: str) -> BatonError:
    """Serve's back-pressure and availability errors as 503s; a replica's own BatonError as
    itself (Ray wraps it in RayTaskError and keeps the original as ``cause``)."""
    if isinstance(error, SERVE_UNAVAILABLE):
        return from_serve_error(error)
    cause = getattr(error, "cause", None) if isinstance(error, RayTaskError) else None
    if isinstance(cause, BatonError):
        return cause
    if isinstance(error, BatonError):
        return error
    logger.error("unexpected error from %s: %r", where, error)
    return BatonError(f"internal error in {where}; see its replica log")


class ServeTarget:
    """One agent version's deployment handle."""

    def __init__(self, handle: DeploymentHandle, streams: bool, where: str):
        self.handle, self.streams, self.where = handle, streams, where
        self._streaming = handle.options(stream=True) if streams else None

    async def call(self, invocation: Invocation) -> Result | Failure:
        try:
            return await self.handle.invoke.remote(invocation)
        except Exception as error:
            raise typed(error, self.where) from None

    async def stream(self, invocation: Invocation) -> AsyncIterator[StreamItem]:
        try:
            async for item in self._streaming.stream.remote(invocation):
                yield item
        except Exception as error:
            raise typed(error, self.where) from None


def serve_targets(config: OrchestraConfig, handles: dict[str, dict[str, DeploymentHandle]]) -> dict[str, dict[str, Target]]:
    """Each deployed agent version as a dispatcher target."""
    targets: dict[str, dict[str, Target]] = {}
    for agent in config.agents:
        for version in agent.versions:
            if version.version in handles.get(agent.name, {}):
                streams = SPECIALISTS[agent.version_kind(version)].streams
                where = f"agent {agent.name} {version.version}"
                targets.setdefault(agent.name, {})[version.version] = ServeTarget(handles[agent.name][version.version], streams, where)
    return targets
