"""One Serve deployment per agent version: loads its specialist once per replica and
answers single requests, batching them with ``@serve.batch`` when the model gains from it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from ray import serve

from actors.specialists.registry import create_specialist
from cluster.errors import BatonError

logger = logging.getLogger(__name__)


def deployment_name(agent: str, version: str) -> str:
    return f"{agent}.{version}"


def error_envelope(error: BatonError) -> dict:
    """Errors cross the handle as data: Ray's wrapped exceptions lose their attributes."""
    return {"__error__": {"type": type(error).__name__, "message": error.message}}


@serve.deployment
class AgentVersion:
    def __init__(self, agent: str, version: str, kind: str, params: dict, torch_threads: int, batching: dict):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch

        torch.set_num_threads(torch_threads)
        self.agent, self.version = agent, version
        self.specialist = create_specialist(kind, params)
        self.specialist.load()
        self._predict_batch.set_max_batch_size(batching["max_batch_size"])
        self._predict_batch.set_batch_wait_timeout_s(batching["batch_wait_timeout_s"])

    async def predict(self, text: str, options: dict | None = None) -> dict:
        if self.specialist.batchable:
            return await self._predict_batch((text, options or {}))
        return (await asyncio.to_thread(self._predict_isolated, [(text, options or {})]))[0]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _predict_batch(self, items: list[tuple[str, dict]]) -> list[dict]:
        # The model runs in a thread so the replica keeps accepting the next batch.
        return await asyncio.to_thread(self._predict_isolated, items)

    def _predict_isolated(self, items: list[tuple[str, dict]]) -> list[dict]:
        """Predict the batch; if one item is bad, answer the others and fail only that one."""
        texts, options = [t for t, _ in items], [o for _, o in items]
        try:
            return self.specialist.predict(texts, options)
        except BatonError as error:
            if len(items) == 1:
                return [error_envelope(error)]
        return [self._predict_isolated([item])[0] for item in items]

    def describe(self) -> dict[str, Any]:
        return {"agent": self.agent, "version": self.version, **self.specialist.describe()}
