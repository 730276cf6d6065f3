"""The routing policy: rules before the semantic router, the session, the LLM router
(hybrid and full) and the fallback, on the real MiniLM router; the LLM is a test double."""

from __future__ import annotations

import asyncio

import pytest

from actors.dispatcher import Dispatcher
from actors.embedding import Embedder
from actors.invocation import Invocation, Result
from actors.router import SemanticRouter, choose_from_segments, team_segments
from actors.routing import LlmRouter, RoutingPolicy, RuleSet, parse_agent_choice
from actors.traffic import TrafficTable
from cluster.config import AgentSettings, LlmRouterSettings, RouterSettings, RuleSettings

AGENTS = [
    AgentSettings(name="weather", kind="echo", description="weather forecasts, temperature, rain and snow",
                  examples=["will it rain tomorrow", "what's the temperature in Berlin"]),
    AgentSettings(name="banking", kind="echo", description="bank accounts, balances, transfers and cards",
                  examples=["what's my account balance", "transfer 50 dollars to savings"]),
    AgentSettings(name="brain", kind="echo", description="a language model that answers anything"),
]
RULES = [
    RuleSettings.model_validate({"name": "vip", "match": {"metadata": {"tier": "gold"}}, "agent": "banking"}),
    RuleSettings.model_validate({"name": "tickets", "match": {"text_regex": r"\bINC-\d+\b"}, "pipeline": "triage"}),
    RuleSettings.model_validate({"name": "german", "match": {"language": ["de"], "metadata": {"channel": "chat"}}, "agent": "weather"}),
]


@pytest.fixture(scope="module")
def router():
    settings = RouterSettings.model_validate({"threshold": 0.5, "calibration": {"midpoint": 0.35, "temperature": 0.05}})
    return SemanticRouter(AGENTS, settings, Embedder())


class ScriptedLlm:
    """Test double for an llm agent: always answers the same text, and counts its calls."""

    streams = False

    def __init__(self, answer: str):
        self.answer, self.calls = answer, 0

    async def call(self, invocation):
        self.calls += 1
        return Result(output={"text": self.answer})

    async def stream(self, invocation):
        yield await self.call(invocation)


def policy(router, llm_answer=None, mode="hybrid"):
    async def score(text):
        return router.scores([text])[0]

    llm = None
    if llm_answer is not None:
        target = ScriptedLlm(llm_answer)
        dispatcher = Dispatcher({"brain": {"v1": target}}, TrafficTable({"brain": {"weights": {"v1": 100}, "sticky": False}}))
        llm = LlmRouter(LlmRouterSettings(agent="brain", mode=mode, below=0.6), AGENTS, dispatcher)
        llm.target = target
    return RoutingPolicy(router, RuleSet(RULES), score, llm=llm)


def decide(policy, text, **kwargs):
    metadata = kwargs.pop("metadata", {})
    return asyncio.run(policy.decide(Invocation(text=text, metadata=metadata), **kwargs))


def test_rules_come_first_and_name_the_rule(router):
    vip = decide(policy(router), "will it rain tomorrow", metadata={"tier": "gold"})
    assert (vip.agent, vip.routed_by, vip.rule) == ("banking", "rule", "vip")
    assert vip.as_dict()["rule"] == "vip"
    ticket = decide(policy(router), "please look at INC-4411 again")
    assert (ticket.agent, ticket.rule) == ("triage", "tickets")
    german = decide(policy(router), "Wie wird das Wetter morgen in Berlin?", metadata={"channel": "chat"})
    assert german.rule == "german"
    english = decide(policy(router), "How is the weather tomorrow in Berlin?", metadata={"channel": "chat"})
    assert english.routed_by == "router" and "rule" not in english.as_dict()


def test_direct_beats_rules_and_session_follow_up_beats_the_router(router):
    direct = decide(policy(router), "INC-1", agent="weather")
    assert (direct.agent, direct.routed_by) == ("weather", "direct")
    follow = decide(policy(router), "and now?", session_agent="banking")
    assert (follow.agent, follow.routed_by) == ("banking", "session")


def test_hybrid_llm_router_is_asked_only_when_the_router_is_unsure(router):
    sure = policy(router, '{"agent": "weather"}')
    assert decide(sure, "what's my account balance").routed_by == "router"
    assert sure.llm.target.calls == 0
    unsure = decide(sure, "recipe for a chocolate cake")
    assert (unsure.agent, unsure.routed_by) == ("weather", "llm") and sure.llm.target.calls == 1
    refusing = policy(router, '{"agent": null}')
    assert decide(refusing, "recipe for a chocolate cake").routed_by == "none"
    always = policy(router, '{"agent": "weather"}', mode="llm")
    assert decide(always, "what's my account balance").routed_by == "llm"


def test_llm_answers_are_parsed_strictly():
    assert parse_agent_choice('I pick {"agent": "banking"} because', ["banking"]) == "banking"
    assert parse_agent_choice('{"agent": "root"}', ["banking"]) is None
    assert parse_agent_choice("banking", ["banking"]) is None


def test_a_multi_intent_request_reaches_two_team_agents(router):
    segments = team_segments("what's my account balance and will it rain tomorrow?")
    assert len(segments) == 3
    chosen = choose_from_segments(router, router.scores(segments), ["weather", "banking"], 0.5, 3)
    assert set(chosen) == {"weather", "banking"}
    assert choose_from_segments(router, router.scores(segments), ["weather", "banking"], 0.5, 1) in (["weather"], ["banking"])
    # A request that does not split gets its one best team agent, above the threshold or not.
    single = team_segments("recipe for a chocolate cake")
    assert choose_from_segments(router, router.scores(single), ["weather", "banking"], 0.99, 3) in (["weather"], ["banking"])


def test_a_supervisor_takes_only_requests_that_ask_for_several_things(router):
    agents = [*AGENTS, AgentSettings(name="both", kind="supervisor", description="several things at once",
                                     examples=["what's my account balance and will it rain tomorrow"],
                                     supervisor={"team": ["weather", "banking"]})]
    settings = RouterSettings.model_validate({"threshold": 0.5, "calibration": {"midpoint": 0.35, "temperature": 0.05}})
    with_supervisor = SemanticRouter(agents, settings, router.embed)

    async def score(text):
        return with_supervisor.scores([text])[0]

    routing = RoutingPolicy(with_supervisor, RuleSet([]), score)
    assert decide(routing, "what's my account balance").agent == "banking"
    assert decide(routing, "what's my account balance and will it rain tomorrow?").agent == "both"


def test_a_quoted_payload_does_not_pull_the_route(router):
    text = "how much will the weather cost me? 'transfer 50 dollars to my savings account'"
    assert decide(policy(router), text).agent == "weather"
    assert router.decide(text).agent == "weather"
    assert decide(policy(router), "transfer 50 dollars to my savings account").agent == "banking"


def test_parts_naming_two_team_agents_send_the_request_to_their_supervisor(router):
    agents = [*AGENTS, AgentSettings(name="desk", kind="supervisor", description="front desk",
                                     supervisor={"team": ["weather", "banking"], "route_threshold": 0.5})]
    settings = RouterSettings.model_validate({"threshold": 0.5, "calibration": {"midpoint": 0.35, "temperature": 0.05}})
    desk = SemanticRouter(agents, settings, router.embed)

    async def score(text):
        return desk.scores([text])[0]

    routing = RoutingPolicy(desk, RuleSet([]), score)
    both = decide(routing, "what's my account balance, and will it rain tomorrow in Berlin?")
    assert (both.agent, both.routed_by) == ("desk", "router")
    assert {c["agent"] for c in both.candidates} == {"weather", "banking"}
    assert desk.decide("what's my account balance, and will it rain tomorrow in Berlin?").agent == "desk"
    assert decide(routing, "transfer 50 dollars to savings and to my checking account").agent == "banking"
    # A long text is content, not several requests: its parts are not scored.
    assert desk.wants_segments("what's my balance, and will it rain? " * 10) == []


def test_each_distinct_text_of_a_request_is_scored_once_and_the_decision_matches_the_unbatched_one(router):
    agents = [*AGENTS, AgentSettings(name="desk", kind="supervisor", description="front desk",
                                     supervisor={"team": ["weather", "banking"], "route_threshold": 0.5})]
    settings = RouterSettings.model_validate({"threshold": 0.5, "calibration": {"midpoint": 0.35, "temperature": 0.05}})
    desk = SemanticRouter(agents, settings, router.embed)
    scored = []

    async def score(text):
        scored.append(text)
        return desk.scores([text])[0]

    text = "what's my account balance, and will it rain tomorrow in Berlin?"
    decision = decide(RoutingPolicy(desk, RuleSet([]), score), text)

    needed = desk.texts_to_score(text)
    assert needed[0] == needed[1] == text  # the routing text is also the first segment
    assert sorted(scored) == sorted(set(needed)) and len(scored) == len(needed) - 1
    assert decision == desk.decide(text)
