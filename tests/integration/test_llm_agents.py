"""LLM agents behind the front door (API.md §3, §4, §9): streaming as Server-Sent Events
through /v1/route and /v1/agents/{name}/invoke, the OpenAI chat door with the official
``openai`` client, an agent's own 413/415/429/503 reaching the caller, and session history.
The models are test doubles: a loopback OpenAI server and a tiny random GPT-2."""

from __future__ import annotations

import openai
import pytest

from tests.integration.test_api import assert_error
from tests.integration.test_orchestration import sse_events

pytestmark = pytest.mark.slow


def test_route_streams_several_chunks_then_the_whole_result(client):
    response = client.post("/v1/route", json={"text": "Say hello", "agent": "writer", "stream": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    chunks = [data["text"] for event, data in events if event == "chunk"]
    assert len(chunks) >= 3
    final_event, final = events[-1]
    assert final_event == "result" and [e for e, _ in events[:-1]] == ["chunk"] * len(chunks)
    assert final["result"]["text"] == "".join(chunks) == "Hello from the loopback server."
    assert final["result"]["provider"] == "openai" and final["result"]["usage"]["output_tokens"] == 6
    assert final["agent"] == "writer" and final["routed_by"] == "direct" and final["latency_ms"] > 0


def test_local_llm_streams_through_invoke(client):
    response = client.post("/v1/agents/local-writer/invoke", json={"text": "hello there", "stream": True})
    events = sse_events(response)
    chunks = [data["text"] for event, data in events if event == "chunk"]
    assert len(chunks) >= 2 and events[-1][0] == "result"
    result = events[-1][1]["result"]
    assert result["provider"] == "local" and result["text"] == "".join(chunks)
    assert 1 <= result["usage"]["output_tokens"] <= 12
    unary = client.post("/v1/agents/local-writer/invoke", json={"text": "hello there"}).json()
    assert unary["result"]["usage"]["output_tokens"] >= 1 and "text" in unary["result"]


def test_openai_client_works_unchanged(baton_url, admin_key):
    chat = openai.OpenAI(base_url=f"{baton_url}/v1", api_key=admin_key, max_retries=0)
    completion = chat.chat.completions.create(model="writer", messages=[{"role": "user", "content": "Say hello"}])
    assert completion.choices[0].message.content == "Hello from the loopback server."
    assert completion.choices[0].finish_reason == "stop" and completion.usage.completion_tokens == 6
    deltas = [
        chunk.choices[0].delta.content
        for chunk in chat.chat.completions.create(model="writer", messages=[{"role": "user", "content": "Say hello"}], stream=True)
        if chunk.choices and chunk.choices[0].delta.content
    ]
    assert len(deltas) >= 3 and "".join(deltas) == "Hello from the loopback server."
    short = chat.chat.completions.create(model="writer", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert short.choices[0].message.content == "Hello from" and short.choices[0].finish_reason == "length"
    # Any agent or pipeline is a "model": a specialist answers with its result as JSON text.
    sentiment = chat.chat.completions.create(model="sentiment", messages=[{"role": "user", "content": "I love it"}])
    assert '"POSITIVE"' in sentiment.choices[0].message.content
    assert {"writer", "sentiment", "profile"} <= {model.id for model in chat.models.list()}
    with pytest.raises(openai.NotFoundError):
        chat.chat.completions.create(model="ghost", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{baton_url}/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model="writer", messages=[{"role": "user", "content": "x"}]
        )


@pytest.mark.parametrize(
    "upstream, status, code",
    [(413, 413, "payload_too_large"), (415, 415, "unsupported_media_type"), (429, 429, "rate_limited"), (503, 503, "unavailable")],
)
def test_an_agents_own_error_reaches_the_caller_with_its_status(client, openai_server, upstream, status, code):
    openai_server.fail(upstream, headers={"Retry-After": "7"})
    error = assert_error(client.post("/v1/agents/writer/invoke", json={"text": "hi"}), status, code)
    assert "answered" in error["message"]
    if status in (429, 503):
        openai_server.fail(upstream, headers={"Retry-After": "7"})
        response = client.post("/v1/route", json={"text": "hi", "agent": "writer"})
        assert_error(response, status, code)
        assert response.headers["Retry-After"] == "7"


def test_an_error_before_the_first_chunk_is_a_plain_error_and_after_it_an_error_event(client, openai_server):
    openai_server.fail(429, headers={"Retry-After": "3"})
    refused = client.post("/v1/route", json={"text": "hi", "agent": "writer", "stream": True})
    assert_error(refused, 429, "rate_limited")
    openai_server.error_mid_stream = {"message": "the model crashed", "type": "server_error"}
    try:
        events = sse_events(client.post("/v1/route", json={"text": "hi", "agent": "writer", "stream": True}))
    finally:
        openai_server.error_mid_stream = None
    assert events[0][0] == "chunk" and events[-1][0] == "error"
    assert events[-1][1]["error"]["code"] == "unavailable" and events[-1][1]["error"]["request_id"]


def test_an_llm_agent_receives_its_own_session_history(client, openai_server):
    body = {"agent": "writer", "session_id": "chat-1", "user_id": "u-llm"}
    client.post("/v1/route", json={**body, "text": "My name is Ada."})
    client.post("/v1/route", json={**body, "text": "What is my name?"})
    messages = openai_server.requests[-1]["body"]["messages"]
    contents = [m["content"] for m in messages]
    assert contents[0] == "Be brief."
    assert contents[1:] == ["My name is Ada.", "Hello from the loopback server.", "What is my name?"]
    other_user = client.post("/v1/route", json={**body, "user_id": "u-other", "text": "What is my name?"})
    assert other_user.status_code == 200
    assert [m["content"] for m in openai_server.requests[-1]["body"]["messages"]] == ["Be brief.", "What is my name?"]
