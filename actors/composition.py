"""Composition: pipelines (a sequence or a fan-out of steps) and supervisors (a team of
agents under a policy). Both are agents that hold a Dispatcher, so every step goes through
the same invocation contract and shows in ``trace``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from actors.dispatcher import Called, Dispatcher
from actors.invocation import Document, Failure, Invocation, Result, StreamItem
from actors.router import payload_text
from cluster.config import PipelineSettings
from cluster.errors import BatonError, ValidationFailed

_PATH = re.compile(r"^(input|steps)(\.[A-Za-z0-9_-]+)*$")


@dataclass(frozen=True)
class Step:
    """One step: its name in ``result`` and ``trace``, the agent (or pipeline) it calls,
    where its input comes from (a dotted path such as ``steps.pii.redacted_text``, or
    ``input.document`` for the request's document), and options."""

    name: str
    agent: str
    input: str = "input.text"
    options: dict | None = None

    def __post_init__(self) -> None:
        if not _PATH.match(self.input):
            raise ValueError(f"step {self.name!r}: input {self.input!r} is not a path like input.text or steps.<step>.<field>")


def resolve_path(path: str, context: dict) -> Any:
    """The value at a dotted path of {"input": …, "steps": {name: output}}; KeyError if absent or null."""
    value: Any = context
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise KeyError(path)
    if value is None:
        raise KeyError(path)
    return value


def as_text(value: Any) -> str:
    """A mapped value as the next step's text: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def merged(called: Sequence[tuple[str, Called]]) -> Result:
    """Step results under their names, failed steps left out; all failed: the first error."""
    trace = [c.trace_entry(step) for step, c in sorted(called, key=lambda pair: pair[1].finished)]
    output = {step: c.result.output for step, c in called if c.ok}
    if called and not output:
        raise called[0][1].error
    usage = _total_usage(c.result.usage for _, c in called if c.ok)
    return Result(output=output, usage=usage, trace=trace)


def _total_usage(usages: Any) -> dict | None:
    """Tokens and CPU/GPU seconds summed over the steps (a composite costs what its steps cost)."""
    total: dict[str, float] = {}
    for usage in usages:
        for key, value in (usage or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
    return total or None


class Composite:
    """Shared Target plumbing: a composite answers in one piece (it does not stream)."""

    streams = False

    async def call(self, invocation: Invocation) -> Result | Failure:
        try:
            return await self.run(invocation)
        except BatonError as error:
            return Failure(error)

    async def stream(self, invocation: Invocation) -> AsyncIterator[StreamItem]:
        yield await self.call(invocation)

    async def run(self, invocation: Invocation) -> Result:
        raise NotImplementedError


class Pipeline(Composite):
    """``sequence``: steps run in order, each seeing the outputs before it; a failed step
    stops the ones after it. ``fanout``: steps run at once on the same input."""

    def __init__(self, name: str, mode: Literal["sequence", "fanout"], steps: Sequence[Step], dispatcher: Dispatcher):
        self.name, self.mode, self.steps, self.dispatcher = name, mode, list(steps), dispatcher

    @classmethod
    def of(cls, settings: PipelineSettings, dispatcher: Dispatcher) -> Pipeline:
        """The pipeline an orchestra's ``pipelines:`` entry describes."""
        steps = [Step(s.name, s.agent, s.input, s.options) for s in settings.steps]
        return cls(settings.name, settings.mode, steps, dispatcher)

    async def run(self, invocation: Invocation) -> Result:
        context = {"input": {"text": invocation.text, "document": invocation.document, "metadata": invocation.metadata}, "steps": {}}
        if self.mode == "fanout":
            called = await asyncio.gather(*(self._run_step(step, invocation, context) for step in self.steps))
            return merged(list(zip((s.name for s in self.steps), called)))
        done: list[tuple[str, Called]] = []
        for step in self.steps:
            outcome = await self._run_step(step, invocation, context)
            done.append((step.name, outcome))
            if not outcome.ok:
                break
            context["steps"][step.name] = outcome.result.output
        return merged(done)

    async def _run_step(self, step: Step, invocation: Invocation, context: dict) -> Called:
        try:
            value = resolve_path(step.input, context)
        except KeyError:
            error = ValidationFailed(f"pipeline {self.name!r} step {step.name!r}: input {step.input!r} found nothing")
            return Called(step.agent, "none", 0.0, error=error)
        # The caller's options are for the steps that read the request itself (a document's
        # query goes to extraction, not to the language step after it); config options win.
        caller = invocation.options if step.input.startswith("input.") else {}
        given = {"document": value} if isinstance(value, Document) else {"text": as_text(value)}
        child = invocation.derive(**given, options={**caller, **(step.options or {})})
        return await self.dispatcher.invoke(step.agent, child)


TeamChooser = Callable[[Invocation, Sequence[str], int], Awaitable[list[str]]]


class Supervisor(Composite):
    """A team of agents under a policy: ``all`` calls each; ``router`` calls those the
    semantic router picks for the request (up to ``max_agents``); ``llm`` lets a lead LLM
    call team agents as tools. The result maps each answering agent to its result."""

    def __init__(
        self,
        name: str,
        team: Sequence[str],
        dispatcher: Dispatcher,
        *,
        policy: Literal["all", "router", "llm"] = "all",
        max_agents: int = 3,
        choose: TeamChooser | None = None,
        lead: Any = None,
    ):
        if policy == "router" and choose is None:
            raise ValueError(f"supervisor {name!r}: the router policy needs a chooser")
        if policy == "llm" and lead is None:
            raise ValueError(f"supervisor {name!r}: the llm policy needs a lead")
        self.name, self.team, self.dispatcher = name, list(team), dispatcher
        self.policy, self.max_agents, self.choose, self.lead = policy, max_agents, choose, lead

    async def run(self, invocation: Invocation) -> Result:
        if self.policy == "llm":
            return await self.lead.run(invocation, self.team, self.dispatcher)
        members = self.team if self.policy == "all" else await self.choose(invocation, self.team, self.max_agents)
        payload = invocation.derive(text=payload_text(invocation.text)) if self.policy == "router" else invocation
        called = await asyncio.gather(*(self.dispatcher.invoke(agent, payload) for agent in members))
        return merged(list(zip(members, called)))


LEAD_PROMPT = (
    "You lead a team of agents and answer the user's request by calling them as tools. "
    "Reply with exactly one JSON object and nothing else: either "
    '{{"call": "<agent>", "input": "<text for that agent>"}} to call one agent, or '
    '{{"answer": "<your final answer>"}} when you can answer. You may make at most {cap} calls.\n\nAgents:\n{agents}'
)


class LlmLead:
    """The ``llm`` policy, as agent-squad's SupervisorAgent: a lead LLM agent plans, calls team
    agents as tools (at most ``max_tool_calls``), sees their results, and answers."""

    def __init__(self, lead: str, descriptions: dict[str, str], max_tool_calls: int):
        self.lead, self.descriptions, self.max_tool_calls = lead, descriptions, max_tool_calls

    async def run(self, invocation: Invocation, team: Sequence[str], dispatcher: Dispatcher) -> Result:
        listing = "\n".join(f"- {name}: {self.descriptions.get(name, '')}" for name in team)
        messages = [
            {"role": "system", "content": LEAD_PROMPT.format(cap=self.max_tool_calls, agents=listing)},
            {"role": "user", "content": invocation.input_text},
        ]
        steps: list[tuple[str, Called]] = []
        answer = None
        for _ in range(self.max_tool_calls + 1):
            planned = await dispatcher.invoke(self.lead, invocation.derive(messages=tuple(messages), options={}, history=()))
            steps.append((self.lead, planned))
            if not planned.ok:
                break
            reply = planned.result.output.get("text", "")
            action = parse_action(reply)
            calls_made = sum(1 for step, _ in steps if step != self.lead)
            if "answer" in action or action.get("call") not in team or calls_made >= self.max_tool_calls:
                answer = action.get("answer", reply)
                break
            called = await dispatcher.invoke(action["call"], invocation.derive(text=as_text(action.get("input") or invocation.input_text), options={}))
            steps.append((action["call"], called))
            observation = called.result.output if called.ok else {"error": called.error.as_dict()}
            messages += [
                {"role": "assistant", "content": reply},
                {"role": "user", "content": f"Result of {action['call']}: {json.dumps(observation, ensure_ascii=False)}"},
            ]
        lead_failed = steps[-1][1].error
        output = {step: c.result.output for step, c in steps if step != self.lead and c.ok}
        if lead_failed is not None and not output:
            raise lead_failed
        usage = _total_usage(c.result.usage for _, c in steps if c.ok)
        return Result(output={**output, "answer": answer}, usage=usage, trace=[c.trace_entry(step) for step, c in steps])


def parse_action(reply: str) -> dict:
    """The first JSON object in an LLM's reply; {} when there is none."""
    start = reply.find("{")
    while start != -1:
        try:
            value, _ = json.JSONDecoder().raw_decode(reply[start:])
            return value if isinstance(value, dict) else {}
        except json.JSONDecodeError:
            start = reply.find("{", start + 1)
    return {}
