"""The HTTP surface without Ray: the real FastAPI app and Gateway over in-process agents
(test doubles from agent_doubles), the real router, key store, session store and the
monitor, audit and traffic classes in-process. Serve and its handles are not involved."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient

from actors.embedding import Embedder
from actors.router import SemanticRouter
from actors.sessions import SqliteSessionStore
from cluster.config import OrchestraConfig
from cluster.errors import PayloadTooLarge, RateLimited, Unavailable, UnsupportedMediaType
from cluster.keys import KeyStore
from cluster.registry import ModelRegistry
from cluster.storage import Storage
from serve.app import create_app
from serve.control import ControlPlane
from serve.ingress import Gateway
from tests.unit.agent_doubles import EchoTarget, StreamingTarget

CONFIG = {
    "audit": {"redact_names": False, "flush_interval_s": 0.1},
    "reporter": {"interval_s": 0.05},
    "router": {"threshold": 0.5, "calibration": {"midpoint": 0.35, "temperature": 0.05}},
    "agents": [
        {"name": "weather", "kind": "echo", "description": "weather forecasts, temperature, rain and snow",
         "examples": ["will it rain tomorrow", "what's the temperature in Berlin"]},
        {"name": "banking", "kind": "echo", "description": "bank accounts, balances, transfers and cards",
         "examples": ["what's my account balance", "transfer 50 dollars to savings"],
         "versions": [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}]},
        {"name": "poet", "kind": "echo", "description": "writes poems and verses"},
        {"name": "both", "kind": "supervisor", "description": "weather and banking at once",
         "supervisor": {"team": ["weather", "banking"], "policy": "all"}},
    ],
    "pipelines": [{"name": "chain", "description": "weather then poet", "steps": [
        {"name": "first", "agent": "weather"}, {"name": "second", "agent": "poet", "input": "steps.first.by"}]}],
}


@pytest.fixture(scope="module")
def embed():
    return Embedder()


@pytest.fixture
def agents():
    return {
        "weather": {"v1": EchoTarget("weather")},
        "banking": {"v1": EchoTarget("banking-v1"), "v2": EchoTarget("banking-v2")},
        "poet": {"v1": StreamingTarget()},
    }


@pytest.fixture
def gateway(tmp_path, embed, agents):
    config = OrchestraConfig.model_validate({**CONFIG, "storage": str(tmp_path)})
    storage = Storage(str(tmp_path))
    return Gateway(
        config,
        keys=KeyStore(storage),
        registry=ModelRegistry(storage),
        router=SemanticRouter(config.agents, config.router, embed),
        sessions=SqliteSessionStore(tmp_path / "sessions.sqlite3"),
        control=ControlPlane.in_process(config, str(tmp_path)),
        targets=agents,
        replica="test-replica",
    )


@pytest.fixture
def http(gateway):
    key, _ = gateway.keys.create("admin", "unit")
    with TestClient(create_app(gateway), headers={"Authorization": f"Bearer {key}"}) as client:
        yield client


def sse(response):
    return [
        (dict(line.split(": ", 1) for line in block.splitlines())["event"], json.loads(dict(line.split(": ", 1) for line in block.splitlines())["data"]))
        for block in response.text.strip().split("\n\n")
    ]


def test_route_runs_the_chosen_agent_through_the_dispatcher(http):
    response = http.post("/v1/route", json={"text": "will it rain tomorrow in Paris?", "session_id": "s"})
    body = response.json()
    assert response.status_code == 200 and response.headers["x-served-by"] == "test-replica"
    assert (body["agent"], body["version"], body["routed_by"]) == ("weather", "v1", "router")
    assert body["result"] == {"text": "will it rain tomorrow in Paris?", "by": "weather"}
    assert body["request_id"] == response.headers["x-request-id"]
    follow = http.post("/v1/route", json={"text": "and Sunday?", "session_id": "s"}).json()
    assert (follow["agent"], follow["routed_by"]) == ("weather", "session")


@pytest.mark.parametrize(
    "error, status, code, retry_after",
    [
        (PayloadTooLarge("prompt too long"), 413, "payload_too_large", None),
        (UnsupportedMediaType("no images"), 415, "unsupported_media_type", None),
        (RateLimited("provider throttled", retry_after_s=4), 429, "rate_limited", "4"),
        (Unavailable("provider down", retry_after_s=2.2), 503, "unavailable", "3"),
    ],
)
def test_an_agents_own_error_keeps_its_status_and_retry_after(http, agents, error, status, code, retry_after):
    agents["weather"]["v1"].fail = error
    response = http.post("/v1/agents/weather/invoke", json={"text": "x"})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code and response.json()["error"]["message"] == error.message
    assert response.headers.get("retry-after") == retry_after


def test_streams_chunks_then_the_result_and_a_late_failure_as_an_error_event(http, agents):
    events = sse(http.post("/v1/agents/poet/invoke", json={"text": "roses are red", "stream": True}))
    assert [e for e, _ in events] == ["chunk", "chunk", "chunk", "result"]
    assert events[-1][1]["result"]["text"] == "roses are red" and events[-1][1]["agent"] == "poet"
    agents["poet"]["v1"].fail_after = 1
    events = sse(http.post("/v1/route", json={"text": "roses are red", "agent": "poet", "stream": True}))
    assert [e for e, _ in events] == ["chunk", "error"] and events[-1][1]["error"]["code"] == "rate_limited"
    agents["poet"]["v1"].fail_after = 0
    refused = http.post("/v1/route", json={"text": "roses are red", "agent": "poet", "stream": True})
    assert refused.status_code == 429 and refused.headers["retry-after"] == "7"


def test_chat_completions_speak_the_openai_protocol(http):
    answer = http.post("/v1/chat/completions", json={"model": "poet", "messages": [{"role": "user", "content": "roses are red"}]}).json()
    assert answer["object"] == "chat.completion" and answer["choices"][0]["message"] == {"role": "assistant", "content": "roses are red"}
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    lines = [line for line in http.post("/v1/chat/completions", json={"model": "poet", "stream": True, "messages": [{"role": "user", "content": "a b"}]}).text.splitlines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "a b "
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    missing = http.post("/v1/chat/completions", json={"model": "ghost", "messages": [{"role": "user", "content": "x"}]})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    models = {m["id"] for m in http.get("/v1/models").json()["data"]}
    assert models == {"weather", "banking", "poet", "both", "chain"}


def test_supervisor_and_pipeline_answer_with_a_trace(http):
    both = http.post("/v1/agents/both/invoke", json={"text": "hi"}).json()
    assert set(both["result"]) == {"weather", "banking"} and {t["step"] for t in both["trace"]} == {"weather", "banking"}
    chain = http.post("/v1/pipelines/chain", json={"text": "hi"}).json()
    assert chain["pipeline"] == "chain" and chain["result"]["second"]["text"] == "weather"
    assert [t["step"] for t in chain["trace"]] == ["first", "second"]
    assert http.get("/v1/pipelines").json()["pipelines"][0]["name"] == "chain"


def test_sticky_session_keeps_one_version(http):
    versions = {http.post("/v1/route", json={"text": "x", "agent": "banking", "session_id": "sticky"}).json()["version"] for _ in range(10)}
    assert len(versions) == 1


def test_every_request_reaches_the_audit_log_and_the_monitor(http, gateway):
    http.post("/v1/route", json={"text": "what's my account balance", "metadata": {"channel": "web"}}, headers={"X-Request-ID": "audit-me"})
    http.post("/v1/agents/both/invoke", json={"text": "hi"}, headers={"X-Request-ID": "audit-both"})
    deadline = time.monotonic() + 10
    records = {}
    while time.monotonic() < deadline and not {"audit-me", "audit-both"} <= set(records):
        records = {r["request_id"]: r for r in http.get("/v1/admin/audit").json()["records"]}
        time.sleep(0.1)
    assert json.loads(records["audit-me"]["metadata"]) == {"channel": "web"} and records["audit-me"]["agent"] == "banking"
    assert {step["step"] for step in json.loads(records["audit-both"]["trace"])} == {"weather", "banking"}
    stats = http.get("/v1/admin/stats").json()["agents"]
    # The supervisor's request and each of its steps are counted.
    assert stats["both"]["v1"]["since_start"]["requests"] == 1 and stats["weather"]["v1"]["since_start"]["requests"] >= 1


def test_auth_and_validation_errors_keep_the_api_shape(http, gateway):
    assert http.post("/v1/route", json={"text": "x"}, headers={"Authorization": "Bearer nope"}).status_code == 401
    invoke_key, _ = gateway.keys.create("invoke", "unit-invoke")
    assert http.get("/v1/admin/stats", headers={"Authorization": f"Bearer {invoke_key}"}).status_code == 403
    bad = http.post("/v1/route", json={"text": "x", "stream": "yes"})
    assert bad.status_code == 422 and "stream" in bad.json()["error"]["message"]
    assert http.post("/v1/pipelines/ghost", json={"text": "x"}).status_code == 404
    # A method the path does not take: 405 in the API's shape, with the Allow header RFC 9110 requires.
    wrong = http.request("TRACE", "/healthz")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    assert wrong.headers["allow"] == "GET"
    assert http.delete("/v1/route").headers["allow"] == "POST"
    assert http.put("/v1/admin/keys").headers["allow"] == "GET, POST"  # two routes on one path


def test_keys_are_listed_scoped_revoked_and_expire_through_the_api(http, gateway):
    created = http.post("/v1/admin/keys", json={"role": "invoke", "name": "weather-bot", "agents": ["weather"], "pipelines": ["chain"]})
    assert created.status_code == 201, created.text
    scoped = {"Authorization": f"Bearer {created.json()['key']}"}
    assert http.post("/v1/agents/weather/invoke", json={"text": "rain?"}, headers=scoped).status_code == 200
    refused = http.post("/v1/route", json={"text": "what's my account balance"}, headers=scoped)
    assert refused.status_code == 403 and "banking" in refused.json()["error"]["message"]
    assert http.post("/v1/pipelines/chain", json={"text": "rain?"}, headers=scoped).status_code == 200
    unknown = http.post("/v1/admin/keys", json={"role": "invoke", "name": "x", "agents": ["ghost"]})
    assert unknown.status_code == 422 and "ghost" in unknown.json()["error"]["message"]
    past = http.post("/v1/admin/keys", json={"role": "invoke", "name": "x", "expires_at": "2020-01-01T00:00:00Z"})
    assert past.status_code == 422 and "expires_at" in past.json()["error"]["message"]

    listed = http.get("/v1/admin/keys").json()["keys"]
    mine = next(k for k in listed if k["id"] == created.json()["id"])
    assert mine["agents"] == ["weather"] and mine["revoked_at"] is None
    assert all("sha256" not in k and "key" not in k for k in listed)

    revoked = http.delete(f"/v1/admin/keys/{created.json()['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    after = http.post("/v1/agents/weather/invoke", json={"text": "rain?"}, headers=scoped)
    assert after.status_code == 401 and "revoked" in after.json()["error"]["message"]
    assert http.delete("/v1/admin/keys/key_0123456789abcdef").status_code == 404
    assert http.delete("/v1/admin/keys/not-a-key-id").status_code == 422

    soon = http.post("/v1/admin/keys", json={"role": "invoke", "name": "brief", "expires_at": _in_seconds(1.5)}).json()
    brief = {"Authorization": f"Bearer {soon['key']}"}
    assert http.post("/v1/agents/weather/invoke", json={"text": "rain?"}, headers=brief).status_code == 200
    time.sleep(1.6)
    expired = http.post("/v1/agents/weather/invoke", json={"text": "rain?"}, headers=brief)
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]

    deadline, actions = time.monotonic() + 10, []
    while time.monotonic() < deadline and "admin.keys.revoke" not in actions:
        actions = [r["endpoint"] for r in http.get("/v1/admin/audit", params={"limit": 1000}).json()["records"]]
        time.sleep(0.1)
    assert "admin.keys.revoke" in actions and actions.count("admin.keys.create") >= 2


def _in_seconds(seconds: float) -> str:
    from datetime import datetime, timedelta, timezone

    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat()


def test_a_chunked_body_over_the_limit_is_refused_while_it_streams_in(http, gateway):
    limit = gateway.config.limits.max_body_bytes

    def chunks():
        for _ in range(limit // 65_536 + 8):
            yield b" " * 65_536

    response = http.post("/v1/route", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    assert "content-length" not in {k.lower() for k in response.request.headers}
    small = http.post("/v1/route", content=iter([b'{"text": "will it rain ', b'tomorrow?"}']), headers={"Content-Type": "application/json"})
    assert small.status_code == 200, small.text
