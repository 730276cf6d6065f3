"""Offline evaluation of a router on labelled requests: in-scope accuracy, out-of-scope
recall, in-scope rejection, a confusion table, decision latency and, with an LLM router,
the share of requests that would reach the LLM. And of a supervisor's choice of team on
requests labelled with the set of agents they need: exact-set accuracy, precision, recall.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np

from actors.router import SemanticRouter, choose_for
from cluster.config import AgentSettings, OrchestraConfig

NONE = "(none)"
# The decisions after which RoutingPolicy may still ask its LLM router.
LLM_ELIGIBLE = ("router", "fallback", "none")


class WantsLlm(Protocol):
    """What the eval needs of an LLM router (actors.routing.LlmRouter): whether it would be asked."""

    def wanted(self, top: float) -> bool: ...


@dataclass
class RoutingReport:
    n: int
    in_scope_accuracy: float
    oos_recall: float | None
    in_scope_rejection: float
    p50_ms: float
    p95_ms: float
    confusion: Counter = field(default_factory=Counter)
    llm_share: float | None = None  # share of requests the LLM router would be asked; None without one

    def summary(self) -> dict:
        summary = {
            "in_scope_accuracy": round(self.in_scope_accuracy, 4),
            "oos_recall": None if self.oos_recall is None else round(self.oos_recall, 4),
            "in_scope_rejection": round(self.in_scope_rejection, 4),
            "n": self.n,
            "p50_ms": round(self.p50_ms, 3),
            "p95_ms": round(self.p95_ms, 3),
        }
        if self.llm_share is not None:
            summary["llm_share"] = round(self.llm_share, 4)
        return summary


def expected_agent(row: dict, label_field: str, none_label: str | None) -> str | None:
    label = row.get(label_field)
    return None if label is None or label == none_label else str(label)


def evaluate_router(
    router: SemanticRouter,
    rows: Sequence[dict],
    *,
    label_field: str = "agent",
    none_label: str | None = None,
    text_field: str = "text",
    progress: Callable[[Iterable], Iterable] = lambda it: it,
    llm: WantsLlm | None = None,
) -> RoutingReport:
    """Route each row alone (as a request would be) and compare with its label.

    A row whose label is null or ``none_label`` should be taken by no agent; an in-scope
    row counts as correct only when routed to its agent (a rejection counts as wrong).
    With ``llm`` (the config's LLM router), ``llm_share`` counts the rows RoutingPolicy
    would send to it; it is not called, so the figures are the embedding router's own.
    """
    unknown = sorted({e for r in rows if (e := expected_agent(r, label_field, none_label))} - set(router.agent_names))
    if unknown:
        raise ValueError(f"labels {unknown[:5]} in field {label_field!r} are not agents of this config: {router.agent_names}")
    latencies, confusion = [], Counter()
    correct = rejected = in_scope = oos = oos_rejected = to_llm = 0
    for row in progress(rows):
        start = time.perf_counter()
        decision = router.decide(str(row[text_field]))
        latencies.append((time.perf_counter() - start) * 1000)
        if llm is not None:
            to_llm += decision.routed_by in LLM_ELIGIBLE and llm.wanted(decision.confidence)
        expected = expected_agent(row, label_field, none_label)
        got = decision.agent if decision.routed_by in ("router", "direct", "session") else None
        confusion[(expected or NONE, got or NONE)] += 1
        if expected is None:
            oos += 1
            oos_rejected += got is None
        else:
            in_scope += 1
            correct += got == expected
            rejected += got is None
    return RoutingReport(
        n=len(rows),
        in_scope_accuracy=correct / in_scope if in_scope else 0.0,
        oos_recall=oos_rejected / oos if oos else None,
        in_scope_rejection=rejected / in_scope if in_scope else 0.0,
        p50_ms=float(np.percentile(latencies, 50)) if latencies else 0.0,
        p95_ms=float(np.percentile(latencies, 95)) if latencies else 0.0,
        confusion=confusion,
        llm_share=(to_llm / len(rows) if rows else 0.0) if llm is not None else None,
    )


# -- a supervisor's choice of team -------------------------------------------------------


@dataclass
class TeamReport:
    n: int
    exact_set_accuracy: float  # share of requests whose chosen set is exactly the labelled one
    precision: float  # chosen agents that were wanted, over all requests
    recall: float  # wanted agents that were chosen, over all requests
    p50_ms: float
    p95_ms: float

    def summary(self) -> dict:
        return {
            "exact_set_accuracy": round(self.exact_set_accuracy, 4),
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "n": self.n,
        }


def expected_team(row: dict, label_field: str) -> list[str]:
    """A row's wanted agents: a list of names (a single name counts as a list of one)."""
    label = row.get(label_field)
    if isinstance(label, str):
        return [label]
    if not isinstance(label, list) or not label or not all(isinstance(name, str) for name in label):
        raise ValueError(f"field {label_field!r} must hold a non-empty list of agent names, got {label!r}")
    return label


def team_chooser(router: SemanticRouter, supervisor: AgentSettings, default_threshold: float) -> Callable[[str], list[str]]:
    """text -> the team agents the supervisor's router policy picks, as the ingress picks them."""
    settings = supervisor.supervisor
    if settings is None or settings.policy != "router":
        raise ValueError(f"agent {supervisor.name!r} is not a supervisor with the router policy")
    threshold = default_threshold if settings.threshold is None else settings.threshold
    return lambda text: choose_for(router, text, settings.team, threshold, settings.max_agents)


def supervisor_chooser(router: SemanticRouter, config: OrchestraConfig, name: str) -> tuple[Callable[[str], list[str]], list[str]]:
    """(chooser, team) of the config's supervisor ``name``."""
    agent = config.agent(name)
    if agent is None:
        raise ValueError(f"agent {name!r} does not exist (agents: {config.agent_names()})")
    chooser = team_chooser(router, agent, config.router.threshold)
    return chooser, list(agent.supervisor.team)


def evaluate_team(
    choose: Callable[[str], Sequence[str]],
    rows: Sequence[dict],
    *,
    team: Sequence[str],
    label_field: str = "agents",
    text_field: str = "text",
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> TeamReport:
    """Choose a team for each row alone and compare the set with the row's labelled agents.

    Precision and recall are pooled over all rows (micro-averaged): precision is the share of
    chosen agents that were wanted, recall the share of wanted agents that were chosen.
    """
    expected = [expected_team(row, label_field) for row in rows]
    unknown = sorted({name for names in expected for name in names} - set(team))
    if unknown:
        raise ValueError(f"labels {unknown[:5]} in field {label_field!r} are not on the team: {list(team)}")
    latencies = []
    exact = hits = chosen_total = wanted_total = 0
    for row, wanted in zip(progress(rows), expected):
        start = time.perf_counter()
        chosen = set(choose(str(row[text_field])))
        latencies.append((time.perf_counter() - start) * 1000)
        wanted = set(wanted)
        exact += chosen == wanted
        hits += len(chosen & wanted)
        chosen_total += len(chosen)
        wanted_total += len(wanted)
    return TeamReport(
        n=len(rows),
        exact_set_accuracy=exact / len(rows) if rows else 0.0,
        precision=hits / chosen_total if chosen_total else 0.0,
        recall=hits / wanted_total if wanted_total else 0.0,
        p50_ms=float(np.percentile(latencies, 50)) if latencies else 0.0,
        p95_ms=float(np.percentile(latencies, 95)) if latencies else 0.0,
    )
