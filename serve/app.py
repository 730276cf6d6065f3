"""The HTTP surface (API.md) as a FastAPI app built over one Gateway: routes, the request
envelope (request id, body limit, reporting), the error handlers, Server-Sent Events and the
OpenAI-compatible chat door. ``create_app`` is called once per ingress replica.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import nullcontext
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as FastApiPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from actors.admission import AdmissionGate, admission_gate
from actors.documents.pages import SUPPORTED
from actors.dispatcher import Called
from actors.invocation import Chunk
from cluster.errors import BatonError, NotFound, PayloadTooLarge
from cluster.keys import Principal
from cluster.registry import NAME_PATTERN as MODEL_NAME_PATTERN
from serve import openapi
from serve.lifecycle import lifecycle_router
from serve.review import review_router
from serve.docs import mount_offline_docs
from serve.http_errors import error_response, to_baton_error
from serve.ingress import Gateway, note, request_id_of
from serve.schemas import (
    ChatBody,
    DocumentBody,
    DocumentFields,
    ExtractBody,
    ExtractFields,
    Instant,
    InvokeBody,
    KeyBody,
    RouteBody,
    TrafficBody,
)
from serve.uploads import JSON_PARTS, document_from_payload, is_multipart, json_object, read_document_request, validated

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
DOCUMENT_ID = r"^[0-9a-f]{32}$"
KEY_ID = r"^key_[0-9a-f]{16}$"
# The agent behind POST /v1/extract (API.md §5).
EXTRACT_AGENT = "documents"
UNAUDITED = ("/healthz", "/metrics", "/docs", "/openapi.json", "/redoc", "/review")
# The paths that run agents, and so are shed past capacity; health, metrics, listings and admin never are.
SHED = re.compile(r"^/v1/(route|extract|chat/completions|agents/[^/]+/invoke|pipelines/[^/]+)$")


class ErrorDetail(BaseModel):
    code: str = Field(..., description="Machine-readable error code (API.md §1).")
    message: str = Field(..., description="What went wrong and why, naming the field.")
    request_id: str = Field(..., description="The request's X-Request-ID.")


class ErrorBody(BaseModel):
    error: ErrorDetail


_ERROR_TEXT = {
    400: "Body is not JSON, or not an object.",
    401: "API key missing, unknown, revoked or expired.",
    403: "Key valid, its role or scope insufficient.",
    404: "Unknown agent, version, model or pipeline.",
    409: "Conflict with the current state.",
    413: "Body or document over the configured limit.",
    415: "Unsupported media type.",
    422: "JSON fine, fields wrong.",
    429: "Rate limited; see Retry-After.",
    500: "A bug in baton.",
    503: "Overloaded or agent not ready; see Retry-After.",
}
# Any authenticated endpoint can meet any of these (a rate limit, a full queue, a bad body).
_COMMON = (400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 500, 503)
_ERROR_TEXT[405] = "Method not allowed on this endpoint."


def documented_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody, "description": _ERROR_TEXT[status]} for status in statuses or _COMMON}


SSE_RESPONSE = {"content": {"text/event-stream": {}}, "description": "With stream=true: chunk events, then one result or error event."}


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def create_app(gate: Gateway) -> FastAPI:
    app = FastAPI(
        title="baton",
        description="One front door to many specialist models, on Ray Serve.",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
        responses=documented_errors(),
    )
    mount_offline_docs(app)
    openapi.install(app, gate.config)
    # Outside the request envelope, so a refusal while the body streams in gets its error shape.
    app.add_middleware(StreamedBodyLimit, limit_of=gate.body_limit)
    admission = admission_gate(gate.config.ingress.admission)

    def require(role: str):
        async def dependency(request: Request) -> Principal:
            return await gate.authorize(request, role)

        return dependency

    invoke_key = Depends(require("invoke"))
    admin_key = Depends(require("admin"))

    @app.exception_handler(BatonError)
    @app.exception_handler(RequestValidationError)
    @app.exception_handler(StarletteHTTPException)
    async def _handle_error(request: Request, error: Exception) -> JSONResponse:
        baton_error = to_baton_error(error)
        request.state.error = f"{baton_error.code}: {baton_error.message}"
        response = error_response(baton_error, request_id_of(request))
        if isinstance(error, StarletteHTTPException) and error.status_code == 405:
            response.headers["Allow"] = allowed_methods(app, request)  # RFC 9110 requires it
        return response

    @app.middleware("http")
    async def _request_envelope(request: Request, call_next) -> Response:
        gate.ensure_background()
        started, wall_start = time.perf_counter(), time.time()
        incoming = request.headers.get("x-request-id", "")
        request.state.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
        try:
            check_body_size(request, gate.body_limit(request.url.path))
            treat_body_as_json(request)
            async with admitted(admission, request, gate.config.limits.agent_timeout_s):
                response = await call_next(request)
        except Exception as error:  # includes errors raised while the body streams in
            baton_error = to_baton_error(error)
            request.state.error = f"{baton_error.code}: {baton_error.message}"
            response = error_response(baton_error, request.state.request_id)
        # Which ingress replica answered: shows that sessions and limits hold across replicas.
        response.headers["X-Served-By"] = gate.replica
        if not incoming:
            # Behind the Serve proxy the header always arrives (and is echoed by the proxy).
            response.headers["X-Request-ID"] = request.state.request_id
        if request.url.path.startswith(UNAUDITED):
            return response
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            response.body_iterator = _report_after(response.body_iterator, gate, request, response.status_code, started, wall_start)
        else:
            await gate.report(request, response.status_code, started, wall_start)
        return response

    @app.get("/healthz", summary="Liveness: 200 once the application can serve.", responses=documented_errors(500))
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/agents", summary="The agents, their kinds and version weights.")
    async def list_agents(_: Principal = invoke_key) -> dict:
        return await gate.agents_view()

    @app.post("/v1/route", summary="Route a request to the right agent and run it.", responses={200: SSE_RESPONSE})
    async def route(request: Request, body: RouteBody, _: Principal = invoke_key) -> Any:
        started = time.perf_counter()
        invocation = gate.invocation(request, body)
        decision = await gate.decide(request, body, invocation)
        response = {"request_id": request_id_of(request), **decision.as_dict(), "version": None, "result": None}
        if decision.agent is None or body.dry_run:
            if decision.agent is not None:
                response["version"] = gate.pick(request, decision.agent, invocation)
            return finish(response, started)
        response["version"] = gate.pick(request, decision.agent, invocation)
        return await answer(gate, request, decision.agent, invocation, response, started)

    @app.post(
        "/v1/agents/{name}/invoke",
        summary="Invoke one agent directly, on a text or a document.",
        responses={200: SSE_RESPONSE},
        openapi_extra=request_body_doc([InvokeBody, DocumentBody], DocumentFields),
    )
    async def invoke(request: Request, name: str, _: Principal = invoke_key) -> Any:
        started = time.perf_counter()
        gate.known(name)
        invocation = await text_or_document(gate, request)
        note(request, agent=name, routed_by="direct")
        response = {"request_id": request_id_of(request), "agent": name, "version": gate.pick(request, name, invocation)}
        return await answer(gate, request, name, invocation, response, started)

    @app.get("/v1/pipelines", summary="The pipelines and their steps.")
    async def list_pipelines(_: Principal = invoke_key) -> dict:
        return gate.pipelines_view()

    @app.post(
        "/v1/pipelines/{name}",
        summary="Run a pipeline by name, on a text or a document.",
        responses={200: SSE_RESPONSE},
        openapi_extra=request_body_doc([InvokeBody, DocumentBody], DocumentFields),
    )
    async def run_pipeline(request: Request, name: str, _: Principal = invoke_key) -> Any:
        started = time.perf_counter()
        if name not in gate.pipeline_names():
            raise NotFound(f"pipeline {name!r} does not exist (pipelines: {gate.pipeline_names()})")
        gate.check_scope(request, pipeline=name)
        invocation = await text_or_document(gate, request)
        note(request, agent=name, routed_by="direct", version="v1")
        return await answer(gate, request, name, invocation, {"request_id": request_id_of(request), "pipeline": name}, started, "v1")

    @app.post(
        "/v1/extract",
        summary="Fields, text or tables from a document (PNG, JPEG, TIFF, PDF).",
        openapi_extra=request_body_doc([ExtractBody], ExtractFields),
    )
    async def extract(request: Request, _: Principal = invoke_key) -> dict:
        started = time.perf_counter()
        gate.known(EXTRACT_AGENT)
        document, fields = await read_document_request(request, ExtractFields, gate.config.limits.documents)
        options = {**fields.options, "query": fields.query, "mode": fields.mode}
        invocation = gate.document_invocation(request, document, fields, options)
        note(request, agent=EXTRACT_AGENT, routed_by="direct")
        version = gate.pick(request, EXTRACT_AGENT, invocation)
        output = (await gate.run(request, EXTRACT_AGENT, version, invocation)).result.output
        answer = {"pages": output["pages"], "results": output["results"], "document": output["source"]}
        # The audit keeps the fields, not the page text again.
        note(request, output=answer)
        return finish({"request_id": request_id_of(request), "agent": EXTRACT_AGENT, "version": version, **answer}, started)

    @app.get("/v1/documents/search", summary="Stored documents nearest to a query, best first.")
    async def search_documents(
        q: str = Query(..., min_length=1, max_length=2000, description="What to look for, in words."),
        k: int = Query(5, ge=1, le=100, description="How many documents to return."),
        _: Principal = invoke_key,
    ) -> dict:
        return await gate.search_documents(q, k)

    @app.get("/v1/documents/{document_id}", summary="One stored document record: fields, text, entities, source hash.")
    async def get_document(
        document_id: str = FastApiPath(..., pattern=DOCUMENT_ID, description="The record id (32 hex characters)."),
        _: Principal = invoke_key,
    ) -> dict:
        return await gate.document(document_id)

    @app.get("/v1/models", summary="Agents and pipelines that accept chat (OpenAI protocol).")
    async def list_models_openai(_: Principal = invoke_key) -> dict:
        return gate.models_view()

    @app.post(
        "/v1/chat/completions",
        summary="OpenAI-compatible chat completions; model = an agent or pipeline.",
        responses={200: {"content": {"text/event-stream": {}}, "description": "With stream=true: chat.completion.chunk events, then [DONE]."}},
    )
    async def chat_completions(request: Request, body: ChatBody, _: Principal = invoke_key) -> Any:
        invocation = gate.chat_invocation(request, body)
        version = gate.pick(request, body.model, invocation)
        if body.stream:
            return await chat_stream(gate, request, body.model, version, invocation)
        called = await gate.run(request, body.model, version, invocation)
        return chat_completion(request_id_of(request), body.model, called)

    @app.get("/v1/admin/stats", summary="Per agent and version: counts, errors, latency quantiles, labels.")
    async def stats(_: Principal = admin_key) -> dict:
        return await gate.stats()

    @app.put("/v1/admin/agents/{name}/traffic", summary="Change an agent's version weights at run time.")
    async def set_traffic(request: Request, name: str, body: TrafficBody, _: Principal = admin_key) -> dict:
        return await gate.set_traffic(request, name, body)

    @app.post("/v1/admin/keys", status_code=201, summary="Create an API key (shown once; stored hashed).")
    async def create_key(request: Request, body: KeyBody, _: Principal = admin_key) -> dict:
        return await gate.create_key(request, body)

    @app.get("/v1/admin/keys", summary="Every API key: id, name, role, scope, expiry, revocation (never the key or its hash).")
    async def list_keys(_: Principal = admin_key) -> dict:
        return await gate.list_keys()

    @app.delete("/v1/admin/keys/{key_id}", summary="Revoke an API key (every replica refuses it within auth.key_refresh_s).")
    async def revoke_key(request: Request, key_id: str = FastApiPath(..., pattern=KEY_ID), _: Principal = admin_key) -> dict:
        return await gate.revoke_key(request, key_id)

    @app.get("/v1/admin/models", summary="Registered models with their versions and aliases.")
    async def list_models(_: Principal = admin_key) -> dict:
        return await gate.models()

    @app.get("/v1/admin/models/{name}", summary="One model: aliases and every version's manifest.")
    async def show_model(
        name: str = FastApiPath(..., pattern=f"^{MODEL_NAME_PATTERN}$", description="The model's registry name."),
        _: Principal = admin_key,
    ) -> dict:
        return await gate.models(name)

    audit_max = gate.config.limits.audit_query_max

    @app.get("/v1/admin/audit", summary="Audit records, newest last.")
    async def audit(
        since: Instant | None = Query(None, description="Records at or after it: an RFC 3339 date-time, an ISO 8601 date-time without an offset (UTC), a date or Unix epoch seconds."),
        agent: str | None = Query(None, max_length=64, description="Only this agent's records."),
        limit: int = Query(min(100, audit_max), ge=1, le=audit_max, description="Most records to return (newest); at most limits.audit_query_max."),
        _: Principal = admin_key,
    ) -> dict:
        return await gate.audit(since, agent, limit)

    app.include_router(review_router(gate, require))
    app.include_router(lifecycle_router(gate, require))

    @app.get("/metrics", summary="Prometheus metrics.", responses={200: {"content": {"text/plain": {}}}})
    async def metrics(request: Request) -> Response:
        if not gate.config.auth.anonymous_metrics:
            await gate.authorize(request, "admin")
        payload = await gate.prometheus()
        return Response(payload, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


async def text_or_document(gate: Gateway, request: Request):
    """An agent's or pipeline's input: a document (multipart, or JSON with document_b64) or a text body."""
    limits = gate.config.limits.documents
    if is_multipart(request):
        document, fields = await read_document_request(request, DocumentFields, limits)
        return gate.document_invocation(request, document, fields, fields.options)
    payload = await json_object(request)
    if "document_b64" in payload:
        document, fields = document_from_payload(payload, DocumentFields, limits)
        return gate.document_invocation(request, document, fields, fields.options)
    return gate.invocation(request, validated(InvokeBody, payload))


def request_body_doc(json_models: list[type[BaseModel]], form_model: type[BaseModel]) -> dict:
    """OpenAPI for a body read by hand: JSON (one of the models) or multipart, a file part and
    the form model's fields as parts (uploads.JSON_PARTS as JSON text, the others as plain text)."""
    schemas = [model.model_json_schema() for model in json_models]
    json_schema = schemas[0] if len(schemas) == 1 else {"oneOf": schemas}
    form = form_model.model_json_schema()
    properties = {"file": {"type": "string", "format": "binary", "description": f"The document: {', '.join(SUPPORTED)} (415 for any other type)."}}
    encoding = {"file": {"contentType": ", ".join(SUPPORTED)}}
    for name, spec in form["properties"].items():
        if name in JSON_PARTS:
            properties[name], encoding[name] = spec, {"contentType": "application/json"}
        else:
            # A part is text or absent: an optional field's null has no form.
            properties[name] = {**openapi.value_branch(spec), "description": spec.get("description", "")}
    # An unknown part is refused like an unknown JSON key (the form model forbids extras).
    form_schema = {"type": "object", "required": ["file"], "properties": properties, "additionalProperties": False}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_schema},
                "multipart/form-data": {"schema": form_schema, "encoding": encoding},
            },
        }
    }


async def answer(gate: Gateway, request: Request, agent: str, invocation, response: dict, started: float, version: str | None = None) -> Any:
    """Run the chosen agent (or pipeline) version and answer: SSE when the request streams."""
    version = version or response["version"]
    if invocation.stream:
        return await stream_response(gate, request, agent, version, invocation, response, started)
    called = await gate.run(request, agent, version, invocation)
    return finish(with_result(response, called), started)


def finish(response: dict, started: float) -> dict:
    response["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return response


def with_result(response: dict, called: Called) -> dict:
    response["result"] = called.result.output
    if called.result.trace is not None:
        response["trace"] = called.result.trace
    return response


async def opened(gate: Gateway, request: Request, agent: str, version: str, invocation) -> tuple[AsyncIterator, Any]:
    """The call's stream and its first item. The HTTP status is committed only after that item:
    an agent that fails before its first chunk gets a plain error response with its status."""
    items = gate.stream(request, agent, version, invocation).__aiter__()
    first = await items.__anext__()
    if isinstance(first, Called) and not first.ok:
        raise first.error
    return items, first


async def stream_response(
    gate: Gateway, request: Request, agent: str, version: str, invocation, response: dict, started: float
) -> Response:
    """SSE: ``chunk`` events, then one ``result`` (the whole body) or ``error`` event."""
    items, first = await opened(gate, request, agent, version, invocation)

    async def events() -> AsyncIterator[bytes]:
        item = first
        while True:
            if isinstance(item, Chunk):
                yield sse("chunk", {"text": item.text})
            elif item.ok:
                yield sse("result", finish(with_result(dict(response), item), started))
                return
            else:
                yield sse("error", {"error": {**item.error.as_dict(), "request_id": response["request_id"]}})
                return
            item = await items.__anext__()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "stop": "stop", "max_tokens": "length", "length": "length"}


def chat_content(called: Called) -> str:
    output = called.result.output
    if isinstance(output, dict) and isinstance(output.get("text"), str):
        return output["text"]
    return json.dumps(output, ensure_ascii=False)


def chat_usage(called: Called) -> dict:
    usage = called.result.usage or (called.result.output.get("usage") if isinstance(called.result.output, dict) else None) or {}
    prompt, completion = int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(called: Called) -> str:
    output = called.result.output
    stop = output.get("stop_reason") if isinstance(output, dict) else None
    return _FINISH.get(stop, "stop")


def chat_completion(request_id: str, model: str, called: Called) -> dict:
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": chat_content(called)}, "finish_reason": finish_reason(called)}
        ],
        "usage": chat_usage(called),
    }


def _chunk(request_id: str, model: str, delta: dict, reason: str | None = None, usage: dict | None = None) -> bytes:
    body = {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
    }
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


async def chat_stream(gate: Gateway, request: Request, model: str, version: str, invocation) -> Response:
    """The OpenAI streaming protocol: a role delta, content deltas, a closing chunk with the
    finish reason and usage, then ``data: [DONE]``; a failure after the start is an error chunk."""
    request_id = request_id_of(request)
    items, first = await opened(gate, request, model, version, invocation)

    async def events() -> AsyncIterator[bytes]:
        yield _chunk(request_id, model, {"role": "assistant", "content": ""})
        item, streamed = first, False
        while True:
            if isinstance(item, Chunk):
                streamed = True
                yield _chunk(request_id, model, {"content": item.text})
            elif item.ok:
                if not streamed:
                    yield _chunk(request_id, model, {"content": chat_content(item)})
                yield _chunk(request_id, model, {}, finish_reason(item), chat_usage(item))
                break
            else:
                error = {**item.error.as_dict(), "request_id": request_id}
                yield f"data: {json.dumps({'error': error})}\n\n".encode()
                break
            item = await items.__anext__()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def allowed_methods(app: FastAPI, request: Request) -> str:
    """Every method some route takes on this path: Starlette's own 405 names only the first
    route's, where a path has one route per method."""
    methods = {
        method
        for route in app.router.routes
        if getattr(route, "methods", None) and route.matches(request.scope)[0] != Match.NONE
        for method in route.methods
    }
    return ", ".join(sorted(methods))


async def _report_after(body: AsyncIterator[bytes], gate: Gateway, request: Request, status: int, started: float, wall_start: float):
    """A stream is reported when it ends, so the record has its outcome and full latency; its
    last part waits for the audit receipt, as a whole answer does."""
    last = None
    try:
        async for part in body:
            if last is not None:
                yield last
            last = part
    finally:
        receipt = gate.hand_over(request, status, started, wall_start)  # a client gone mid-stream too
    await gate.await_receipt(receipt, request)
    if last is not None:
        yield last


def admitted(admission: AdmissionGate | None, request: Request, timeout_s: float):
    """A slot of the replica's admission gate for a request that runs an agent (503 overloaded
    when refused), held until the handler returns (for a stream: until its first item)."""
    if admission is None or request.method != "POST" or not SHED.match(request.url.path):
        return nullcontext()
    return admission.slot(time.monotonic() + timeout_s)


def treat_body_as_json(request: Request) -> None:
    """Every body here is JSON: a client that forgot the header (curl -d sends a form type)
    is read as JSON rather than told its body is not an object."""
    content_type = request.headers.get("content-type", "")
    if request.method in ("POST", "PUT") and "json" not in content_type and not content_type.startswith("multipart/"):
        headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
        request.scope["headers"] = [*headers, (b"content-type", b"application/json")]


class StreamedBodyLimit:
    """Counts a request body's bytes as they arrive and refuses it (413) once past its path's
    limit: a chunked body, which declares no Content-Length, is stopped early too."""

    def __init__(self, app: Any, limit_of: Any):
        self.app, self.limit_of = app, limit_of

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, seen = self.limit_of(scope["path"]), 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
            return message

        await self.app(scope, counted, send)


def check_body_size(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
