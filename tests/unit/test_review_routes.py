"""serve.review's routes on a small FastAPI app with the app's error handling: status codes
and API.md §1 error bodies for each role, body validation, and the /review page's headers.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.errors import BatonError, Conflict, Forbidden, NotFound, Unauthorized
from cluster.keys import Principal
from serve.http_errors import error_response, to_baton_error
from serve.review import review_router

PRINCIPALS = {
    "invoke-key": Principal("key_invoke", "svc", "invoke"),
    "review-key": Principal("key_review", "alice", "review"),
    "admin-key": Principal("key_admin", "ops", "admin"),
}
ITEM = {"request_id": "r-1", "agent": "tickets", "version": "v2", "input_text": "refund [EMAIL]",
        "result": {"label": "billing"}, "confidence": 0.4, "queued_at": "2026-03-02T12:00:00+00:00"}


class ReviewPortDouble:
    """Test double of serve.review.ReviewPort: canned answers, and a log of every call."""

    def __init__(self):
        self.calls: list[tuple[str, Any, str]] = []
        self.with_feedback: set[str] = set()
        self.answered: set[str] = set()

    async def feedback(self, request: Request, body: dict, principal: Principal) -> dict:
        self.calls.append(("feedback", body, principal.key_id))
        if not body["request_id"].startswith("r-"):
            raise NotFound(f"request_id: no request {body['request_id']!r}")
        if body["request_id"] in self.with_feedback:
            raise Conflict(f"request_id: request {body['request_id']!r} has feedback already")
        self.with_feedback.add(body["request_id"])
        return {"kind": "feedback", "request_id": body["request_id"]}

    async def review_items(self, request: Request, agent: str | None, limit: int, principal: Principal) -> list[dict]:
        self.calls.append(("review_items", (agent, limit), principal.key_id))
        return [ITEM]

    async def answer_review(self, request: Request, request_id: str, label: str, principal: Principal) -> dict:
        self.calls.append(("answer_review", (request_id, label), principal.key_id))
        if request_id in self.answered:
            raise Conflict(f"request_id: review item {request_id!r} is answered already")
        if request_id != "r-1":
            raise NotFound(f"request_id: no review item {request_id!r}")
        self.answered.add(request_id)
        return {"request_id": request_id, "agent": "tickets", "label": label}


def review_app(port: Any, verify: Callable[[str], Principal | None]) -> FastAPI:
    """The router mounted as serve/app.py mounts routes: its error handlers, request ids and a
    ``require(role)`` that checks keys as Gateway.authorize does."""
    app = FastAPI()

    def require(role: str):
        async def dependency(request: Request) -> Principal:
            scheme, _, key = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
            principal = verify(key.strip())
            if principal is None:
                raise Unauthorized("unknown API key")
            if not principal.allows(role):
                raise Forbidden(f"this key has role {principal.role!r}; the endpoint needs {role!r}")
            return principal

        return dependency

    @app.exception_handler(BatonError)
    @app.exception_handler(RequestValidationError)
    @app.exception_handler(StarletteHTTPException)
    async def handle_error(request: Request, error: Exception) -> JSONResponse:
        return error_response(to_baton_error(error), request.state.request_id)

    @app.middleware("http")
    async def request_id(request: Request, call_next):
        request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        return await call_next(request)

    app.include_router(review_router(port, require))
    return app


@pytest.fixture
def port() -> ReviewPortDouble:
    return ReviewPortDouble()


@pytest.fixture
def client(port) -> TestClient:
    return TestClient(review_app(port, PRINCIPALS.get))


def call(client: TestClient, method: str, path: str, key: str | None = None, body: Any = None, **kwargs):
    headers = {"X-Request-ID": "req-under-test"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return client.request(method, path, headers=headers, json=body, **kwargs)


def assert_error(response, status: int, code: str, in_message: str = "") -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["request_id"] == "req-under-test"
    assert in_message in error["message"], error["message"]


# -- roles ---------------------------------------------------------------------------------

ENDPOINTS = {
    "feedback": ("POST", "/v1/feedback", {"request_id": "r-1", "label": "refund"}),
    "list": ("GET", "/v1/admin/review", None),
    "answer": ("POST", "/v1/admin/review/r-1", {"label": "refund"}),
}
ALLOWED = {"feedback": {"invoke-key", "admin-key"}, "list": {"review-key", "admin-key"}, "answer": {"review-key", "admin-key"}}
SUCCESS = {"feedback": 202, "list": 200, "answer": 200}


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
@pytest.mark.parametrize("key", sorted(PRINCIPALS))
def test_each_role_reaches_exactly_its_endpoints(client, port, endpoint, key):
    method, path, body = ENDPOINTS[endpoint]
    response = call(client, method, path, key, body)
    if key in ALLOWED[endpoint]:
        assert response.status_code == SUCCESS[endpoint], response.text
        assert port.calls[-1][2] == PRINCIPALS[key].key_id
    else:
        assert_error(response, 403, "forbidden", f"role {PRINCIPALS[key].role!r}")
        assert port.calls == []


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
@pytest.mark.parametrize(("key", "message"), [(None, "missing API key"), ("no-such-key", "unknown API key")])
def test_no_key_or_an_unknown_key_is_401(client, port, endpoint, key, message):
    method, path, body = ENDPOINTS[endpoint]
    assert_error(call(client, method, path, key, body), 401, "unauthorized", message)
    assert port.calls == []


@pytest.mark.parametrize(
    ("role", "asked", "allowed"),
    [("invoke", "invoke", True), ("invoke", "review", False), ("invoke", "admin", False),
     ("review", "invoke", False), ("review", "review", True), ("review", "admin", False),
     ("admin", "invoke", True), ("admin", "review", True), ("admin", "admin", True)],
)
def test_the_permission_table(role, asked, allowed):
    assert Principal("k", "n", role).allows(asked) is allowed


def test_a_key_of_an_unknown_role_is_allowed_nothing_and_an_unknown_endpoint_role_is_a_bug():
    assert not Principal("k", "n", "retired-role").allows("invoke")
    with pytest.raises(ValueError, match="unknown role"):
        Principal("k", "n", "admin").allows("superuser")


# -- POST /v1/feedback ---------------------------------------------------------------------


def test_feedback_is_accepted_with_202_and_reaches_the_port(client, port):
    response = call(client, "POST", "/v1/feedback", "invoke-key", {"request_id": "r-1", "reward": 1, "correct": True})
    assert response.status_code == 202 and response.json() == {"request_id": "r-1", "accepted": True}
    assert port.calls == [("feedback", {"request_id": "r-1", "label": None, "reward": 1.0, "correct": True}, "key_invoke")]


def test_feedback_for_an_unknown_request_is_404_and_twice_is_409(client):
    assert_error(call(client, "POST", "/v1/feedback", "invoke-key", {"request_id": "x-9", "label": "a"}), 404, "not_found", "x-9")
    assert call(client, "POST", "/v1/feedback", "invoke-key", {"request_id": "r-1", "label": "a"}).status_code == 202
    assert_error(call(client, "POST", "/v1/feedback", "invoke-key", {"request_id": "r-1", "label": "b"}), 409, "conflict", "r-1")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"request_id": "r-1"}, "at least one of label, reward, correct"),
        ({"request_id": "r-1", "label": "a", "extra": 1}, "extra"),
        ({"request_id": "r-1", "reward": "1"}, "reward"),
        ({"request_id": "r-1", "reward": True}, "reward"),
        ({"request_id": "r-1", "correct": "yes"}, "correct"),
        ({"request_id": "r-1", "label": ""}, "label"),
        ({"request_id": "r-1", "label": "x" * 201}, "label"),
        ({"request_id": "a/etc", "label": "a"}, "request_id"),
        ({"request_id": "x" * 129, "label": "a"}, "request_id"),
        ({"label": "a"}, "request_id"),
    ],
)
def test_bad_feedback_bodies_are_422_naming_the_field(client, port, body, field):
    assert_error(call(client, "POST", "/v1/feedback", "invoke-key", body), 422, "validation_error", field)
    assert port.calls == []


def test_a_body_that_is_not_an_object_is_400(client):
    response = client.post("/v1/feedback", content=b"[1, 2]", headers={
        "Authorization": "Bearer invoke-key", "X-Request-ID": "req-under-test", "Content-Type": "application/json"})
    assert_error(response, 400, "invalid_request", "JSON object")


# -- the review endpoints ----------------------------------------------------------------------


def test_review_items_pass_agent_and_limit(client, port):
    response = call(client, "GET", "/v1/admin/review", "review-key", params={"agent": "tickets", "limit": 3})
    assert response.status_code == 200 and response.json() == {"items": [ITEM]}
    assert port.calls == [("review_items", ("tickets", 3), "key_review")]
    call(client, "GET", "/v1/admin/review", "review-key")
    assert port.calls[-1][1] == (None, 50)


@pytest.mark.parametrize(("params", "field"), [({"limit": 0}, "limit"), ({"limit": 201}, "limit"), ({"agent": "../x"}, "agent")])
def test_bad_review_queries_are_422(client, port, params, field):
    assert_error(call(client, "GET", "/v1/admin/review", "review-key", params=params), 422, "validation_error", field)
    assert port.calls == []


def test_answer_is_200_then_409_and_unknown_items_are_404(client, port):
    response = call(client, "POST", "/v1/admin/review/r-1", "review-key", {"label": "refund"})
    assert response.status_code == 200 and response.json()["label"] == "refund"
    assert port.calls == [("answer_review", ("r-1", "refund"), "key_review")]
    again = call(client, "POST", "/v1/admin/review/r-1", "review-key", {"label": "billing"})
    assert_error(again, 409, "conflict", "answered already")
    assert_error(call(client, "POST", "/v1/admin/review/r-2", "review-key", {"label": "refund"}), 404, "not_found", "r-2")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [("/v1/admin/review/r-1", {}, "label"), ("/v1/admin/review/r-1", {"label": "a", "agent": "x"}, "agent"),
     ("/v1/admin/review/r-1", {"label": 3}, "label"), ("/v1/admin/review/a%20b", {"label": "a"}, "request_id"),
     ("/v1/admin/review/" + "x" * 129, {"label": "a"}, "request_id")],
)
def test_bad_answers_are_422(client, port, path, body, field):
    assert_error(call(client, "POST", path, "review-key", body), 422, "validation_error", field)
    assert port.calls == []


# -- the page --------------------------------------------------------------------------------


def test_the_page_needs_no_key_loads_nothing_from_outside_and_allows_only_its_own_script(client):
    response = client.get("/review")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert re.findall(r"https?://", html) == [] and "<script src" not in html and "<link" not in html
    policy = response.headers["content-security-policy"]
    script = re.search(r"<script>(.*?)</script>", html, re.DOTALL).group(1)
    style = re.search(r"<style>(.*?)</style>", html, re.DOTALL).group(1)
    for block in (script, style):
        digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    # Text reaches the DOM as text only: user input must never be parsed as HTML.
    assert "innerHTML" not in script and "sessionStorage" in script


def test_the_router_is_listed_in_openapi_without_the_page(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/feedback", "/v1/admin/review", "/v1/admin/review/{request_id}"} <= set(paths)
    assert "/review" not in paths
    assert paths["/v1/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("FeedbackBody")
