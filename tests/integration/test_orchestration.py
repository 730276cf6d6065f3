"""API.md §3, §4 and §8 on the shared application: the new specialists, a supervisor that
needs two agents, pipelines by name, routing rules, streaming of agents that do not stream,
the audit record of a composite, and step outcomes in /v1/admin/stats."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.integration.test_api import assert_error

pytestmark = pytest.mark.slow

MULTI = "What language is this and who is mentioned? 'Gestern hat Olaf Scholz Paris besucht.'"


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    events = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((lines["event"], json.loads(lines["data"])))
    return events


@pytest.mark.parametrize(
    "agent, text, check",
    [
        ("keyphrases", "Ray Serve autoscaling adds replicas when the queue grows; autoscaling keeps latency low.",
         lambda r: r["key_phrases"] and all({"text", "score"} <= set(p) for p in r["key_phrases"])),
        ("summarize", "The outage began at 09:00. The database ran out of disk. Engineers freed space and restarted it. Lunch was pizza.",
         lambda r: r["summary"].startswith("The outage began at 09:00.") and len(r["sentences"]) == 3),
        ("embed", "a cat sits on the mat", lambda r: r["dim"] == 384 and len(r["vectors"][0]) == 384),
        ("pii", "Mail me at jane.doe@example.com", lambda r: "jane.doe@example.com" not in r["redacted_text"]),
    ],
)
def test_new_specialists_answer_through_invoke_and_route(client, agent, text, check):
    invoked = client.post(f"/v1/agents/{agent}/invoke", json={"text": text})
    assert invoked.status_code == 200, invoked.text
    assert check(invoked.json()["result"])
    routed = client.post("/v1/route", json={"text": text, "agent": agent})
    assert routed.status_code == 200 and check(routed.json()["result"])


def test_new_specialists_are_reached_by_the_router(client):
    body = client.post("/v1/route", json={"text": "Summarize this article: the council met and approved the new budget for schools."}).json()
    assert body["agent"] == "summarize" and body["routed_by"] == "router" and body["result"]["summary"]
    similar = client.post("/v1/agents/embed/invoke", json={"text": "a cat sits on the mat", "options": {"compare": ["a kitten on a rug", "stock markets fell"]}}).json()
    first, second = similar["result"]["similarities"]
    assert first > second


def test_supervisor_request_that_needs_two_agents_returns_both_with_a_trace(client):
    body = client.post("/v1/route", json={"text": MULTI}).json()
    assert body["agent"] == "analyst", body
    result = body["result"]
    assert result["language"]["language"] == "de"
    # The entity model is English spaCy: on German it finds the span but may mislabel it.
    assert any("Olaf Scholz" in e["text"] for e in result["entities"]["entities"])
    steps = {entry["step"]: entry for entry in body["trace"]}
    assert {"language", "entities"} <= set(steps)
    assert all(entry["status"] == "ok" and entry["version"] == "v1" and entry["latency_ms"] > 0 for entry in steps.values())


def test_supervisor_in_english_labels_people_and_sentiment(client):
    text = "What is the sentiment of this, and who is mentioned? 'Tim Cook loved his wonderful visit to Paris.'"
    body = client.post("/v1/route", json={"text": text}).json()
    assert body["agent"] == "analyst" and {"sentiment", "entities"} <= set(body["result"])
    assert body["result"]["sentiment"]["label"] == "POSITIVE"
    assert ("Tim Cook", "PERSON") in {(e["text"], e["type"]) for e in body["result"]["entities"]["entities"]}


def test_supervisor_invoked_directly(client):
    body = client.post("/v1/agents/analyst/invoke", json={"text": MULTI}).json()
    assert {"language", "entities"} <= set(body["result"]) and body["trace"]


def test_pipelines_are_listed_and_answer_by_name(client):
    listed = {p["name"]: p for p in client.get("/v1/pipelines").json()["pipelines"]}
    assert listed["profile"]["mode"] == "fanout" and [s["agent"] for s in listed["redact-then-entities"]["steps"]] == ["pii", "entities"]
    fanout = client.post("/v1/pipelines/profile", json={"text": "I love Paris, said Marie Curie."}).json()
    assert fanout["pipeline"] == "profile"
    assert set(fanout["result"]) == {"language", "sentiment", "entities"} and len(fanout["trace"]) == 3
    sequence = client.post("/v1/pipelines/redact-then-entities", json={"text": "Write to jane.doe@example.com or call Tim Cook."}).json()
    assert "jane.doe@example.com" not in json.dumps(sequence["result"]["entities"])
    assert [entry["step"] for entry in sequence["trace"]] == ["pii", "entities"]
    assert_error(client.post("/v1/pipelines/ghost", json={"text": "x"}), 404, "not_found", "ghost")


def test_a_failing_step_gives_a_partial_result_not_a_500(client):
    # language accepts top_k but the others refuse it: two steps fail, one answers.
    body = client.post("/v1/pipelines/profile", json={"text": "Bonjour tout le monde", "options": {"top_k": 2}})
    assert body.status_code == 200, body.text
    payload = body.json()
    assert set(payload["result"]) == {"language"}
    failed = [entry for entry in payload["trace"] if entry["status"] == "error"]
    assert {entry["step"] for entry in failed} == {"sentiment", "entities"}
    assert all(entry["error"]["code"] == "validation_error" for entry in failed)
    everyone_fails = client.post("/v1/pipelines/profile", json={"text": "hi", "options": {"nope": 1}})
    assert_error(everyone_fails, 422, "validation_error", "nope")


def test_rules_route_by_regex_and_metadata(client):
    ticket = client.post("/v1/route", json={"text": "Customer writes about INC-2231: the app is great"}).json()
    assert (ticket["routed_by"], ticket["rule"], ticket["agent"]) == ("rule", "tickets", "profile")
    assert set(ticket["result"]) == {"language", "sentiment", "entities"}
    vip = client.post("/v1/route", json={"text": "I love it", "metadata": {"tier": "gold"}}).json()
    assert (vip["agent"], vip["rule"]) == ("entities", "vip")
    assert_error(client.post("/v1/route", json={"text": "x", "metadata": {"nested": {"a": 1}}}), 422, "validation_error", "metadata")


def test_stream_of_an_agent_that_does_not_stream_is_one_result_event(client):
    response = client.post("/v1/route", json={"text": "This is wonderful!", "agent": "sentiment", "stream": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    [(event, data)] = sse_events(response)
    assert event == "result" and data["result"]["label"] == "POSITIVE" and data["agent"] == "sentiment"
    refused = client.post("/v1/route", json={"text": "x", "agent": "language", "stream": True, "options": {"top_k": "x"}})
    assert_error(refused, 422, "validation_error", "top_k")


def test_composite_steps_reach_stats_and_the_audit_record(client):
    request_id = "composite-audit-1"
    client.post("/v1/route", json={"text": MULTI, "metadata": {"channel": "test"}}, headers={"X-Request-ID": request_id})
    deadline = time.monotonic() + 20
    record = None
    while time.monotonic() < deadline and record is None:
        records = client.get("/v1/admin/audit", params={"agent": "analyst", "limit": 50}).json()["records"]
        record = next((r for r in records if r["request_id"] == request_id), None)
        time.sleep(0.5)
    assert record is not None
    assert json.loads(record["metadata"]) == {"channel": "test"}
    assert {step["step"] for step in json.loads(record["trace"])} >= {"language", "entities"}
    stats = client.get("/v1/admin/stats").json()["agents"]
    assert stats["analyst"]["v1"]["since_start"]["requests"] >= 1
    assert stats["language"]["v1"]["since_start"]["requests"] >= 1


def test_a_follow_up_keeps_its_session_whichever_ingress_replica_answers(baton_url, admin_key):
    headers = {"Authorization": f"Bearer {admin_key}"}
    first = httpx.post(f"{baton_url}/v1/route", json={"text": "Tim Cook met Sundar Pichai in Paris.", "session_id": "s-two-replicas"}, headers=headers, timeout=60)
    assert first.json()["agent"] == "entities"
    replicas, routes = set(), []
    for sent in range(120):
        if sent >= 24 and len(replicas) == 2:
            break
        # A new connection each time, so the proxy may pick either replica; Serve's choice
        # between two idle replicas can repeat one many times over, so up to 120 are sent.
        follow = httpx.post(f"{baton_url}/v1/route", json={"text": "and this one?", "session_id": "s-two-replicas"}, headers=headers, timeout=60)
        replicas.add(follow.headers["x-served-by"])
        routes.append((follow.json()["agent"], follow.json()["routed_by"]))
    assert len(replicas) == 2, "both ingress replicas should have answered some follow-ups"
    assert set(routes) == {("entities", "session")}
