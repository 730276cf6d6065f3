"""A Serve HTTP-proxy middleware that replaces a caller's malformed X-Request-ID before
Serve adopts and echoes it, so every response carries exactly one valid id.

Enabled by ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve.proxy:proxy_middlewares``.
"""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

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


def proxy_middlewares() -> list[Middleware]:
    return [Middleware(RequestIdSanitizer)]
