"""The one place that turns exceptions into API.md's error shape and HTTP status."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.errors import (
    BatonError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    Unavailable,
    ValidationFailed,
)

logger = logging.getLogger(__name__)

SERVE_UNAVAILABLE = (BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError, RayActorError)
# How the Serve proxy's own back-pressure answer begins (ray.serve.exceptions.BackPressureError).
SERVE_BACKPRESSURE_TEXT = "Request dropped due to backpressure"
_BODY_NOT_OBJECT = {"json_invalid", "missing", "model_attributes_type", "dict_type"}


def from_validation_error(error: RequestValidationError) -> BatonError:
    """400 when the body is not a JSON object at all, 422 naming the first bad field."""
    problem = error.errors()[0]
    location = [str(p) for p in problem.get("loc", ()) if p != "body"]
    if problem.get("type") in _BODY_NOT_OBJECT and not location:
        return InvalidRequest("request body must be a JSON object")
    if problem.get("type") == "json_invalid":
        return InvalidRequest(f"request body is not valid JSON: {problem.get('msg')}")
    field = ".".join(location) or "body"
    got = problem.get("input")
    shown = "" if problem.get("type") == "missing" else f", got {_short(got)}"
    return ValidationFailed(f"{field}: {problem.get('msg')}{shown}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def from_http_exception(error: StarletteHTTPException) -> BatonError:
    if isinstance(error.__cause__, BatonError):
        # FastAPI turns any error while it reads a body into a 400; ours (a body over the limit) keeps its own.
        return error.__cause__
    if error.status_code == 404:
        return NotFound("no such endpoint")
    if error.status_code == 405:
        return MethodNotAllowed("method not allowed on this endpoint")
    return InvalidRequest(str(error.detail))


def from_serve_error(error: Exception) -> BatonError | None:
    """Serve's own back-pressure and availability errors, as our 503s."""
    if isinstance(error, BackPressureError):
        return Overloaded("the agent's queue is full; retry shortly", retry_after_s=getattr(error, "retry_after_s", None) or 1)
    if isinstance(error, (DeploymentUnavailableError, ReplicaUnavailableError)):
        return Unavailable("the agent is not ready; retry shortly", retry_after_s=2)
    if isinstance(error, RayActorError):
        # The replica died while answering (a crash, its node lost): Serve replaces it.
        return Unavailable("the agent's replica died while answering; retry shortly", retry_after_s=1)
    return None


def from_proxy_answer(text: str, retry_after_s: float | None) -> BatonError:
    """The Serve proxy's own plain-text 503: its queue for the ingress is full (back-pressure,
    ``ingress.max_queued_requests``), or no ingress replica can take the request."""
    if text.startswith(SERVE_BACKPRESSURE_TEXT):
        return Overloaded("baton is at capacity: the queue for the ingress is full; retry later", retry_after_s=retry_after_s or 1)
    return Unavailable("baton is not ready; retry shortly", retry_after_s=retry_after_s or 2)


def to_baton_error(error: Exception) -> BatonError:
    """Map any exception to a domain error; unexpected ones become 500 internal (and are logged)."""
    if isinstance(error, BatonError):
        return error
    if isinstance(error, RequestValidationError):
        return from_validation_error(error)
    if isinstance(error, StarletteHTTPException):
        return from_http_exception(error)
    mapped = from_serve_error(error)
    if mapped is not None:
        return mapped
    logger.exception("internal error", exc_info=error)
    return BatonError("internal error; see the ingress logs")


def error_response(error: BatonError, request_id: str) -> JSONResponse:
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    body = {"error": {"code": error.code, "message": error.message, "request_id": request_id}}
    return JSONResponse(body, status_code=error.status, headers=headers)
