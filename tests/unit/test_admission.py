"""The ingress's admission gate (actors/admission.py) as plain asyncio, then wired in the real
FastAPI app over in-process agent test doubles: agent paths are shed with 503 overloaded and
Retry-After past capacity, health and admin never are."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from actors.admission import AdmissionGate, admission_gate
from cluster.config import AdmissionSettings, OrchestraConfig
from cluster.errors import Overloaded


class ManualClock:
    """Test double for the gate's clock: time moves only when the test says."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def hold(gate: AdmissionGate, release: asyncio.Event, deadline: float | None = None) -> None:
    async with gate.slot(deadline):
        await release.wait()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_admits_up_to_the_limit_then_queues_first_come_first_served():
    async def scenario():
        gate = AdmissionGate(limit=2, max_queue=4, max_wait_s=5.0)
        release = asyncio.Event()
        running = [asyncio.create_task(hold(gate, release)) for _ in range(2)]
        await settle()
        assert (gate.running, gate.waiting) == (2, 0)
        order: list[int] = []

        async def queued(n: int) -> None:
            async with gate.slot():
                order.append(n)

        waiters = [asyncio.create_task(queued(n)) for n in range(3)]
        await settle()
        assert (gate.running, gate.waiting) == (2, 3)
        release.set()
        await asyncio.gather(*running, *waiters)
        assert order == [0, 1, 2]
        assert (gate.running, gate.waiting, gate.admitted, gate.refused) == (0, 0, 5, 0)

    asyncio.run(scenario())


def test_a_full_queue_refuses_at_once_with_overloaded_and_retry_after():
    async def scenario():
        gate = AdmissionGate(limit=1, max_queue=1, max_wait_s=5.0)
        release = asyncio.Event()
        tasks = [asyncio.create_task(hold(gate, release)) for _ in range(2)]  # one runs, one waits
        await settle()
        started = time.perf_counter()
        with pytest.raises(Overloaded) as refused:
            await gate.enter()
        assert time.perf_counter() - started < 0.05, "a full queue must refuse without waiting"
        assert refused.value.status == 503 and refused.value.code == "overloaded"
        assert refused.value.retry_after_s >= 1
        release.set()
        await asyncio.gather(*tasks)
        assert gate.refused == 1 and gate.running == 0

    asyncio.run(scenario())


def test_a_waiter_is_refused_after_the_longest_wait_and_leaves_the_queue():
    async def scenario():
        gate = AdmissionGate(limit=1, max_queue=4, max_wait_s=0.05)
        release = asyncio.Event()
        running = asyncio.create_task(hold(gate, release))
        await settle()
        started = time.perf_counter()
        with pytest.raises(Overloaded):
            await gate.enter()
        waited = time.perf_counter() - started
        assert 0.04 <= waited < 1.0
        assert gate.waiting == 0
        release.set()
        await running
        await gate.enter()  # the slot came back: admitted at once
        assert gate.running == 1

    asyncio.run(scenario())


def test_the_wait_never_runs_past_the_requests_deadline():
    async def scenario():
        clock = ManualClock()
        gate = AdmissionGate(limit=1, max_queue=4, max_wait_s=10.0, clock=clock)
        release = asyncio.Event()
        running = asyncio.create_task(hold(gate, release))
        await settle()
        started = time.perf_counter()
        with pytest.raises(Overloaded):
            await gate.enter(deadline=clock.now + 0.05)  # the deadline, not the 10 s maximum, bounds it
        assert time.perf_counter() - started < 1.0
        started = time.perf_counter()
        with pytest.raises(Overloaded):
            await gate.enter(deadline=clock.now - 1)  # already past: refused without waiting
        assert time.perf_counter() - started < 0.05
        release.set()
        await running

    asyncio.run(scenario())


def test_a_request_that_would_wait_too_long_is_refused_early_from_the_observed_service_time():
    async def scenario():
        clock = ManualClock()
        gate = AdmissionGate(limit=2, max_queue=10, max_wait_s=1.0, clock=clock)
        async with gate.slot():
            clock.now += 0.8  # each request held its slot 0.8 s
        assert gate.service_s == pytest.approx(0.8)
        release = asyncio.Event()
        running = [asyncio.create_task(hold(gate, release)) for _ in range(2)]
        queued = [asyncio.create_task(hold(gate, release)) for _ in range(2)]  # expected waits 0.4 s, 0.8 s
        await settle()
        assert gate.waiting == 2
        assert gate.expected_wait_s(3) == pytest.approx(1.2)
        started = time.perf_counter()
        with pytest.raises(Overloaded):
            await gate.enter()  # third in line would wait about 1.2 s > 1.0 s: no point waiting
        assert time.perf_counter() - started < 0.05
        release.set()
        await asyncio.gather(*running, *queued)

    asyncio.run(scenario())


def test_retry_after_is_the_backlogs_drain_time_in_whole_seconds_within_bounds():
    async def refusal(gate: AdmissionGate) -> Overloaded:
        with pytest.raises(Overloaded) as refused:
            await gate.enter()
        return refused.value

    async def scenario():
        clock = ManualClock()
        gate = AdmissionGate(limit=2, max_queue=0, max_wait_s=1.0, max_retry_after_s=4.0, clock=clock)
        assert gate.retry_after_s() == 1  # nothing observed yet: the least
        async with gate.slot():
            clock.now += 2.5  # a request held its slot 2.5 s
        release = asyncio.Event()
        running = [asyncio.create_task(hold(gate, release)) for _ in range(2)]
        await settle()
        assert (await refusal(gate)).retry_after_s == 3  # 2 running x 2.5 s over 2 slots, rounded up
        release.set()
        await asyncio.gather(*running)
        async with gate.slot():
            clock.now += 100.0
        release.clear()
        running = [asyncio.create_task(hold(gate, release)) for _ in range(2)]
        await settle()
        assert (await refusal(gate)).retry_after_s == 4  # capped at max_retry_after_s
        release.set()
        await asyncio.gather(*running)

    asyncio.run(scenario())


def test_a_slot_is_given_back_when_the_request_fails():
    async def scenario():
        gate = AdmissionGate(limit=1, max_queue=0, max_wait_s=0.0)
        with pytest.raises(RuntimeError):
            async with gate.slot():
                raise RuntimeError("agent failed")
        assert gate.running == 0
        async with gate.slot():
            assert gate.running == 1

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_the_queue_and_a_slot_handed_to_it_passes_on():
    async def scenario():
        gate = AdmissionGate(limit=1, max_queue=4, max_wait_s=5.0)
        release = asyncio.Event()
        running = asyncio.create_task(hold(gate, release))
        await settle()
        cancelled = asyncio.create_task(gate.enter())
        await settle()
        assert gate.waiting == 1
        cancelled.cancel()  # the client went away while it waited
        await asyncio.gather(cancelled, return_exceptions=True)
        assert gate.waiting == 0

        first = asyncio.create_task(gate.enter())
        second = asyncio.create_task(hold(gate, asyncio.Event()))
        await settle()
        assert gate.waiting == 2
        release.set()
        await running  # hands the slot to ``first`` ...
        first.cancel()  # ... which is cancelled before it runs: the slot must reach ``second``
        await asyncio.gather(first, return_exceptions=True)
        await settle()
        assert gate.running == 1 and gate.waiting == 0
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)
        assert gate.running == 0

    asyncio.run(scenario())


def test_it_recovers_at_once_when_the_load_drops():
    async def scenario():
        clock = ManualClock()
        gate = AdmissionGate(limit=2, max_queue=2, max_wait_s=0.02, clock=clock)
        release = asyncio.Event()

        async def attempt() -> str:
            try:
                async with gate.slot():
                    await release.wait()
                    clock.now += 5.0  # slow under overload: the mean service time grows
                return "ok"
            except Overloaded:
                return "refused"

        flood = [asyncio.create_task(attempt()) for _ in range(20)]
        await asyncio.sleep(0.05)
        release.set()
        outcomes = await asyncio.gather(*flood)
        assert outcomes.count("ok") == 2 and outcomes.count("refused") == 18
        assert gate.service_s >= 5.0 and (gate.running, gate.waiting) == (0, 0)
        started = time.perf_counter()
        for _ in range(2):  # the next requests after the flood: in at once, whatever the history
            await gate.enter()
        assert time.perf_counter() - started < 0.01
        assert gate.running == 2

    asyncio.run(scenario())


def test_the_settings_build_the_gate_or_switch_it_off():
    settings = AdmissionSettings(max_concurrent=3, max_queue=5, max_queue_wait_s=0.25, max_retry_after_s=9)
    gate = admission_gate(settings)
    assert (gate.limit, gate.max_queue, gate.max_wait_s, gate.max_retry_after_s) == (3, 5, 0.25, 9)
    assert admission_gate(settings.model_copy(update={"enabled": False})) is None
    with pytest.raises(ValueError):
        AdmissionSettings(max_concurrent=0)
    with pytest.raises(ValueError):
        AdmissionSettings(surprise=1)


# -- wired in the app ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def shedding_app(tmp_path_factory):
    """The real app and Gateway over a slow in-process agent (EchoTarget, a test double), with
    room for one running request and one waiting per replica."""
    from actors.embedding import Embedder
    from actors.router import SemanticRouter
    from actors.sessions import SqliteSessionStore
    from cluster.keys import KeyStore
    from cluster.registry import ModelRegistry
    from cluster.storage import Storage
    from serve.app import create_app
    from serve.control import ControlPlane
    from serve.ingress import Gateway
    from tests.unit.agent_doubles import EchoTarget

    root = tmp_path_factory.mktemp("admission")
    config = OrchestraConfig.model_validate({
        "storage": str(root),
        "audit": {"redact_names": False},
        "ingress": {"admission": {"max_concurrent": 1, "max_queue": 1, "max_queue_wait_s": 0.1}},
        "agents": [{"name": "slow", "kind": "echo", "description": "answers slowly"}],
    })
    storage = Storage(str(root))
    gateway = Gateway(
        config,
        keys=KeyStore(storage),
        registry=ModelRegistry(storage),
        router=SemanticRouter(config.agents, config.router, Embedder()),
        sessions=SqliteSessionStore(root / "sessions.sqlite3"),
        control=ControlPlane.in_process(config, str(root)),
        targets={"slow": {"v1": EchoTarget("slow", delay_s=0.3)}},
        replica="test-replica",
    )
    key, _ = gateway.keys.create("admin", "unit")
    return create_app(gateway), key


def test_past_capacity_agent_calls_get_503_overloaded_and_health_and_admin_still_answer(shedding_app):
    app, key = shedding_app

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://baton", headers=headers, timeout=10) as client:
            flood = [client.post("/v1/agents/slow/invoke", json={"text": f"hello {n}"}) for n in range(8)]
            flood_task = asyncio.gather(*flood)
            await asyncio.sleep(0.05)
            side = await asyncio.gather(client.get("/healthz"), client.get("/v1/agents"), client.get("/v1/admin/stats"))
            answers = await flood_task
            after = await client.post("/v1/agents/slow/invoke", json={"text": "after the flood"})
        return answers, side, after

    answers, side, after = asyncio.run(scenario())
    statuses = sorted(r.status_code for r in answers)
    assert set(statuses) == {200, 503}, statuses
    assert statuses.count(200) <= 2  # one ran, at most one waited its turn within 0.1 s
    for refused in (r for r in answers if r.status_code == 503):
        body = refused.json()
        assert body["error"]["code"] == "overloaded" and body["error"]["request_id"]
        assert int(refused.headers["retry-after"]) >= 1
    assert [r.status_code for r in side] == [200, 200, 200]
    assert after.status_code == 200 and after.json()["result"]["text"] == "after the flood"


# -- Serve's own back-pressure, as the same 503 -------------------------------------------


def plain_app(status: int, body: bytes, headers: list[tuple[bytes, bytes]]):
    """Test double of the Serve proxy's inner app: answers one fixed response."""

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def through_proxy_middleware(inner) -> httpx.Response:
    from serve.proxy import ProxyErrorShape

    async def call():
        transport = httpx.ASGITransport(app=ProxyErrorShape(inner))
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            return await client.post("/v1/route", json={"text": "x"}, headers={"X-Request-ID": "req-1"})

    return asyncio.run(call())


def test_the_proxys_own_backpressure_answer_gets_the_api_error_shape_and_retry_after():
    text = b"Request dropped due to backpressure (num_queued_requests=64, max_queued_requests=64)."
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"2"), (b"x-request-id", b"req-1")]
    response = through_proxy_middleware(plain_app(503, text, headers))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "overloaded" and response.json()["error"]["request_id"] == "req-1"
    assert response.headers["retry-after"] == "2" and response.headers["x-request-id"] == "req-1"
    assert response.headers["content-type"] == "application/json"

    unavailable = through_proxy_middleware(plain_app(503, b"Deployment is unavailable.", headers[:1]))
    assert unavailable.json()["error"]["code"] == "unavailable" and unavailable.headers["retry-after"] == "2"


def test_batons_own_answers_pass_the_proxy_middleware_unchanged():
    body = b'{"error": {"code": "overloaded", "message": "m", "request_id": "r"}}'
    ours = through_proxy_middleware(plain_app(503, body, [(b"content-type", b"application/json"), (b"retry-after", b"4")]))
    assert ours.content == body and ours.headers["retry-after"] == "4"
    ok = through_proxy_middleware(plain_app(200, b"fine", [(b"content-type", b"text/plain")]))
    assert ok.status_code == 200 and ok.content == b"fine"


def test_an_agents_serve_backpressure_keeps_its_configured_retry_after():
    from ray.serve.exceptions import BackPressureError

    from serve.http_errors import to_baton_error

    configured = to_baton_error(BackPressureError(num_queued_requests=5, max_queued_requests=5, retry_after_s=3.0))
    assert isinstance(configured, Overloaded) and configured.retry_after_s == 3.0
    assert to_baton_error(BackPressureError(num_queued_requests=5, max_queued_requests=5)).retry_after_s == 1


def test_a_request_whose_replica_died_gets_503_unavailable_not_a_bare_500():
    async def replica_died(scope, receive, send):
        return None  # what Serve's proxy does on RayActorError: logs it and sends nothing

    response = through_proxy_middleware(replica_died)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["error"] == {"code": "unavailable", "message": "the replica serving this request stopped; retry it", "request_id": "req-1"}


def test_an_agent_replica_dying_mid_call_is_a_retryable_503():
    from ray.exceptions import ActorDiedError

    from cluster.errors import Unavailable
    from serve.targets import typed

    error = typed(ActorDiedError(), "agent sentiment v1")
    assert isinstance(error, Unavailable) and error.retry_after_s == 1
    assert "died while answering" in str(error)
