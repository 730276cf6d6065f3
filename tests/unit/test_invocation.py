"""The invocation contract without Ray: Invocation, typed errors that survive pickling,
the Dispatcher (weights, deadline, streaming, errors, hooks) and composition (pipelines,
supervisors). Agents here are test doubles: small in-process Targets that say what they are.
"""

from __future__ import annotations

import asyncio
import pickle
import random

import pytest

from actors.composition import LlmLead, Pipeline, Step, Supervisor, parse_action, resolve_path
from actors.router import payload_text
from actors.dispatcher import Called, Dispatcher
from actors.invocation import Chunk, Failure, Invocation, Result, drain
from actors.traffic import TrafficTable
from cluster import errors
from cluster.errors import NotFound, RateLimited, Unavailable, ValidationFailed
from tests.unit.agent_doubles import EchoTarget, StreamingTarget


def run(coro):
    return asyncio.run(coro)


def table(**agents: dict[str, int]) -> TrafficTable:
    return TrafficTable({name: {"weights": weights, "sticky": True} for name, weights in agents.items()})


# -- Invocation and errors --------------------------------------------------------------


def test_invocation_needs_exactly_one_input_and_reads_the_last_user_message():
    with pytest.raises(ValueError, match="exactly one"):
        Invocation()
    with pytest.raises(ValueError, match="exactly one"):
        Invocation(text="a", messages=({"role": "user", "content": "b"},))
    chat = Invocation(messages=({"role": "user", "content": "first"}, {"role": "assistant", "content": "x"}, {"role": "user", "content": [{"type": "text", "text": "second"}]}))
    assert chat.input_text == "second"
    derived = chat.derive(text="plain")
    assert (derived.text, derived.messages, derived.request_id) == ("plain", None, chat.request_id)
    assert Invocation(text="a", user_id="u").sticky_key == "u"
    assert Invocation(text="a", user_id="u", session_id="s").sticky_key == "s"


def test_deadline_is_absolute_and_remaining_time_shrinks():
    invocation = Invocation(text="a", deadline=100.0)
    assert invocation.remaining_s(clock=lambda: 97.5) == 2.5
    assert invocation.remaining_s(clock=lambda: 101.0) == 0.0
    with pytest.raises(Unavailable, match="deadline"):
        invocation.check_deadline(clock=lambda: 101.0)
    assert Invocation(text="a").remaining_s() is None


@pytest.mark.parametrize("cls", [errors.BatonError, *errors.BatonError.__subclasses__()])
def test_every_error_class_pickles_with_its_status_and_retry_after(cls):
    original = cls("went wrong", retry_after_s=3.5)
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is cls
    assert (copy.message, copy.retry_after_s, copy.status, copy.code) == ("went wrong", 3.5, cls.status, cls.code)
    overridden = pickle.loads(pickle.dumps(cls("teapot", None, 418)))
    assert overridden.status == 418 and overridden.code == cls.code
    # A Failure (the last item of a stream) carries the error across a handle the same way.
    failure = pickle.loads(pickle.dumps(Failure(original)))
    assert failure.error.status == cls.status and failure.error.retry_after_s == 3.5


def test_drain_gives_the_result_or_raises_the_failure():
    assert drain([Chunk("a"), Result(output={"x": 1})]).output == {"x": 1}
    with pytest.raises(RateLimited):
        drain([Chunk("a"), Failure(RateLimited("slow down", retry_after_s=2))])
    with pytest.raises(Unavailable, match="without a result"):
        drain([Chunk("a")])


# -- Dispatcher -------------------------------------------------------------------------


def test_dispatcher_picks_versions_by_weight_and_sticks_to_a_session():
    targets = {"a": {"v1": EchoTarget("v1"), "v2": EchoTarget("v2")}}
    dispatcher = Dispatcher(targets, table(a={"v1": 90, "v2": 10}))
    random.seed(7)
    picks = [dispatcher.pick("a", Invocation(text="x")) for _ in range(2000)]
    assert 0.07 < picks.count("v2") / len(picks) < 0.13
    sticky = {dispatcher.pick("a", Invocation(text="x", session_id="s-1")) for _ in range(50)}
    assert len(sticky) == 1
    called = run(dispatcher.invoke("a", Invocation(text="hello"), version="v2"))
    assert called.ok and called.version == "v2" and called.result.output == {"text": "hello", "by": "v2"}
    assert called.result.label == "v2"


def test_dispatcher_returns_typed_errors_and_unknown_agents_as_404():
    throttled = RateLimited("provider throttled", retry_after_s=9)
    dispatcher = Dispatcher({"a": {"v1": EchoTarget("v1", fail=throttled)}}, table(a={"v1": 100}))
    called = run(dispatcher.invoke("a", Invocation(text="x")))
    assert not called.ok and called.error.status == 429 and called.error.retry_after_s == 9
    assert called.trace_entry("a")["error"] == {"code": "rate_limited", "message": "provider throttled"}
    missing = run(dispatcher.invoke("ghost", Invocation(text="x")))
    assert isinstance(missing.error, NotFound) and "ghost" in missing.error.message


def test_dispatcher_enforces_the_remaining_deadline():
    import time

    dispatcher = Dispatcher({"slow": {"v1": EchoTarget("v1", delay_s=2.0)}}, table(slow={"v1": 100}), default_timeout_s=30)
    started = time.perf_counter()
    called = run(dispatcher.invoke("slow", Invocation(text="x", deadline=time.time() + 0.2)))
    assert time.perf_counter() - started < 1.5
    assert called.error.status == 503 and called.error.retry_after_s == 5 and "did not answer" in called.error.message


def test_stream_yields_chunks_then_the_outcome_and_keeps_a_late_failure_as_data():
    async def collect(fail_after):
        dispatcher = Dispatcher({"llm": {"v1": StreamingTarget(fail_after)}}, table(llm={"v1": 100}))
        return [item async for item in dispatcher.stream("llm", Invocation(text="one two three"))]

    items = run(collect(None))
    assert [i.text for i in items[:-1]] == ["one ", "two ", "three "]
    assert isinstance(items[-1], Called) and items[-1].ok and items[-1].result.usage["output_tokens"] == 3
    failed = run(collect(2))
    assert [i.text for i in failed[:-1]] == ["one ", "two "]
    assert failed[-1].error.status == 429 and failed[-1].error.retry_after_s == 7


def test_stream_of_an_agent_that_does_not_stream_is_its_outcome_alone():
    async def collect():
        dispatcher = Dispatcher({"a": {"v1": EchoTarget("v1")}}, table(a={"v1": 100}))
        return [item async for item in dispatcher.stream("a", Invocation(text="x"))]

    [only] = run(collect())
    assert isinstance(only, Called) and only.result.output["by"] == "v1"


def test_hooks_see_every_call_and_a_failing_shadow_hook_hurts_nothing():
    seen, shadowed = [], []

    def shadow(agent, version, invocation):
        shadowed.append((agent, version, invocation.text))
        raise RuntimeError("shadow copy broke")

    dispatcher = Dispatcher({"a": {"v1": EchoTarget("v1")}}, table(a={"v1": 100}), on_call=seen.append, shadow=shadow)
    called = run(dispatcher.invoke("a", Invocation(text="x")))
    assert called.ok and shadowed == [("a", "v1", "x")] and seen == [called]
    quiet = dispatcher.reporting_to(None)
    run(quiet.invoke("a", Invocation(text="y")))
    assert len(seen) == 1 and len(shadowed) == 2


# -- composition ------------------------------------------------------------------------


def composed(**targets):
    return Dispatcher({name: {"v1": target} for name, target in targets.items()}, table(**{n: {"v1": 100} for n in targets}))


def test_sequence_maps_a_step_output_into_the_next_input():
    first, second = EchoTarget("first"), EchoTarget("second")
    dispatcher = composed(first=first, second=second)
    steps = [Step("up", "first"), Step("down", "second", input="steps.up.by")]
    result = run(Pipeline("p", "sequence", steps, dispatcher).run(Invocation(text="hello")))
    assert result.output == {"up": {"text": "hello", "by": "first"}, "down": {"text": "first", "by": "second"}}
    assert [entry["step"] for entry in result.trace] == ["up", "down"]
    assert all(entry["status"] == "ok" and entry["version"] == "v1" for entry in result.trace)


def test_fanout_runs_steps_at_once_and_keeps_a_partial_result():
    broken = EchoTarget("broken", fail=Unavailable("agent down", retry_after_s=2))
    dispatcher = composed(slow=EchoTarget("slow", delay_s=0.3), fast=EchoTarget("fast", delay_s=0.3), broken=broken)
    pipeline = Pipeline("p", "fanout", [Step("slow", "slow"), Step("fast", "fast"), Step("broken", "broken")], dispatcher)
    import time

    started = time.perf_counter()
    result = run(pipeline.run(Invocation(text="x")))
    assert time.perf_counter() - started < 0.55  # in parallel, not 0.6 s one after another
    assert set(result.output) == {"slow", "fast"}
    [failed] = [entry for entry in result.trace if entry["status"] == "error"]
    assert failed["step"] == "broken" and failed["error"]["code"] == "unavailable"
    assert result.trace[0]["step"] == "broken"  # in order of completion


def test_a_failed_step_stops_a_sequence_and_all_failed_is_the_first_error():
    dispatcher = composed(bad=EchoTarget("bad", fail=ValidationFailed("options.x: unknown")), good=EchoTarget("good"))
    pipeline = Pipeline("p", "sequence", [Step("bad", "bad"), Step("good", "good")], dispatcher)
    failure = run(pipeline.call(Invocation(text="x")))
    assert isinstance(failure, Failure) and failure.error.status == 422
    assert dispatcher.targets["good"]["v1"].seen == []
    with pytest.raises(ValueError, match="not a path"):
        Step("s", "a", input="../etc")
    missing = run(Pipeline("p", "sequence", [Step("s", "good", input="steps.none.x")], dispatcher).call(Invocation(text="x")))
    assert "found nothing" in missing.error.message


def test_resolve_path_reads_nested_outputs():
    context = {"input": {"text": "t"}, "steps": {"a": {"items": [{"v": 1}, {"v": 2}]}}}
    assert resolve_path("steps.a.items.1.v", context) == 2
    with pytest.raises(KeyError):
        resolve_path("steps.a.items.5", context)


def test_supervisor_all_and_router_policies_merge_team_results():
    team = {"language": EchoTarget("language"), "entities": EchoTarget("entities"), "sentiment": EchoTarget("sentiment")}
    dispatcher = composed(**team)
    everyone = run(Supervisor("sup", list(team), dispatcher, policy="all").run(Invocation(text="hi")))
    assert set(everyone.output) == set(team) and len(everyone.trace) == 3

    async def choose(invocation, members, k):
        return ["language", "entities"][:k]

    text = "What language is this and who is mentioned? 'Gestern hat Olaf Scholz Paris besucht.'"
    routed = run(Supervisor("sup", list(team), dispatcher, policy="router", choose=choose).run(Invocation(text=text)))
    assert set(routed.output) == {"language", "entities"}
    # The team works on the quoted passage, not on the English instructions around it.
    assert routed.output["language"]["text"] == "Gestern hat Olaf Scholz Paris besucht."


def test_payload_is_the_quoted_passage_when_there_is_one():
    assert payload_text('Who is in "Tim Cook met Satya Nadella"?') == "Tim Cook met Satya Nadella"
    assert payload_text("no quotes here") == "no quotes here"
    assert payload_text("it's fine, isn't it") == "it's fine, isn't it"


class ScriptedLead:
    """Test double for an LLM lead: answers each planning call with the next scripted reply."""

    streams = False

    def __init__(self, replies):
        self.replies = list(replies)
        self.prompts = []

    async def call(self, invocation):
        self.prompts.append(invocation.messages)
        return Result(output={"text": self.replies.pop(0)}, usage={"input_tokens": 10, "output_tokens": 5, "cpu_s": 0.25})

    async def stream(self, invocation):
        yield await self.call(invocation)


def test_llm_lead_calls_team_agents_as_tools_within_the_cap():
    lead = ScriptedLead(['{"call": "entities", "input": "Olaf Scholz"}', 'ok {"call": "language"}', '{"answer": "German; Olaf Scholz."}'])
    dispatcher = composed(lead=lead, entities=EchoTarget("entities"), language=EchoTarget("language"))
    supervisor = Supervisor("sup", ["entities", "language"], dispatcher, policy="llm", lead=LlmLead("lead", {"entities": "finds names"}, 4))
    result = run(supervisor.run(Invocation(text="who and which language?")))
    assert result.output["answer"] == "German; Olaf Scholz."
    assert result.output["entities"]["text"] == "Olaf Scholz"
    assert [entry["step"] for entry in result.trace] == ["lead", "entities", "lead", "language", "lead"]
    # Tokens and CPU-seconds add up over the lead's three turns (what the cost report prices).
    assert result.usage == {"input_tokens": 30, "output_tokens": 15, "cpu_s": 0.75}
    # The lead saw the first tool's result before planning the second call.
    assert "Result of entities" in lead.prompts[1][-1]["content"]

    capped = ScriptedLead(['{"call": "entities"}', '{"call": "entities"}', '{"call": "entities"}'])
    dispatcher = composed(lead=capped, entities=EchoTarget("entities"))
    one_call = Supervisor("sup", ["entities"], dispatcher, policy="llm", lead=LlmLead("lead", {}, 1))
    result = run(one_call.run(Invocation(text="x")))
    assert sum(entry["step"] == "entities" for entry in result.trace) == 1


def test_parse_action_finds_the_first_json_object():
    assert parse_action('Sure! {"call": "x", "input": "y"} done') == {"call": "x", "input": "y"}
    assert parse_action("no json") == {}
