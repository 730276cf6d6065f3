"""Hostile text bodies at the front door, without Ray: JSON nested past the interpreter's
recursion limit, numbers too long to convert, lone surrogates anywhere in a body, control
characters, mixed scripts and emoji get their 4xx (or a 200 that keeps the text intact),
never a 500."""

from __future__ import annotations

import base64
import json

import pytest

from tests.unit import hostile_inputs as hostile
from tests.unit import test_document_requests as document_requests
from tests.unit.test_document_requests import error_of, png

# The app of test_document_requests: a documents double, an echo agent, a 4 KiB body limit
# for plain JSON and a document-sized one where documents are taken.
embed, documents, gateway, http = document_requests.embed, document_requests.documents, document_requests.gateway, document_requests.http

TEXT_PATHS = ["/v1/agents/weather/invoke", "/v1/pipelines/intake", "/v1/route"]


def post(http, path: str, body: bytes, content_type: str = "application/json"):
    return http.post(path, content=body, headers={"content-type": content_type})


@pytest.mark.parametrize("path", [*TEXT_PATHS, "/v1/chat/completions", "/v1/extract"])
def test_json_nested_past_the_recursion_limit_is_a_400(http, gateway, path):
    # As deep as the path's body limit allows: 100,000 levels where documents are taken.
    depth = min(100_000, gateway.body_limit(path) // 2)
    response = post(http, path, hostile.nested_json(depth))
    error_of(response, 400, "invalid_request")


def test_nesting_inside_a_field_and_a_number_too_long_to_convert_are_400s(http):
    deep = b'{"text": "hi", "options": {"a": ' + hostile.nested_json(50_000) + b"}}"
    assert "nested too deeply" in error_of(post(http, "/v1/agents/weather/invoke", deep), 400, "invalid_request")
    digits = b'{"text": "hi", "options": {"n": ' + b"9" * 5000 + b"}}"
    assert "4300 digits" in error_of(post(http, "/v1/agents/weather/invoke", digits), 400, "invalid_request")


def test_a_json_form_part_nested_too_deeply_names_the_part(http):
    files = {"file": ("x.png", png())}
    response = http.post("/v1/extract", files=files, data={"query": hostile.nested_json(50_000).decode()})
    assert "query: not valid JSON (nested too deeply)" in error_of(response, 422, "validation_error")


SURROGATES = [
    ("/v1/agents/weather/invoke", b'{"text": "ok \\ud800 ok"}', "text"),
    ("/v1/route", b'{"text": "hi", "metadata": {"tier": "\\udfff"}}', "metadata.tier"),
    ("/v1/route", b'{"text": "hi", "metadata": {"\\ud83d": "x"}}', "metadata (a key)"),
    ("/v1/pipelines/intake", b'{"text": "hi", "options": {"a": ["x", "\\ud800"]}}', "options.a[1]"),
    ("/v1/chat/completions", b'{"model": "weather", "messages": [{"role": "user", "content": "\\ud800"}]}', "messages[0].content"),
    ("/v1/chat/completions", b'{"model": "weather", "messages": [{"role": "user", "content": [{"type": "text", "text": "a\\udc00"}]}]}',
     "messages[0].content[0].text"),
    ("/v1/extract", b'{"document_b64": "%s", "metadata": {"k": "\\ud800"}}' % base64.b64encode(png()), "metadata.k"),
]


@pytest.mark.parametrize("path, body, field", SURROGATES, ids=[field for _, _, field in SURROGATES])
def test_a_lone_surrogate_anywhere_is_a_422_naming_the_field(http, documents, path, body, field):
    message = error_of(post(http, path, body), 422, "validation_error")
    assert message.startswith(field) and ("surrogate" in message or "unicode" in message), message
    assert not documents.seen


def test_a_lone_surrogate_in_a_form_part_is_a_422(http, documents):
    response = http.post("/v1/extract", files={"file": ("x.png", png())}, data={"query": '{"total": 0.0, "\\ud800": "str"}'})
    assert error_of(response, 422, "validation_error").startswith("query (a key)")
    assert not documents.seen


ODD_BUT_VALID = {
    "run of one character": "a" * 20_000,
    "control characters and NUL": hostile.control_characters(20_000),
    "mixed scripts with joiners": hostile.mixed_scripts(20_000),
    "emoji with ZWJ sequences": hostile.emoji(20_000),
}


@pytest.mark.parametrize("text", ODD_BUT_VALID.values(), ids=ODD_BUT_VALID.keys())
def test_odd_but_valid_text_at_the_limit_comes_back_intact(http, text):
    response = http.post("/v1/agents/weather/invoke", json={"text": text})
    assert response.status_code == 200, response.text
    assert response.json()["result"]["text"] == text


def test_text_over_the_limits_gets_422_or_413(http, gateway):
    over_chars = json.dumps({"text": hostile.emoji(20_001)}).encode()
    assert "at most 20000 characters" in error_of(post(http, "/v1/agents/weather/invoke", over_chars), 422, "validation_error")
    over_body = json.dumps({"text": "a" * gateway.config.limits.max_body_bytes}).encode()
    error_of(post(http, "/v1/route", over_body), 413, "payload_too_large")
