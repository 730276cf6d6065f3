"""The routing policy of /v1/route, in order: a named agent (direct), the config's rules,
the session's agent for a follow-up, the semantic router, an optional LLM router, the
fallback. Async because the LLM router and the session store are calls away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from actors.dispatcher import Dispatcher
from actors.invocation import Invocation
from actors.router import RouteDecision, SemanticRouter
from cluster.config import AgentSettings, LlmRouterSettings, RuleSettings

logger = logging.getLogger(__name__)

Scorer = Callable[[str], Awaitable[np.ndarray]]


class LanguageGuess:
    """The language of a text for rules that match on it (lingua, loaded on first use with
    only the languages the rules name, plus English to contrast them with)."""

    def __init__(self, codes: Sequence[str]):
        self.codes = sorted({*codes, "en"})
        self._detector = None

    def __call__(self, text: str) -> str | None:
        if self._detector is None:
            from lingua import IsoCode639_1, LanguageDetectorBuilder

            isos = [IsoCode639_1.from_str(code) for code in self.codes]
            self._detector = LanguageDetectorBuilder.from_iso_codes_639_1(*isos).build()
        language = self._detector.detect_language_of(text)
        return None if language is None else language.iso_code_639_1.name.lower()


class RuleSet:
    """Ordered rules; the first whose conditions all hold names the target."""

    def __init__(self, rules: Sequence[RuleSettings]):
        self.rules = list(rules)
        self._patterns = {rule.name: re.compile(rule.match.text_regex) for rule in self.rules if rule.match.text_regex}
        codes = [code for rule in self.rules for code in rule.match.language]
        self._language = LanguageGuess(codes) if codes else None

    def match(self, text: str, metadata: dict[str, Any]) -> RuleSettings | None:
        language: list[str | None] = []  # detected once, only if a rule asks

        def detected() -> str | None:
            if not language:
                language.append(self._language(text))
            return language[0]

        for rule in self.rules:
            condition = rule.match
            if any(metadata.get(key) != value for key, value in condition.metadata.items()):
                continue
            if condition.text_regex and not self._patterns[rule.name].search(text):
                continue
            if condition.language and detected() not in condition.language:
                continue
            return rule
        return None


LLM_ROUTER_PROMPT = (
    "You route requests to agents. Answer with one JSON object and nothing else: "
    '{"agent": "<name>"} naming the single best agent, or {"agent": null} when none fits.\n\nAgents:\n'
)


class LlmRouter:
    """Asks an llm agent to pick among the agents' names and descriptions, in JSON."""

    def __init__(self, settings: LlmRouterSettings, agents: Sequence[AgentSettings], dispatcher: Dispatcher):
        self.settings, self.dispatcher = settings, dispatcher
        self.names = [a.name for a in agents if a.name != settings.agent]
        listing = "\n".join(f"- {a.name}: {a.description}" for a in agents if a.name != settings.agent)
        self.system_prompt = LLM_ROUTER_PROMPT + listing

    def wanted(self, top: float) -> bool:
        return self.settings.mode == "llm" or top < self.settings.below

    async def pick(self, invocation: Invocation) -> str | None:
        """The agent the LLM names; None when it names none, an unknown one, or fails."""
        messages = ({"role": "system", "content": self.system_prompt}, {"role": "user", "content": invocation.input_text})
        called = await self.dispatcher.invoke(self.settings.agent, invocation.derive(messages=messages, options={}, history=()))
        if not called.ok:
            logger.warning("LLM router %s failed: %s", self.settings.agent, called.error.message)
            return None
        return parse_agent_choice(called.result.output.get("text", ""), self.names)


def parse_agent_choice(answer: str, names: Sequence[str]) -> str | None:
    """The agent named by a JSON answer (the first {...} in it), if it is one of ``names``."""
    found = re.search(r"\{.*?\}", answer, re.DOTALL)
    try:
        choice = json.loads(found.group(0)).get("agent") if found else None
    except (json.JSONDecodeError, AttributeError):
        return None
    return choice if choice in names else None


class RoutingPolicy:
    """Decides who takes a request. ``score(text)`` gives the router's confidences (the
    ingress batches it); ``session_agent`` is looked up by the caller from the session store."""

    def __init__(self, router: SemanticRouter, rules: RuleSet, score: Scorer, llm: LlmRouter | None = None):
        self.router, self.rules, self.score, self.llm = router, rules, score, llm

    async def decide(
        self, invocation: Invocation, *, agent: str | None = None, session_agent: str | None = None
    ) -> RouteDecision:
        if agent is not None:
            return self.router.direct(agent)
        text = invocation.input_text
        rule = self.rules.match(text, invocation.metadata)
        if rule is not None:
            return RouteDecision(rule.target, "rule", 1.0, [{"agent": rule.target, "score": 1.0}], rule=rule.name)
        needed = self.router.texts_to_score(text)
        unique = list(dict.fromkeys(needed))  # the whole request is often also its first segment
        scored = dict(zip(unique, await asyncio.gather(*(self.score(t) for t in unique))))
        decision = self.router.decide_scored(text, [scored[t] for t in needed], session_agent=session_agent)
        if self.llm is not None and decision.routed_by in ("router", "fallback", "none") and self.llm.wanted(decision.confidence):
            chosen = await self.llm.pick(invocation)
            if chosen is not None:
                return RouteDecision(chosen, "llm", decision.confidence, decision.candidates)
        return decision
