"""Semantic router: picks the agent for a request from MiniLM embeddings of each agent's
description and examples, with calibrated confidence, a threshold, a fallback and sessions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from actors.embedding import Embedder
from cluster.config import AgentSettings, OrchestraConfig, RouterSettings
from cluster.errors import NotFound

ROUTED_BY = ("direct", "rule", "session", "router", "llm", "fallback", "none")
# A request that asks for several things is a sentence or two (the joined CLINC requests have
# at most 44 words); a longer text is content, and scoring its parts would only cost embeddings.
MULTI_INTENT_MAX_WORDS = 60


class Classifier(Protocol):
    """Texts -> (n, len(labels)) probabilities; labels name agents."""

    labels: list[str]

    def __call__(self, texts: list[str]) -> np.ndarray: ...


@dataclass
class RouteDecision:
    agent: str | None
    routed_by: str
    confidence: float
    candidates: list[dict] = field(default_factory=list)
    rule: str | None = None  # the rule's name when routed_by == "rule"

    def as_dict(self) -> dict:
        decision = {"agent": self.agent, "routed_by": self.routed_by, "confidence": self.confidence, "candidates": self.candidates}
        if self.rule is not None:
            decision["rule"] = self.rule
        return decision


class SemanticRouter:
    """Scores each agent by the best cosine similarity between the request and the agent's
    description or examples, and maps it to a confidence with a logistic calibration.

    Max-similarity over a handful of well-chosen examples (one per sub-intent) keeps every
    facet of an agent reachable, where a single centroid would blur them.
    """

    def __init__(
        self,
        agents: Sequence[AgentSettings],
        settings: RouterSettings,
        embed: Callable[[Sequence[str]], np.ndarray],
        classifier: Classifier | None = None,
    ):
        self.settings = settings
        self.embed = embed
        self.classifier = classifier
        self.agent_names = [a.name for a in agents]
        # A supervisor's examples resemble each single request they combine ("what language is
        # this and who is mentioned?"): it may take only a request that asks for several things.
        self._supervisor_columns = [i for i, a in enumerate(agents) if a.supervisor is not None and a.supervisor.policy == "router"]
        self._supervisors = [agents[i] for i in self._supervisor_columns]
        texts, owners = [], []
        for index, agent in enumerate(agents):
            for text in [agent.description, *agent.examples]:
                texts.append(text)
                owners.append(index)
        self._anchors = embed(texts)
        self._owner = np.asarray(owners)

    def confidence(self, similarity: np.ndarray | float) -> np.ndarray:
        calibration = self.settings.calibration
        z = (np.asarray(similarity, dtype=np.float64) - calibration.midpoint) / calibration.temperature
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """(n_requests, n_agents) confidences: calibrated similarity, blended with the
        classifier's probability of each agent when one is configured. Batch-friendly."""
        confidences = self.confidence(self.agent_similarities(self.embed(texts)))
        if self.classifier is None:
            return confidences
        weight = self.settings.classifier.weight
        return (1 - weight) * confidences + weight * self._classifier_probabilities(texts)

    def _classifier_probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """The classifier's probabilities in agent order; labels that are not agents (e.g. oos) drop out."""
        probabilities = self.classifier(list(texts))
        by_agent = np.zeros((len(texts), len(self.agent_names)))
        for column, label in enumerate(self.classifier.labels):
            if label in self.agent_names:
                by_agent[:, self.agent_names.index(label)] = probabilities[:, column]
        return by_agent

    def agent_similarities(self, embeddings: np.ndarray) -> np.ndarray:
        """(n_requests, n_agents) best similarity of each request to each agent."""
        similarity = embeddings @ self._anchors.T
        scores = np.full((len(embeddings), len(self.agent_names)), -1.0, dtype=np.float32)
        np.maximum.at(scores.T, self._owner, similarity.T)
        return scores

    def wants_segments(self, text: str) -> list[str]:
        """The segments to score for multi-intent routing: none unless a router-policy
        supervisor exists and the request splits into parts."""
        if not self._supervisors or len(text.split()) > MULTI_INTENT_MAX_WORDS:
            return []
        segments = team_segments(text)
        return segments if len(segments) > 1 else []

    def texts_to_score(self, text: str) -> list[str]:
        """What :meth:`decide_scored` needs scores for: the routing text, then the segments."""
        return [routing_text(text), *self.wants_segments(text)]

    def decide_scored(self, text: str, scores: Sequence[np.ndarray], session_agent: str | None = None) -> RouteDecision:
        """Route one request given the scores of its :meth:`texts_to_score`, in that order
        (from one batched :meth:`scores` call, or several)."""
        segment_scores = np.stack(scores[1:]) if len(scores) > 1 else None
        return self.decide(text, scores=scores[0], session_agent=session_agent, segment_scores=segment_scores)

    def decide(
        self,
        text: str,
        *,
        scores: np.ndarray | None = None,
        agent: str | None = None,
        session_agent: str | None = None,
        segment_scores: np.ndarray | None = None,
    ) -> RouteDecision:
        """Route one request; ``scores`` may come from a batched :meth:`scores` call of its
        :func:`routing_text`, ``segment_scores`` from one of :meth:`wants_segments`, and
        ``session_agent`` is the agent that answered the session's last turn."""
        if agent is not None:
            return self.direct(agent)
        segments = self.wants_segments(text)
        if segments:
            several = self._several_intents(self.scores(segments) if segment_scores is None else segment_scores)
            if several is not None:
                return several
        text = routing_text(text)
        confidences = self._single_or_multi(text, self.scores([text])[0] if scores is None else scores)
        order = np.argsort(-confidences)
        candidates = [
            {"agent": self.agent_names[i], "score": round(float(confidences[i]), 4)} for i in order[:3]
        ]
        return self._choose(text, confidences, order, candidates, session_agent)

    def _several_intents(self, segment_scores: np.ndarray) -> RouteDecision | None:
        """A request whose parts each name a different agent of a router-policy supervisor's
        team ("what is the sentiment of this, and who is mentioned?") goes to that supervisor."""
        for supervisor in self._supervisors:
            settings = supervisor.supervisor
            threshold = self.settings.threshold if settings.route_threshold is None else settings.route_threshold
            winners = part_winners(self, segment_scores, settings.team, threshold)
            if len(winners) >= 2:
                confidence = round(min(winners.values()), 4)
                candidates = [{"agent": name, "score": round(score, 4)} for name, score in sorted(winners.items(), key=lambda w: -w[1])]
                return RouteDecision(supervisor.name, "router", confidence, candidates[:3])
        return None

    def _single_or_multi(self, text: str, scores: np.ndarray) -> np.ndarray:
        if not self._supervisor_columns or len(team_segments(text)) > 1:
            return scores
        single = np.array(scores, copy=True)
        single[self._supervisor_columns] = 0.0
        return single

    def direct(self, agent: str) -> RouteDecision:
        if agent not in self.agent_names:
            raise NotFound(f"agent {agent!r} does not exist (agents: {self.agent_names})")
        return RouteDecision(agent, "direct", 1.0, [{"agent": agent, "score": 1.0}])

    def _choose(self, text, confidences, order, candidates, session_agent) -> RouteDecision:
        best = int(order[0])
        top = float(confidences[best])
        runner_up = float(confidences[order[1]]) if len(order) > 1 else 0.0
        if session_agent in self.agent_names and self._is_follow_up(text, top, runner_up):
            index = self.agent_names.index(session_agent)
            return RouteDecision(session_agent, "session", round(float(confidences[index]), 4), candidates)
        if top >= self.settings.threshold:
            return RouteDecision(self.agent_names[best], "router", round(top, 4), candidates)
        return self.unrouted(top, candidates)

    def unrouted(self, top: float, candidates: list[dict]) -> RouteDecision:
        """Nothing cleared the threshold: the fallback agent, or no agent."""
        if self.settings.fallback_agent is not None:
            return RouteDecision(self.settings.fallback_agent, "fallback", round(top, 4), candidates)
        return RouteDecision(None, "none", round(top, 4), candidates)

    def _is_follow_up(self, text: str, top: float, runner_up: float) -> bool:
        session = self.settings.session
        short = len(text.split()) <= session.short_followup_words
        unsure = top < self.settings.threshold or (top - runner_up) < session.ambiguity_margin
        return short or unsure



_SEGMENT_SPLIT = re.compile(r"(?:[?;!]|\.(?=\s)|,?\s+(?:and also|and then|and|also|plus|as well as|then)\s+)", re.IGNORECASE)


def request_segments(text: str, max_segments: int = 6) -> list[str]:
    """The parts of a request that may each ask for something ("what language is this and
    who is mentioned?" -> both halves), with the whole request first."""
    parts = [part.strip(" ,") for part in _SEGMENT_SPLIT.split(text)]
    parts = [part for part in parts if len(part.split()) >= 2]
    return [text, *parts[: max_segments - 1]] if len(parts) > 1 else [text]


def routing_text(text: str) -> str:
    """What the router compares with the agents: the instructions of a request that quotes its
    payload ("what is the sentiment of this? 'Tim Cook loved Paris'" asks for sentiment, and
    the quoted names must not pull it to the entities agent), else the whole text."""
    instructions = instructions_text(text)
    return instructions if instructions != text and len(instructions.split()) >= 3 else text


def team_segments(text: str) -> list[str]:
    """What a supervisor's router policy scores: the request's instructions (a quoted
    payload left out), whole and split by :func:`request_segments`."""
    return request_segments(instructions_text(text))


# Double and typographic quotes anywhere; single quotes only where they are not apostrophes.
_QUOTED = re.compile(r"[\"“„«]([^\"”“«»]{3,})[\"”“»]|(?<![\w])'([^']{3,})'(?![\w])")


def payload_text(text: str) -> str:
    """The part of a request the team should work on: a quoted passage when the request
    wraps one in instructions ("What language is this? 'Gestern hat…'"), else the whole text."""
    quoted = [(match.group(1) or match.group(2)).strip() for match in _QUOTED.finditer(text)]
    quoted = [q for q in quoted if len(q.split()) >= 2]
    return max(quoted, key=len) if quoted else text


def instructions_text(text: str) -> str:
    """The request without its quoted payload: what the caller asks for."""
    return _QUOTED.sub(" ", text).strip() or text


def choose_from_segments(router: SemanticRouter, segment_scores: np.ndarray, team: Sequence[str], threshold: float, k: int) -> list[str]:
    """The router policy's team for a request, from (n_segments, n_agents) scores whose first
    row is the whole request: each part of a split request names its best team agent when
    that clears the threshold (up to ``k``, best first); a request that does not split, or
    whose parts clear nothing, gets the whole request's best team agent.

    Per-part winners beat "every agent above the threshold anywhere": on the CLINC multi-intent
    test set, exact-set accuracy 0.81 against 0.56 (docs/benchmarks.md, router quality)."""
    best = part_winners(router, segment_scores, team, threshold)
    chosen = sorted(best, key=best.get, reverse=True)[:k]
    if chosen:
        return chosen
    members = [agent for agent in team if agent in router.agent_names]
    return [members[int(np.argmax(segment_scores[0, [router.agent_names.index(a) for a in members]]))]]


def part_winners(router: SemanticRouter, segment_scores: np.ndarray, team: Sequence[str], threshold: float) -> dict[str, float]:
    """Each part's best team agent, when it clears the threshold, with its best confidence
    (the parts are the rows after the first, which is the whole request)."""
    members = [agent for agent in team if agent in router.agent_names]
    scores = segment_scores[:, [router.agent_names.index(agent) for agent in members]]
    best: dict[str, float] = {}
    for row in scores[1:] if len(scores) > 1 else scores:
        winner = int(np.argmax(row))
        if row[winner] >= threshold:
            best[members[winner]] = max(best.get(members[winner], 0.0), float(row[winner]))
    return best


def choose_for(router: SemanticRouter, text: str, team: Sequence[str], threshold: float, k: int) -> list[str]:
    """The router policy's team for one request, scored synchronously (offline evaluation)."""
    return choose_from_segments(router, router.scores(team_segments(text)), team, threshold, k)


def build_router(config: OrchestraConfig, storage_uri: str, torch_threads: int | None = None) -> SemanticRouter:
    """The router of an orchestra (models already pinned), with its classifier when configured."""
    classifier = None
    if config.router.classifier is not None:
        from actors.classifier_io import open_classifier

        classifier = open_classifier(config.router.classifier.model, storage_uri)
    embedder = Embedder(config.router.model_path, torch_threads, backend=config.router.embedding_backend)
    return SemanticRouter([a for a in config.agents if a.routable], config.router, embedder, classifier=classifier)
