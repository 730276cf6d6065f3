"""Serve HTTP-proxy middlewares: one replaces a caller's malformed X-Request-ID before Serve
adopts and echoes it, so every response carries exactly one valid id; one gives the proxy's own
plain-text 503 (its queue for the ingress is full) API.md's error shape and a Retry-After, and
answers a request whose replica died under it with 503 ``unavailable`` instead of a bare 500.

Enabled by ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve.proxy:proxy_middlewares``.
"""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cluster.errors import Unavailable
from serve.http_errors import error_response, from_proxy_answer

CALLBACK_ENV = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve.proxy:proxy_middlewares"}
_VALID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class RequestIdSanitizer:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = MutableHeaders(scope=scope)
            given = headers.get("x-request-id")
            if given is not None and not _VALID.match(given):
                del headers["x-request-id"]
                headers["x-request-id"] = uuid.uuid4().hex
        await self.app(scope, receive, send)


class ProxyErrorShape:
    """The proxy answers 503 in plain text by itself when its queue for the ingress is full
    (``ingress.max_queued_requests``) or no ingress replica is ready; baton's own answers are
    JSON. Those plain-text 503s are rewritten as API.md errors; everything else passes as is."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        started = False
        text = bytearray()

        async def reshaping_send(message: Message) -> None:
            nonlocal held, started
            started = started or message["type"] == "http.response.start"
            if message["type"] == "http.response.start" and message["status"] == 503:
                if "json" not in Headers(raw=message["headers"]).get("content-type", ""):
                    held = message
                    return
            if held is None:
                await send(message)
                return
            text.extend(message.get("body", b""))
            if not message.get("more_body", False):
                await send_api_error(held, text.decode("utf-8", "replace"), scope, send)

        await self.app(scope, receive, reshaping_send)
        if not started:
            # The proxy lost the replica mid-request (it died) and answers nothing itself, which
            # the server would turn into a bare 500: the request may be retried, so 503.
            lost = Unavailable("the replica serving this request stopped; retry it", retry_after_s=1)
            request_id = Headers(scope=scope).get("x-request-id") or "unknown"
            await error_response(lost, request_id)(scope, receive, send)


async def send_api_error(start: Message, text: str, scope: Scope, send: Send) -> None:
    headers = Headers(raw=start["headers"])
    retry_after = headers.get("retry-after")
    error = from_proxy_answer(text, float(retry_after) if retry_after and retry_after.isdigit() else None)
    request_id = headers.get("x-request-id") or Headers(scope=scope).get("x-request-id") or "unknown"
    response = error_response(error, request_id)
    kept = [(k, v) for k, v in start["headers"] if k.lower() not in (b"content-type", b"content-length", b"retry-after")]
    await send({"type": "http.response.start", "status": response.status_code, "headers": [*kept, *response.raw_headers]})
    await send({"type": "http.response.body", "body": response.body})


def proxy_middlewares() -> list[Middleware]:
    return [Middleware(RequestIdSanitizer), Middleware(ProxyErrorShape)]
