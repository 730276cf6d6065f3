"""Hostile input against the running service: bad documents (bombs, truncated and polyglot
files, PDFs with looping or lying page trees) get their 4xx, hostile text (long runs, deep
JSON, control characters, lone surrogates, mixed scripts, emoji) a 4xx or a 200, never a 5xx,
and each answers before a per-request timeout taken from the config, so a hang fails."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.integration.test_api import assert_error
from tests.unit import hostile_inputs as hostile

pytestmark = pytest.mark.slow

# Beyond the configured deadlines a request has already failed; this margin only absorbs the
# round trip, so a request that hangs past its deadline fails the test by timing out.
MARGIN_S = 5.0


@pytest.fixture(scope="module")
def hostile_client(baton_url, client, test_config):
    """A key of its own with room for the whole set, and the Serve proxy's own deadline as the
    bound: every answer, even a refusal after the documents deadline, must come before it."""
    created = client.post("/v1/admin/keys", json={"role": "invoke", "name": "hostile", "rate_limit": {"requests_per_s": 1000, "burst": 1000}})
    assert created.status_code == 201, created.text
    headers = {"Authorization": f"Bearer {created.json()['key']}"}
    with httpx.Client(base_url=baton_url, headers=headers, timeout=test_config.http.request_timeout_s + MARGIN_S) as http:
        yield http


@pytest.fixture(scope="module")
def text_timeout_s(test_config) -> float:
    return test_config.limits.agent_timeout_s + MARGIN_S


def answered(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code < 500, response.text
    if code is None:
        assert response.status_code == status, response.text
        assert "result" in response.json() or "choices" in response.json()
    else:
        assert_error(response, status, code)


# ---- documents ----

DOCUMENTS = [
    ("png pixel bomb", hostile.pixel_bomb_png, 413, "payload_too_large"),
    ("png text chunk bomb", hostile.text_chunk_bomb_png, 413, "payload_too_large"),
    ("tiff pixel bomb", lambda: hostile.tiff(60_000, 60_000), 413, "payload_too_large"),
    ("tiff of 100,000 frames", lambda: hostile.tiff(1, 1, 100_000), 413, "payload_too_large"),
    ("jpeg scan bomb", hostile.jpeg_scan_bomb, 413, "payload_too_large"),
    ("gzip bomb", hostile.gzip_bomb, 415, "unsupported_media_type"),
    ("truncated png", lambda: hostile.truncated(hostile.encoded(hostile.noise(), "PNG")), 422, "validation_error"),
    ("truncated jpeg", lambda: hostile.truncated(hostile.encoded(hostile.noise(), "JPEG")), 422, "validation_error"),
    ("truncated pdf", lambda: hostile.truncated(hostile.one_page_pdf()), 422, "validation_error"),
    ("pdf + zip polyglot", hostile.pdf_zip_polyglot, 415, "unsupported_media_type"),
    ("jpeg + pdf polyglot", hostile.jpeg_pdf_polyglot, 415, "unsupported_media_type"),
    ("pdf page tree listing itself", hostile.pdf_kids_self, 422, "validation_error"),
    ("pdf page tree listing an ancestor", hostile.pdf_kids_ancestor, 422, "validation_error"),
    ("pdf claiming 2e9 pages", lambda: hostile.pdf_claiming_pages(2_000_000_000), 413, "payload_too_large"),
    ("pdf flate bomb", hostile.pdf_flate_bomb, 413, "payload_too_large"),
    ("pdf content used many times", hostile.pdf_shared_content, 413, "payload_too_large"),
]


@pytest.mark.parametrize("name, make, status, code", DOCUMENTS, ids=[case[0] for case in DOCUMENTS])
def test_a_bad_document_gets_its_4xx_in_time(hostile_client, name, make, status, code):
    response = hostile_client.post("/v1/extract", files={"file": (name, make())}, data={"query": "*", "mode": "text"})
    answered(response, status, code)


@pytest.mark.parametrize("path", ["/v1/agents/faces/invoke", "/v1/pipelines/document-intake"])
@pytest.mark.parametrize("make, status", [(hostile.pixel_bomb_png, 413), (hostile.pdf_kids_self, 422)], ids=["pixel bomb", "page tree loop"])
def test_other_doors_for_documents_refuse_them_too(hostile_client, path, make, status):
    answered(hostile_client.post(path, files={"file": ("bad", make())}), status, "payload_too_large" if status == 413 else "validation_error")


def test_a_compressed_body_is_not_inflated(hostile_client, text_timeout_s):
    response = hostile_client.post(
        "/v1/agents/sentiment/invoke", content=hostile.gzip_bomb(20), timeout=text_timeout_s,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    answered(response, 400, "invalid_request")


# ---- text ----


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


def chat(model: str, content: str) -> bytes:
    return body(model=model, messages=[{"role": "user", "content": content}])


# (name, path, body from the limits (max_text_chars, max_body_bytes), status, error code or None for a 200)
TEXT = [
    ("run at the limit, entities", "/v1/agents/entities/invoke", lambda chars, _: body(text="a" * chars), 200, None),
    ("run at the limit, pii", "/v1/agents/pii/invoke", lambda chars, _: body(text="a" * chars), 200, None),
    ("run at the limit, route", "/v1/route", lambda chars, _: body(text="a" * chars), 200, None),
    ("run over the limit", "/v1/route", lambda chars, _: body(text="a" * (chars + 1)), 422, "validation_error"),
    ("1 MB run, invoke", "/v1/agents/sentiment/invoke", lambda *_: body(text="a" * 1_000_000), 422, "validation_error"),
    ("1 MB run, route", "/v1/route", lambda *_: body(text="a" * 1_000_000), 413, "payload_too_large"),
    ("JSON 100,000 deep, invoke", "/v1/agents/sentiment/invoke", lambda *_: hostile.nested_json(100_000), 400, "invalid_request"),
    ("JSON nested to the body limit, route", "/v1/route", lambda _, size: hostile.nested_json(size // 2), 400, "invalid_request"),
    ("JSON nested in options", "/v1/pipelines/profile",
     lambda *_: b'{"text": "hi", "options": ' + hostile.nested_json(50_000) + b"}", 400, "invalid_request"),
    ("control characters, pii", "/v1/agents/pii/invoke", lambda chars, _: body(text=hostile.control_characters(chars)), 200, None),
    ("control characters, route", "/v1/route",
     lambda chars, _: body(text=hostile.control_characters(chars), session_id="s\u0000\u0001"), 200, None),
    ("lone surrogate in text", "/v1/agents/entities/invoke", lambda *_: b'{"text": "Paris \\ud800 London"}', 422, "validation_error"),
    ("lone surrogate in metadata", "/v1/route", lambda *_: b'{"text": "hi", "metadata": {"k": "\\udc00"}}', 422, "validation_error"),
    ("lone surrogate in chat", "/v1/chat/completions", lambda *_: chat("sentiment", "\ud800"), 422, "validation_error"),
    ("mixed scripts, language", "/v1/agents/language/invoke", lambda chars, _: body(text=hostile.mixed_scripts(chars)), 200, None),
    ("mixed scripts, pipeline", "/v1/pipelines/profile", lambda chars, _: body(text=hostile.mixed_scripts(chars)), 200, None),
    ("emoji at the limit, sentiment", "/v1/agents/sentiment/invoke", lambda chars, _: body(text=hostile.emoji(chars)), 200, None),
    ("emoji at the limit, chat", "/v1/chat/completions", lambda chars, _: chat("sentiment", hostile.emoji(chars)), 200, None),
    ("20,000 emoji, invoke", "/v1/agents/entities/invoke", lambda *_: body(text=hostile.emoji(20_000)), 422, "validation_error"),
    ("20,000 emoji, route", "/v1/route", lambda *_: body(text=hostile.emoji(20_000)), 413, "payload_too_large"),
    ("words past a local LLM's context", "/v1/chat/completions", lambda chars, _: chat("local-writer", "a " * (chars // 2)), 413, "payload_too_large"),
]


@pytest.mark.parametrize("name, path, make, status, code", TEXT, ids=[case[0] for case in TEXT])
def test_hostile_text_gets_a_4xx_or_a_200_in_time(hostile_client, test_config, text_timeout_s, name, path, make, status, code):
    content = make(test_config.limits.max_text_chars, test_config.limits.max_body_bytes)
    response = hostile_client.post(path, content=content, headers={"content-type": "application/json"}, timeout=text_timeout_s)
    answered(response, status, code)


def test_the_agents_still_answer_after_the_hostile_set(hostile_client, text_timeout_s):
    answered(hostile_client.post("/v1/agents/sentiment/invoke", json={"text": "I love it"}, timeout=text_timeout_s), 200)
    blank = hostile.encoded(hostile.noise((64, 64)), "PNG")
    response = hostile_client.post("/v1/extract", files={"file": ("ok.png", blank)}, data={"query": "*", "mode": "text"})
    assert response.status_code == 200, response.text
