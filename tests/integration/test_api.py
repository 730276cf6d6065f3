"""The HTTP contract of API.md §1-4 and §6 against the shared Serve application."""

from __future__ import annotations

import concurrent.futures as futures

import httpx
import pytest

pytestmark = pytest.mark.slow


def assert_error(response: httpx.Response, status: int, code: str, mentions: str = "") -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == code
    assert error["request_id"] == response.headers["x-request-id"]
    assert mentions in error["message"], error["message"]
    return error


def test_healthz_needs_no_key_and_has_request_id(baton_url):
    response = httpx.get(f"{baton_url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["x-request-id"]


def test_agents_lists_kinds_versions_and_weights(client):
    agents = {a["name"]: a for a in client.get("/v1/agents").json()["agents"]}
    assert set(agents) == {
        "language", "sentiment", "entities", "tight", "pii", "keyphrases", "summarize", "embed", "analyst", "writer", "local-writer",
        "ocr", "documents", "docstore", "faces", "reviews",
    }
    assert (agents["analyst"]["kind"], agents["analyst"]["team"]) == ("supervisor", ["language", "sentiment", "entities"])
    assert agents["language"]["kind"] == "language"
    assert {v["version"]: v["weight"] for v in agents["sentiment"]["versions"]}.keys() == {"v1", "v2"}
    assert all(v["status"] == "ready" for v in agents["sentiment"]["versions"])


def test_route_picks_sentiment_and_returns_result(client):
    body = client.post("/v1/route", json={"text": "I absolutely love this phone, it is wonderful!"}).json()
    assert body["agent"] == "sentiment"
    assert body["routed_by"] == "router"
    assert body["version"] in {"v1", "v2"}
    assert 0.5 <= body["confidence"] <= 1
    assert body["result"]["label"] == "POSITIVE"
    assert set(body["result"]["scores"]) == {"POSITIVE", "NEGATIVE", "NEUTRAL", "MIXED"}
    scores = [c["score"] for c in body["candidates"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert body["candidates"][0]["agent"] == "sentiment"
    assert body["latency_ms"] > 0


def test_route_to_language_and_entities(client):
    language = client.post("/v1/route", json={"text": "Quelle est la langue de cette phrase ?"}).json()
    assert language["agent"] == "language"
    assert language["result"]["language"] == "fr"
    text = "Find the people and companies: Tim Cook met Sundar Pichai at Google in London."
    entities = client.post("/v1/route", json={"text": text}).json()
    assert entities["agent"] == "entities"
    found = {(e["text"], e["type"]) for e in entities["result"]["entities"]}
    assert ("Tim Cook", "PERSON") in found and ("London", "LOCATION") in found
    for entity in entities["result"]["entities"]:
        assert text[entity["start"] : entity["end"]] == entity["text"]


def test_direct_agent_and_dry_run(client):
    direct = client.post("/v1/route", json={"text": "hello there", "agent": "language"}).json()
    assert (direct["agent"], direct["routed_by"], direct["confidence"]) == ("language", "direct", 1.0)
    dry = client.post("/v1/route", json={"text": "I hate waiting in line", "dry_run": True}).json()
    assert dry["agent"] == "sentiment" and dry["result"] is None


def test_nothing_clears_the_threshold_routes_to_none(client):
    body = client.post("/v1/route", json={"text": "zxqv plorb wuggle"}).json()
    assert body["agent"] is None and body["routed_by"] == "none" and body["result"] is None
    assert body["confidence"] < 0.5


def test_short_follow_up_stays_with_the_session_agent(client):
    first = client.post("/v1/route", json={"text": "Tim Cook met Sundar Pichai in Paris.", "session_id": "s-follow"}).json()
    assert first["agent"] == "entities"
    follow = client.post("/v1/route", json={"text": "and this one?", "session_id": "s-follow"}).json()
    assert (follow["agent"], follow["routed_by"]) == ("entities", "session")
    other = client.post("/v1/route", json={"text": "and this one?", "session_id": "s-other"}).json()
    assert other["routed_by"] != "session"


def test_invoke_runs_the_named_agent(client):
    body = client.post("/v1/agents/sentiment/invoke", json={"text": "This is terrible and broken."}).json()
    assert body["agent"] == "sentiment" and body["result"]["label"] == "NEGATIVE"
    assert body["version"] in {"v1", "v2"} and body["latency_ms"] > 0
    language = client.post("/v1/agents/language/invoke", json={"text": "Das ist ein schönes Haus.", "options": {"top_k": 2}})
    assert language.json()["result"]["language"] == "de"
    assert len(language.json()["result"]["alternatives"]) <= 2


def test_request_id_is_kept_when_valid_and_replaced_when_not(client):
    kept = client.get("/v1/agents", headers={"X-Request-ID": "my-id_1.2"})
    assert kept.headers.get_list("x-request-id") == ["my-id_1.2"]
    replaced = client.post("/v1/route", json={"text": "x", "agent": "nope"}, headers={"X-Request-ID": "bad id!"})
    ids = replaced.headers.get_list("x-request-id")
    assert len(ids) == 1 and ids[0] != "bad id!"
    assert replaced.json()["error"]["request_id"] == ids[0]


# -- API.md §1: one bad input per row ---------------------------------------------------


def test_400_body_not_json_or_not_an_object(client):
    assert_error(client.post("/v1/route", content=b"{not json", headers={"Content-Type": "application/json"}), 400, "invalid_request")
    assert_error(client.post("/v1/route", json=["a list"]), 400, "invalid_request", "JSON object")
    assert_error(client.post("/v1/route", content=b""), 400, "invalid_request")


def test_401_missing_or_unknown_key(baton_url):
    assert_error(httpx.post(f"{baton_url}/v1/route", json={"text": "hi"}), 401, "unauthorized", "missing")
    unknown = httpx.post(f"{baton_url}/v1/route", json={"text": "hi"}, headers={"Authorization": "Bearer nope"})
    assert_error(unknown, 401, "unauthorized", "unknown")


def test_403_invoke_key_on_admin_endpoints(baton_url, new_key):
    headers = {"Authorization": f"Bearer {new_key('invoke')}"}
    assert_error(httpx.get(f"{baton_url}/v1/admin/stats", headers=headers), 403, "forbidden", "admin")
    ok = httpx.post(f"{baton_url}/v1/route", json={"text": "great movie", "agent": "sentiment"}, headers=headers)
    assert ok.status_code == 200


def test_404_unknown_agent_and_path(client):
    assert_error(client.post("/v1/route", json={"text": "hi", "agent": "ghost"}), 404, "not_found", "ghost")
    assert_error(client.post("/v1/agents/ghost/invoke", json={"text": "hi"}), 404, "not_found", "ghost")
    assert_error(client.put("/v1/admin/agents/ghost/traffic", json={"weights": {"v1": 100}}), 404, "not_found")
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")


def test_409_weights_for_a_version_not_deployed(client):
    error = assert_error(client.put("/v1/admin/agents/sentiment/traffic", json={"weights": {"v1": 50, "v9": 50}}), 409, "conflict")
    assert "v9" in error["message"]


def test_413_body_over_the_limit(client):
    assert_error(client.post("/v1/route", json={"text": "a" * 70_000}), 413, "payload_too_large")


@pytest.mark.parametrize(
    "body, field",
    [
        ({"text": "hi", "colour": "red"}, "colour"),
        ({"text": ""}, "text"),
        ({"text": 42}, "text"),
        ({}, "text"),
        ({"text": "a" * 2001}, "text"),
        ({"text": "hi", "dry_run": "yes"}, "dry_run"),
        ({"text": "hi", "options": []}, "options"),
        ({"text": "hi", "session_id": "s" * 129}, "session_id"),
    ],
)
def test_422_fields_wrong(client, body, field):
    assert_error(client.post("/v1/route", json=body), 422, "validation_error", field)


def test_422_bad_agent_option_and_bad_weights(client):
    assert_error(client.post("/v1/agents/language/invoke", json={"text": "hi", "options": {"top_k": "x"}}), 422, "validation_error", "top_k")
    assert_error(client.put("/v1/admin/agents/sentiment/traffic", json={"weights": {"v1": 60, "v2": 60}}), 422, "validation_error", "100")
    assert_error(client.put("/v1/admin/agents/sentiment/traffic", json={"weights": {"v1": 100.5}}), 422, "validation_error")
    assert_error(client.put("/v1/admin/agents/sentiment/traffic", json={"weights": {"v1": -10, "v2": 110}}), 422, "validation_error")
    assert_error(client.post("/v1/admin/keys", json={"role": "root", "name": "x"}), 422, "validation_error", "role")


def test_429_rate_limit_with_retry_after(baton_url, client):
    # A key with its own limit: 2 at once, then one every 10 s (per ingress replica: two here).
    created = client.post("/v1/admin/keys", json={"role": "invoke", "name": "slow", "rate_limit": {"requests_per_s": 0.1, "burst": 2}})
    assert created.status_code == 201, created.text
    headers = {"Authorization": f"Bearer {created.json()['key']}"}
    with httpx.Client(base_url=baton_url, headers=headers, timeout=60) as http:
        responses = [http.get("/v1/agents") for _ in range(6)]
    assert [r.status_code for r in responses[:2]] == [200, 200]
    limited = next(r for r in responses[2:] if r.status_code == 429)
    assert_error(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) >= 1


def test_503_overloaded_when_the_agent_queue_is_full(baton_url, new_key):
    keys = [new_key("invoke") for _ in range(3)]

    def call(i: int) -> httpx.Response:
        headers = {"Authorization": f"Bearer {keys[i % 3]}"}
        return httpx.post(f"{baton_url}/v1/agents/tight/invoke", json={"text": "fine " * 200}, headers=headers, timeout=60)

    with futures.ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(call, range(48)))
    statuses = {r.status_code for r in responses}
    assert statuses <= {200, 503, 429}, statuses
    overloaded = [r for r in responses if r.status_code == 503]
    assert overloaded, "48 concurrent calls into a queue of 1 should shed some"
    assert_error(overloaded[0], 503, "overloaded")
    assert "Retry-After" in overloaded[0].headers
    assert any(r.status_code == 200 for r in responses)


def test_no_input_gives_a_500(client):
    nasty = ["\x00", "🙂" * 500, "<script>alert(1)</script>", "' OR 1=1 --", "\ud7ff" * 10, " " * 10]
    for text in nasty:
        for agent in ("language", "sentiment", "entities", None):
            body = {"text": text} if agent is None else {"text": text, "agent": agent}
            response = client.post("/v1/route", json=body)
            assert response.status_code < 500, (text, agent, response.text)
