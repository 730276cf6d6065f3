"""Shadow traffic: a share of an agent's requests is copied to a shadow version off the
critical path, and each copy is compared with the primary's answer (agreement, latency, errors).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from rapidfuzz import fuzz

from actors.dispatcher import Called, Target
from actors.invocation import Invocation, finish
from actors.traffic import TrafficTable
from cluster.errors import BatonError, Unavailable

logger = logging.getLogger(__name__)


def agreement(primary: Called, shadow: Called, text_threshold: float) -> float | None:
    """1.0 when the two answers agree, 0.0 when not, None when either failed.

    Same label where both declare one; otherwise two text answers agree when their
    similarity reaches ``text_threshold``; any other output must be equal as JSON.
    """
    if not (primary.ok and shadow.ok):
        return None
    first, second = primary.result, shadow.result
    if first.label is not None and second.label is not None:
        return float(first.label == second.label)
    texts = [_text_of(first.output), _text_of(second.output)]
    if all(isinstance(t, str) for t in texts):
        return float(fuzz.ratio(*texts) / 100 >= text_threshold)
    return float(_canonical(first.output) == _canonical(second.output))


def _text_of(output: Any) -> str | None:
    if isinstance(output, str):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("text"), str):
        return output["text"]
    return None


def _canonical(output: Any) -> str:
    return json.dumps(output, sort_keys=True, default=str)


class ShadowCopies:
    """The dispatcher's shadow hook. A copy is made only if the agent has a shadow version
    other than the one picked, the request falls in its share and fewer than
    ``max_in_flight`` copies run; the caller never waits for it or sees its errors.
    """

    def __init__(
        self,
        targets: Mapping[str, Mapping[str, Target]],
        traffic: TrafficTable,
        report: Callable[[dict], None],
        *,
        max_in_flight: int = 32,
        text_agreement: float = 0.8,
        timeout_s: float = 30.0,
        rng: random.Random | None = None,
    ):
        self.targets, self.traffic, self.report = targets, traffic, report
        self.max_in_flight, self.text_agreement, self.timeout_s = max_in_flight, text_agreement, timeout_s
        self._rng = rng or random.Random()
        self._running: set[asyncio.Task] = set()
        self.skipped = 0

    def __call__(self, agent: str, version: str, invocation: Invocation) -> Callable[[Called], None] | None:
        spec = self.traffic.shadow(agent) if agent in self.targets else None
        if spec is None or spec["version"] == version or self._rng.random() * 100 >= spec["percent"]:
            return None
        target = self.targets[agent].get(spec["version"])
        if target is None:  # this replica has not connected the version yet
            return None
        if len(self._running) >= self.max_in_flight:
            self.skipped += 1
            return None
        primary: asyncio.Future = asyncio.get_running_loop().create_future()
        task = asyncio.get_running_loop().create_task(self._copy(agent, spec["version"], target, invocation, primary))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return lambda called: primary.done() or primary.set_result(called)

    async def _copy(self, agent: str, version: str, target: Target, invocation: Invocation, primary: asyncio.Future) -> None:
        try:
            # Sent at once rather than after the primary answers: measured on 2 cores, a copy
            # that overlaps its own primary slows it less than one that overlaps the next request.
            shadow = await self._call(agent, version, target, invocation)
            first: Called = await asyncio.wait_for(primary, timeout=self.timeout_s)
            self.report(self.outcome(first, shadow))
        except Exception:  # a copy must never disturb the replica; it is only a measurement
            logger.exception("shadow copy to %s %s failed", agent, version)

    async def _call(self, agent: str, version: str, target: Target, invocation: Invocation) -> Called:
        started = time.perf_counter()
        try:
            item = await asyncio.wait_for(target.call(invocation.derive(stream=False)), timeout=self.timeout_s)
            return Called(agent, version, _ms(started), result=finish(item))
        except asyncio.TimeoutError:
            return Called(agent, version, _ms(started), error=Unavailable(f"shadow {agent} {version} timed out", retry_after_s=1))
        except BatonError as error:
            return Called(agent, version, _ms(started), error=error)

    def outcome(self, primary: Called, shadow: Called) -> dict:
        """The monitor's shadow outcome (kind "shadow"), counted under the shadow version."""
        return {
            "kind": "shadow",
            "ts": time.time(),
            "agent": shadow.agent,
            "version": shadow.version,
            "primary_version": primary.version,
            "status": 200 if shadow.ok else shadow.error.status,
            "latency_ms": shadow.latency_ms,
            "primary_status": 200 if primary.ok else primary.error.status,
            "primary_latency_ms": primary.latency_ms,
            "agreement": agreement(primary, shadow, self.text_agreement),
            "label": shadow.result.label if shadow.ok else None,
        }

    @property
    def in_flight(self) -> int:
        return len(self._running)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
