"""Shadow traffic without Ray: run-time versions and shadow settings in the traffic table, and
copies that never touch the primary's answer. Agents are the test doubles of agent_doubles."""

from __future__ import annotations

import asyncio
import random

import pytest

from actors.dispatcher import Called, Dispatcher
from actors.invocation import Invocation, Result
from actors.shadow import ShadowCopies, agreement
from actors.traffic import TrafficTable
from cluster.errors import Conflict, Unavailable, ValidationFailed
from tests.unit.agent_doubles import EchoTarget


def table() -> TrafficTable:
    return TrafficTable({"sentiment": {"weights": {"v1": 100}, "sticky": False}})


def test_a_run_time_version_joins_at_weight_zero_and_can_take_traffic():
    traffic = table()
    traffic.add_version("sentiment", "v3", {"app": "baton.sentiment.v3", "model": "registry://s:v3"})
    assert traffic.weights("sentiment") == {"v1": 100, "v3": 0}
    assert traffic.added() == {"sentiment": {"v3": {"app": "baton.sentiment.v3", "model": "registry://s:v3"}}}
    traffic.set_weights("sentiment", {"v1": 75, "v3": 25})
    copy = TrafficTable({})
    copy.load(traffic.snapshot())
    assert copy.weights("sentiment") == {"v1": 75, "v3": 25} and copy.added("sentiment")["sentiment"]["v3"]["app"] == "baton.sentiment.v3"
    with pytest.raises(Conflict, match="takes traffic"):
        traffic.remove_version("sentiment", "v3")
    with pytest.raises(Conflict, match="was not added"):
        traffic.remove_version("sentiment", "v1")
    with pytest.raises(Conflict, match="already has"):
        traffic.add_version("sentiment", "v1", {})
    traffic.set_weights("sentiment", {"v1": 100})
    traffic.remove_version("sentiment", "v3")
    assert traffic.weights("sentiment") == {"v1": 100} and traffic.added() == {}


def test_shadow_settings_are_validated_and_zero_stops_them():
    traffic = table()
    traffic.add_version("sentiment", "v2", {})
    with pytest.raises(Conflict, match="not deployed"):
        traffic.set_shadow("sentiment", "v9", 50)
    with pytest.raises(ValidationFailed, match="0 to 100"):
        traffic.set_shadow("sentiment", "v2", 101)
    before, after = traffic.set_shadow("sentiment", "v2", 40)
    assert before is None and after == {"version": "v2", "percent": 40}
    assert traffic.set_shadow("sentiment", "v2", 0) == ({"version": "v2", "percent": 40}, None)
    assert traffic.shadow("sentiment") is None


def called(label=None, output=None, error=None, version="v1") -> Called:
    result = None if error else Result(output=output if output is not None else {"label": label}, label=label)
    return Called("a", version, 5.0, result=result, error=error)


def test_agreement_compares_labels_then_text_then_json():
    assert agreement(called("POS"), called("POS"), 0.8) == 1.0
    assert agreement(called("POS"), called("NEG"), 0.8) == 0.0
    assert agreement(called(output={"text": "the cat sat"}), called(output={"text": "the cat sat."}), 0.8) == 1.0
    assert agreement(called(output={"text": "the cat sat"}), called(output={"text": "dogs run far away"}), 0.8) == 0.0
    assert agreement(called(output={"n": [1, 2]}), called(output={"n": [1, 2]}), 0.8) == 1.0
    assert agreement(called("POS"), called(error=Unavailable("down")), 0.8) is None


def shadowed_dispatcher(primary: EchoTarget, shadow: EchoTarget, percent: int, **kwargs):
    traffic = TrafficTable({"a": {"weights": {"v1": 100, "v2": 0}, "sticky": False}})
    traffic.set_shadow("a", "v2", percent)
    targets = {"a": {"v1": primary, "v2": shadow}}
    reports: list[dict] = []
    copies = ShadowCopies(targets, traffic, reports.append, rng=random.Random(3), **kwargs)
    return Dispatcher(targets, traffic, shadow=copies), copies, reports


def test_copies_report_agreement_and_latency_without_changing_the_answer():
    primary, shadow = EchoTarget("v1"), EchoTarget("v2", delay_s=0.01)

    async def scenario():
        dispatcher, copies, reports = shadowed_dispatcher(primary, shadow, 100)
        answers = [await dispatcher.invoke("a", Invocation(text=f"t{i}")) for i in range(5)]
        await asyncio.sleep(0.1)
        return answers, copies, reports

    answers, copies, reports = asyncio.run(scenario())
    assert [a.version for a in answers] == ["v1"] * 5 and all(a.result.output["by"] == "v1" for a in answers)
    assert len(shadow.seen) == 5 and len(reports) == 5 and copies.in_flight == 0
    first = reports[0]
    assert first["kind"] == "shadow" and first["version"] == "v2" and first["primary_version"] == "v1"
    # EchoTarget labels each answer with its own name, so the two versions never agree.
    assert first["agreement"] == 0.0 and first["latency_ms"] >= 10 and first["status"] == 200


def test_a_failing_slow_shadow_never_delays_or_fails_the_primary():
    primary, shadow = EchoTarget("v1"), EchoTarget("v2", fail=Unavailable("shadow down"), delay_s=0.5)

    async def scenario():
        dispatcher, copies, reports = shadowed_dispatcher(primary, shadow, 100)
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await dispatcher.invoke("a", Invocation(text="x"))
        elapsed = loop.time() - started
        await asyncio.sleep(0.6)
        return answer, elapsed, reports

    answer, elapsed, reports = asyncio.run(scenario())
    assert answer.ok and elapsed < 0.4
    assert reports[0]["status"] == 503 and reports[0]["agreement"] is None


def test_copies_are_bounded_in_flight_and_follow_the_percent():
    primary, shadow = EchoTarget("v1"), EchoTarget("v2", delay_s=0.2)

    async def scenario(percent, max_in_flight):
        dispatcher, copies, reports = shadowed_dispatcher(primary, shadow, percent, max_in_flight=max_in_flight)
        await asyncio.gather(*(dispatcher.invoke("a", Invocation(text=str(i))) for i in range(200)))
        peak = copies.in_flight
        await asyncio.sleep(0.3)
        return peak, copies.skipped, len(reports)

    peak, skipped, reported = asyncio.run(scenario(100, 4))
    assert peak == 4 and skipped == 196 and reported == 4
    shadow.seen.clear()
    _, _, reported = asyncio.run(scenario(25, 1000))
    assert 30 < reported < 70
