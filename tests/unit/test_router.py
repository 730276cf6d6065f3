"""SemanticRouter with the shared session store, and the routing evaluation, on the real MiniLM embeddings."""

from __future__ import annotations

import pytest

from actors.embedding import Embedder
from actors.router import SemanticRouter
from actors.routing_eval import evaluate_router
from actors.sessions import SessionLimits, SqliteSessionStore
from cluster.config import AgentSettings, RouterSettings
from cluster.errors import NotFound

AGENTS = [
    AgentSettings(
        name="weather",
        kind="echo",
        description="weather forecasts, temperature, rain and snow",
        examples=["will it rain tomorrow", "what's the temperature in Berlin", "is it going to snow this weekend"],
        versions=[{"version": "v1", "weight": 100}],
    ),
    AgentSettings(
        name="banking",
        kind="echo",
        description="bank accounts, balances, transfers and cards",
        examples=["what's my account balance", "transfer 50 dollars to savings", "freeze my credit card"],
        versions=[{"version": "v1", "weight": 100}],
    ),
]


@pytest.fixture(scope="module")
def embed():
    return Embedder()


class FakeClock:
    """Test double for time: advanced by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_router(embed, **settings) -> SemanticRouter:
    base = {"threshold": 0.5, "calibration": {"midpoint": 0.35, "temperature": 0.05}}
    return SemanticRouter(AGENTS, RouterSettings.model_validate({**base, **settings}), embed)


def test_routes_by_meaning_with_calibrated_confidence(embed):
    router = make_router(embed)
    decision = router.decide("how much money is in my checking account?")
    assert (decision.agent, decision.routed_by) == ("banking", "router")
    assert 0.5 <= decision.confidence <= 1.0
    assert [c["agent"] for c in decision.candidates] == ["banking", "weather"]
    assert decision.candidates[0]["score"] >= decision.candidates[1]["score"]
    assert router.decide("should I bring an umbrella today, will it rain").agent == "weather"


def test_below_threshold_goes_to_none_or_fallback(embed):
    assert make_router(embed).decide("recipe for a chocolate cake").routed_by == "none"
    fallback = make_router(embed, fallback_agent="weather").decide("recipe for a chocolate cake")
    assert (fallback.agent, fallback.routed_by) == ("weather", "fallback")


def test_direct_agent_and_unknown_agent(embed):
    router = make_router(embed)
    assert router.decide("anything", agent="weather").routed_by == "direct"
    with pytest.raises(NotFound, match="ghost"):
        router.decide("anything", agent="ghost")


def routed_in_session(router, store, text: str):
    """What the ingress does per request: route with the session's agent, then remember it."""
    decision = router.decide(text, session_agent=store.last_agent("u", "s"))
    if decision.agent is not None:
        store.append("u", "s", decision.agent, [{"role": "user", "content": text}])
    return decision


def test_short_follow_up_stays_in_session_until_ttl(embed, tmp_path):
    clock = FakeClock()
    store = SqliteSessionStore(tmp_path / "s.sqlite3", SessionLimits(ttl_s=60), clock=clock)
    router = make_router(embed, session={"ttl_s": 60, "short_followup_words": 3})
    assert routed_in_session(router, store, "what's my account balance please").agent == "banking"
    follow = routed_in_session(router, store, "and tomorrow?")
    assert (follow.agent, follow.routed_by) == ("banking", "session")
    clock.now = 61 + 61
    assert routed_in_session(router, store, "and tomorrow?").routed_by != "session"


def test_confident_long_request_leaves_the_session(embed, tmp_path):
    router, store = make_router(embed), SqliteSessionStore(tmp_path / "s.sqlite3")
    routed_in_session(router, store, "transfer 50 dollars to my savings account")
    switched = routed_in_session(router, store, "will it rain or snow in Berlin this weekend")
    assert (switched.agent, switched.routed_by) == ("weather", "router")


def test_evaluate_router_counts_accuracy_rejection_and_oos(embed):
    rows = [
        {"text": "what's the weather like in Paris", "agent": "weather"},
        {"text": "send money to my brother's account", "agent": "banking"},
        {"text": "recipe for a chocolate cake", "agent": "oos"},
        {"text": "who won the football match", "agent": None},
    ]
    report = evaluate_router(make_router(embed), rows, none_label="oos")
    assert report.n == 4
    assert report.in_scope_accuracy == 1.0 and report.in_scope_rejection == 0.0
    assert report.oos_recall == 1.0
    assert report.confusion[("weather", "weather")] == 1
    assert set(report.summary()) == {"in_scope_accuracy", "oos_recall", "in_scope_rejection", "n", "p50_ms", "p95_ms"}


def test_evaluate_router_rejects_labels_that_are_not_agents(embed):
    with pytest.raises(ValueError, match="sports"):
        evaluate_router(make_router(embed), [{"text": "goal!", "agent": "sports"}])


class FixedClassifier:
    """Test double for a registered agent classifier: always the same probabilities."""

    labels = ["banking", "weather", "oos"]

    def __call__(self, texts):
        import numpy as np

        return np.tile([0.9, 0.05, 0.05], (len(texts), 1))


def test_classifier_is_blended_with_similarity(embed):
    settings = {"threshold": 0.5, "calibration": {"midpoint": 0.35, "temperature": 0.05},
                "classifier": {"model": "/unused", "weight": 1.0}}
    router = SemanticRouter(AGENTS, RouterSettings.model_validate(settings), embed, classifier=FixedClassifier())
    decision = router.decide("will it rain tomorrow in Berlin")
    assert decision.agent == "banking" and decision.confidence == pytest.approx(0.9)
    half = SemanticRouter(AGENTS, RouterSettings.model_validate({**settings, "classifier": {"model": "/unused", "weight": 0.5}}), embed,
                          classifier=FixedClassifier())
    scores = {c["agent"]: c["score"] for c in half.decide("will it rain tomorrow in Berlin").candidates}
    plain = {c["agent"]: c["score"] for c in make_router(embed).decide("will it rain tomorrow in Berlin").candidates}
    assert scores["banking"] == pytest.approx(0.5 * plain["banking"] + 0.45, abs=1e-3)
