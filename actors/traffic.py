"""Traffic split between an agent's versions: integer weights summing to 100, a weighted
pick per request, sticky on a session or user key so one caller keeps one version; plus the
versions added at run time (rollout candidates, with where they are served) and shadow copies.
"""

from __future__ import annotations

import hashlib
import random
from typing import Mapping

from cluster.errors import Conflict, NotFound, ValidationFailed

BUCKETS = 10_000


def sticky_bucket(agent: str, key: str) -> int:
    """A stable bucket in [0, BUCKETS) for (agent, key), the same on every replica."""
    digest = hashlib.blake2b(f"{agent}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


class TrafficTable:
    """Weights per agent and version, with a generation number that grows on each change.

    A pick maps a bucket onto cumulative weight ranges in version order, so when weights
    shift only the callers in the moved slice change version.
    """

    def __init__(self, agents: Mapping[str, Mapping]):
        # agents: {name: {"weights": {version: int}, "sticky": bool,
        #                 "added": {version: location}?, "shadow": {"version", "percent"} | None?}}
        self._agents = {name: _copy(spec) for name, spec in agents.items()}
        self.generation = 0

    def snapshot(self) -> dict:
        return {"generation": self.generation, "agents": {n: _copy(a) for n, a in self._agents.items()}}

    def load(self, snapshot: Mapping) -> None:
        """Adopt another table's snapshot if it is newer (replicas follow the shared table)."""
        if snapshot["generation"] > self.generation:
            self._agents = {n: _copy(a) for n, a in snapshot["agents"].items()}
            self.generation = snapshot["generation"]

    def added(self, agent: str | None = None) -> dict:
        """Versions added at run time with their locations: {agent: {version: location}}."""
        names = [agent] if agent is not None else list(self._agents)
        return {n: dict(self._spec(n)["added"]) for n in names if self._spec(n)["added"]}

    def add_version(self, agent: str, version: str, location: Mapping) -> dict:
        """A version deployed at run time joins at weight 0; ``location`` says where it is served."""
        spec = self._spec(agent)
        if version in spec["weights"]:
            raise Conflict(f"agent {agent!r} already has a version {version!r}")
        spec["weights"][version] = 0
        spec["added"][version] = dict(location)
        self.generation += 1
        return {"agent": agent, "version": version, **dict(location)}

    def remove_version(self, agent: str, version: str) -> None:
        """Drop a run-time version that serves no traffic (a retired candidate)."""
        spec = self._spec(agent)
        if version not in spec["added"]:
            raise Conflict(f"version {version!r} of agent {agent!r} was not added at run time, so it stays")
        if spec["weights"][version] > 0 or (spec["shadow"] or {}).get("version") == version:
            raise Conflict(f"version {version!r} of agent {agent!r} still takes traffic or shadow copies")
        del spec["weights"][version], spec["added"][version]
        self.generation += 1

    def shadow(self, agent: str) -> dict | None:
        return self._spec(agent)["shadow"]

    def set_shadow(self, agent: str, version: str, percent: int) -> tuple[dict | None, dict | None]:
        """Copy ``percent`` of the agent's requests to ``version`` (0 stops); returns (before, after)."""
        spec = self._spec(agent)
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ValidationFailed(f"percent: must be an integer from 0 to 100, got {percent!r}")
        if percent and version not in spec["weights"]:
            raise Conflict(f"version {version!r} of agent {agent!r} is not deployed (deployed: {sorted(spec['weights'])})")
        before = spec["shadow"]
        spec["shadow"] = {"version": version, "percent": percent} if percent else None
        self.generation += 1
        return before, spec["shadow"]

    def weights(self, agent: str) -> dict[str, int]:
        return dict(self._spec(agent)["weights"])

    def set_weights(self, agent: str, weights: Mapping[str, int], sticky: bool | None = None) -> tuple[dict, dict]:
        """Validate and apply new weights; returns (before, after) for the audit record."""
        spec = self._spec(agent)
        unknown = sorted(set(weights) - set(spec["weights"]))
        if unknown:
            raise Conflict(
                f"weights: version(s) {unknown} of agent {agent!r} are not deployed (deployed: {sorted(spec['weights'])})"
            )
        for version, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                raise ValidationFailed(f"weights.{version}: must be a non-negative integer, got {weight!r}")
        total = sum(weights.values())
        if total != 100:
            raise ValidationFailed(f"weights: must sum to 100, got {total}")
        before = {"weights": dict(spec["weights"]), "sticky": spec["sticky"]}
        # Versions left out of the request get weight 0: the request states the whole split.
        spec["weights"] = {v: int(weights.get(v, 0)) for v in spec["weights"]}
        if sticky is not None:
            spec["sticky"] = bool(sticky)
        self.generation += 1
        return before, {"weights": dict(spec["weights"]), "sticky": spec["sticky"]}

    def pick(self, agent: str, sticky_key: str | None = None, rng: random.Random | None = None) -> str:
        spec = self._spec(agent)
        if spec["sticky"] and sticky_key:
            bucket = sticky_bucket(agent, sticky_key)
        else:
            bucket = (rng or random).randrange(BUCKETS)
        point = bucket * 100 / BUCKETS
        cumulative = 0
        live = [(v, w) for v, w in spec["weights"].items() if w > 0]
        for version, weight in live:
            cumulative += weight
            if point < cumulative:
                return version
        return live[-1][0]

    def _spec(self, agent: str) -> dict:
        if agent not in self._agents:
            raise NotFound(f"agent {agent!r} does not exist (agents: {sorted(self._agents)})")
        return self._agents[agent]


def _copy(spec: Mapping) -> dict:
    shadow = spec.get("shadow")
    return {
        "weights": dict(spec["weights"]),
        "sticky": bool(spec["sticky"]),
        "added": {v: dict(location) for v, location in (spec.get("added") or {}).items()},
        "shadow": dict(shadow) if shadow else None,
    }
