"""The front door: a FastAPI app inside a Serve deployment. It authenticates, validates,
routes, splits traffic between versions, calls the agent and reports the outcome off the hot path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from datetime import datetime
from typing import Any, Literal

import ray
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.ratelimit import RateLimiter
from actors.reporter import BufferedReporter
from actors.router import build_router
from actors.traffic import TrafficTable
from cluster.config import OrchestraConfig
from cluster.errors import (
    BatonError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from cluster.keys import KeyStore, Principal
from cluster.registry import ModelRegistry
from cluster.storage import Storage
from serve import control
from serve.agent import deployment_name
from serve.http_errors import SERVE_UNAVAILABLE, error_response, from_serve_error, to_baton_error

logger = logging.getLogger(__name__)
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
UNAUDITED = ("/healthz", "/metrics", "/docs", "/openapi.json", "/redoc")


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RouteBody(Body):
    text: StrictStr = Field(..., min_length=1, description="The request text (1 to limits.max_text_chars characters).")
    session_id: StrictStr | None = Field(None, min_length=1, max_length=128, description="Conversation key for follow-ups and sticky versions.")
    user_id: StrictStr | None = Field(None, min_length=1, max_length=128, description="Caller's user; sticky version key when no session.")
    agent: StrictStr | None = Field(None, min_length=1, max_length=64, description="Name an agent directly and skip the router.")
    dry_run: StrictBool = Field(False, description="Return the routing decision without invoking the agent.")
    options: dict[str, Any] = Field(default_factory=dict, description="Agent-specific options.")


class InvokeBody(Body):
    text: StrictStr = Field(..., min_length=1, description="The request text.")
    options: dict[str, Any] = Field(default_factory=dict, description="Agent-specific options.")


class TrafficBody(Body):
    weights: dict[str, StrictInt] = Field(..., min_length=1, description="Version -> percent; non-negative, summing to 100.")
    sticky: StrictBool | None = Field(None, description="Pin session/user keys to one version; unchanged if omitted.")


class KeyRateLimit(Body):
    requests_per_s: float = Field(..., gt=0, le=100_000, description="Sustained requests per second for this key.")
    burst: int = Field(..., ge=1, le=100_000, description="Requests this key may make at once.")


class KeyBody(Body):
    role: Literal["invoke", "admin"] = Field(..., description="What the key may do.")
    name: StrictStr = Field(..., min_length=1, max_length=64, description="Who or what the key is for.")
    rate_limit: KeyRateLimit | None = Field(None, description="This key's own rate limit; default: auth.rate_limit.")


app = FastAPI(
    title="baton",
    description="One front door to many specialist models, on Ray Serve.",
    version="0.1.0",
    docs_url="/docs",
)


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", None) or "unknown"


@app.exception_handler(BatonError)
@app.exception_handler(RequestValidationError)
@app.exception_handler(StarletteHTTPException)
async def _handle_error(request: Request, error: Exception) -> JSONResponse:
    baton_error = to_baton_error(error)
    request.state.error = f"{baton_error.code}: {baton_error.message}"
    return error_response(baton_error, request_id_of(request))


# Serve ships the FastAPI app to the replica by value, so ``app.state`` there is a copy;
# this module-level slot (one Gateway per replica process) is what routes read.
_gateway: list[Gateway] = []


def current_gateway() -> Gateway:
    return _gateway[0]


async def ingress() -> Gateway:
    """The route dependency; async so FastAPI does not hop to a thread pool for it."""
    return current_gateway()


def require(role: str):
    async def dependency(request: Request, gate=Depends(ingress)) -> Principal:
        return gate.authorize(request, role)

    return dependency


class Gateway:
    """The ingress replica's state; wrapped as the ``Ingress`` deployment at the end of the
    module because Serve captures the FastAPI app (its routes) when ``serve.ingress`` runs.
    """

    def __init__(self, config: dict, storage_uri: str, agents: dict[str, dict[str, DeploymentHandle]]):
        self.config = OrchestraConfig.model_validate(config)
        self.storage_uri = storage_uri
        self.handles = agents
        self.keys = KeyStore(Storage(storage_uri), refresh_s=self.config.auth.key_cache_s)
        self.keys.reload()
        self.registry = ModelRegistry(Storage(storage_uri))
        self.limiter = RateLimiter(self.config.auth.rate_limit.requests_per_s, self.config.auth.rate_limit.burst)
        self.router = build_router(self.config, storage_uri, self.config.ingress.resources.torch_threads)
        batching = self.config.router.batching
        self._score_batch.set_max_batch_size(batching.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        self.actors = control.control_actors(self.config, storage_uri)
        self.traffic = TrafficTable(control.initial_traffic(self.config))
        self.traffic_fingerprint = control.traffic_fingerprint(self.config)
        self._adopt_traffic(
            ray.get(self.actors[control.TRAFFIC].adopt.remote(control.initial_traffic(self.config), self.traffic_fingerprint))
        )
        reporting = self.config.reporter
        kwargs = dict(max_batch=reporting.max_batch, interval_s=reporting.interval_s, max_buffer=reporting.max_buffer)
        self.monitor_reporter = BufferedReporter(self.actors[control.MONITOR].record.remote, name="monitor", **kwargs)
        self.audit_reporter = BufferedReporter(self.actors[control.AUDIT].write.remote, name="audit", **kwargs)
        self._background: list[asyncio.Task] = []
        self._statuses: tuple[float, dict[str, str]] = (float("-inf"), {})
        _gateway[:] = [self]

    # -- life cycle -------------------------------------------------------------------

    def _ensure_background(self) -> None:
        """Start reporters and the traffic follower on the replica's event loop, once."""
        if self._background:
            return
        self.monitor_reporter.start()
        self.audit_reporter.start()
        self._background.append(asyncio.get_running_loop().create_task(self._follow_traffic()))

    async def _follow_traffic(self) -> None:
        """Adopt weight changes made through other ingress replicas."""
        while True:
            await asyncio.sleep(1.0)
            try:
                self._adopt_traffic(await self.actors[control.TRAFFIC].snapshot.remote())
            except Exception:  # the actor restarts by itself; keep the last known weights
                logger.warning("traffic table unreachable; keeping generation %s", self.traffic.generation)

    def _adopt_traffic(self, snapshot: dict) -> None:
        """Only a table for this deploy's versions: during a rollout the old replicas keep theirs."""
        if snapshot["fingerprint"] == self.traffic_fingerprint:
            self.traffic.load(snapshot)

    def check_health(self) -> None:
        if self.monitor_reporter.dropped or self.audit_reporter.dropped:
            logger.warning(
                "reporters dropped records: monitor=%s audit=%s", self.monitor_reporter.dropped, self.audit_reporter.dropped
            )

    # -- auth -------------------------------------------------------------------------

    def authorize(self, request: Request, role: str) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        principal = self.keys.verify(key.strip())
        if principal is None:
            raise Unauthorized("unknown API key")
        request.state.principal = principal.key_id
        if not principal.allows(role):
            raise Forbidden(f"this key has role {principal.role!r}; the endpoint needs {role!r}")
        wait_s = self.limiter.acquire(principal.key_id, principal.rate_per_s, principal.burst)
        if wait_s > 0:
            raise RateLimited("rate limit exceeded for this key", retry_after_s=wait_s)
        return principal

    # -- request path -----------------------------------------------------------------

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _score_batch(self, texts: list[str]) -> list:
        return list(await asyncio.to_thread(self.router.scores, texts))

    def check_text(self, text: str) -> None:
        limit = self.config.limits.max_text_chars
        if len(text) > limit:
            raise ValidationFailed(f"text: must be at most {limit} characters, got {len(text)}")

    def check_options(self, options: dict) -> None:
        size = len(json.dumps(options))
        if size > self.config.limits.max_options_bytes:
            raise ValidationFailed(f"options: must be at most {self.config.limits.max_options_bytes} bytes as JSON, got {size}")

    async def route(self, request: Request, body: RouteBody) -> dict:
        self.check_text(body.text)
        self.check_options(body.options)
        scores = None if body.agent is not None else (await self._score_batch(body.text))
        decision = self.router.decide(body.text, scores=scores, agent=body.agent, session_id=body.session_id)
        note(request, routed_by=decision.routed_by, confidence=decision.confidence, agent=decision.agent)
        response = {"request_id": request_id_of(request), **decision.as_dict(), "version": None, "result": None}
        if decision.agent is not None:
            version = self.traffic.pick(decision.agent, body.session_id or body.user_id)
            note(request, version=version)
            response["version"] = version
            if not body.dry_run:
                response["result"] = await self.call_agent(request, decision.agent, version, body.text, body.options)
        return response

    async def invoke(self, request: Request, name: str, body: InvokeBody) -> dict:
        self.check_text(body.text)
        self.check_options(body.options)
        if name not in self.handles:
            raise NotFound(f"agent {name!r} does not exist (agents: {sorted(self.handles)})")
        version = self.traffic.pick(name)
        note(request, agent=name, version=version, routed_by="direct")
        result = await self.call_agent(request, name, version, body.text, body.options)
        return {"request_id": request_id_of(request), "agent": name, "version": version, "result": result}

    async def call_agent(self, request: Request, agent: str, version: str, text: str, options: dict) -> dict:
        handle = self.handles[agent][version]
        try:
            result = await asyncio.wait_for(
                handle.predict.remote(text, options), timeout=self.config.limits.agent_timeout_s
            )
        except SERVE_UNAVAILABLE as error:
            # Serve installs its own plain-text handlers for these; answer in our shape first.
            raise from_serve_error(error) from None
        except asyncio.TimeoutError:
            raise Unavailable(
                f"agent {agent!r} {version} did not answer within {self.config.limits.agent_timeout_s}s",
                retry_after_s=5,
            ) from None
        if isinstance(result, dict) and "__error__" in result:
            raise ValidationFailed(result["__error__"]["message"])
        note(request, output=result, label=result.get("label") or result.get("language"))
        return result

    # -- operations -------------------------------------------------------------------

    async def agents_view(self) -> dict:
        # Serve's status is a controller round trip: refresh it at most every 2 s.
        if time.monotonic() - self._statuses[0] > 2.0:
            self._statuses = (time.monotonic(), await asyncio.to_thread(deployment_statuses))
        statuses = self._statuses[1]
        agents = []
        for agent in self.config.agents:
            weights = self.traffic.weights(agent.name)
            versions = [
                {"version": v.version, "weight": weights[v.version], "status": statuses.get(deployment_name(agent.name, v.version), "unknown")}
                for v in agent.versions
            ]
            agents.append({"name": agent.name, "kind": agent.kind, "description": agent.description, "versions": versions})
        return {"agents": agents}

    async def set_traffic(self, request: Request, name: str, body: TrafficBody) -> dict:
        change = await self.actors[control.TRAFFIC].set_weights.remote(name, body.weights, body.sticky)
        self._adopt_traffic(change["snapshot"])
        note(request, agent=name, endpoint="admin.traffic.set", output={"before": change["before"], "after": change["after"]})
        return {"agent": name, **change["after"]}

    def create_key(self, request: Request, body: KeyBody) -> dict:
        limit = body.rate_limit
        key, principal = self.keys.create(
            body.role, body.name, rate_per_s=limit.requests_per_s if limit else None, burst=limit.burst if limit else None
        )
        after = {"id": principal.key_id, "name": principal.name, "role": principal.role}
        note(request, endpoint="admin.keys.create", output={"before": None, "after": after})
        return {"key": key, "id": principal.key_id, "role": principal.role, "name": principal.name}

    async def models(self, name: str | None = None) -> dict:
        if name is None:
            return {"models": await asyncio.to_thread(self.registry.list_models)}
        manifests = await asyncio.to_thread(self.registry.versions, name)
        if not manifests:
            raise NotFound(f"model {name!r} is not in the registry")
        aliases = await asyncio.to_thread(self.registry.aliases, name)
        return {"name": name, "aliases": aliases, "versions": [m.model_dump(mode="json") for m in manifests]}

    async def audit(self, since: datetime | None, agent: str | None, limit: int) -> dict:
        if limit > self.config.limits.audit_query_max:
            raise ValidationFailed(f"limit: must be at most {self.config.limits.audit_query_max}, got {limit}")
        records = await self.actors[control.AUDIT].query.remote(since=since, agent=agent, limit=limit)
        return {"records": records}

    # -- reporting --------------------------------------------------------------------

    def report(self, request: Request, status: int, started: float, wall_start: float) -> None:
        state = request.state
        latency_ms = (time.perf_counter() - started) * 1000
        get = lambda name: getattr(state, name, None)  # noqa: E731
        self.audit_reporter.add(
            {
                "request_id": get("request_id"),
                "ts": wall_start,
                "principal": get("principal"),
                "endpoint": get("endpoint") or f"{request.method} {request.url.path}",
                "agent": get("agent"),
                "version": get("version"),
                "routed_by": get("routed_by"),
                "confidence": get("confidence"),
                "status_code": status,
                "latency_ms": latency_ms,
                "text": get("text"),
                "output": get("output"),
                "error": get("error"),
            }
        )
        self.monitor_reporter.add(
            {
                "ts": wall_start,
                "agent": get("agent"),
                "version": get("version"),
                "status": status,
                "latency_ms": latency_ms,
                "routed_by": get("routed_by"),
                "label": get("label"),
            }
        )


SERVE_STATUS = {"HEALTHY": "ready", "UPSCALING": "ready", "DOWNSCALING": "ready", "UPDATING": "updating", "UNHEALTHY": "unhealthy", "DEPLOY_FAILED": "failed"}


def deployment_statuses() -> dict[str, str]:
    """Serve's view of every deployment in this application, in API words."""
    application = serve.status().applications.get(serve.get_replica_context().app_name)
    if application is None:
        return {}
    return {name: SERVE_STATUS.get(d.status.value, "unknown") for name, d in application.deployments.items()}


def note(request: Request, **fields: Any) -> None:
    """Remember facts about this request for its audit record and monitor outcome."""
    for name, value in fields.items():
        setattr(request.state, name, value)


# -- middleware: request id, body limit, outcome reporting ------------------------------


@app.middleware("http")
async def _request_envelope(request: Request, call_next) -> Response:
    gate = current_gateway()
    gate._ensure_background()
    started, wall_start = time.perf_counter(), time.time()
    incoming = request.headers.get("x-request-id", "")
    request.state.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
    try:
        check_body_size(request, gate.config.limits.max_body_bytes)
        treat_body_as_json(request)
        response = await call_next(request)
    except Exception as error:  # includes errors raised while the body streams in
        baton_error = to_baton_error(error)
        request.state.error = f"{baton_error.code}: {baton_error.message}"
        response = error_response(baton_error, request.state.request_id)
    if not incoming:
        # Behind the Serve proxy the header always arrives (and is echoed by the proxy).
        response.headers["X-Request-ID"] = request.state.request_id
    if not request.url.path.startswith(UNAUDITED):
        gate.report(request, response.status_code, started, wall_start)
    return response


def treat_body_as_json(request: Request) -> None:
    """Every body here is JSON: a client that forgot the header (curl -d sends a form type)
    is read as JSON rather than told its body is not an object."""
    content_type = request.headers.get("content-type", "")
    if request.method in ("POST", "PUT") and "json" not in content_type and not content_type.startswith("multipart/"):
        headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
        request.scope["headers"] = [*headers, (b"content-type", b"application/json")]


def check_body_size(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")


# -- endpoints -------------------------------------------------------------------------


@app.get("/healthz", summary="Liveness: 200 once the application can serve.")
async def healthz() -> dict:
    return {"status": "ok"}


@app.get("/v1/agents", summary="The agents, their kinds and version weights.")
async def list_agents(_: Principal = Depends(require("invoke")), gate=Depends(ingress)) -> dict:
    return await gate.agents_view()


@app.post("/v1/route", summary="Route a request to the right agent and run it.")
async def route(
    request: Request, body: RouteBody, _: Principal = Depends(require("invoke")), gate=Depends(ingress)
) -> dict:
    note(request, text=body.text)
    started = time.perf_counter()
    response = await gate.route(request, body)
    response["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return response


@app.post("/v1/agents/{name}/invoke", summary="Invoke one agent directly.")
async def invoke(
    request: Request, name: str, body: InvokeBody, _: Principal = Depends(require("invoke")), gate=Depends(ingress)
) -> dict:
    note(request, text=body.text)
    started = time.perf_counter()
    response = await gate.invoke(request, name, body)
    response["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return response


@app.get("/v1/admin/stats", summary="Per agent and version: counts, errors, latency quantiles, labels.")
async def stats(_: Principal = Depends(require("admin")), gate=Depends(ingress)) -> dict:
    return await gate.actors[control.MONITOR].stats.remote()


@app.put("/v1/admin/agents/{name}/traffic", summary="Change an agent's version weights at run time.")
async def set_traffic(
    request: Request, name: str, body: TrafficBody, _: Principal = Depends(require("admin")), gate=Depends(ingress)
) -> dict:
    return await gate.set_traffic(request, name, body)


@app.post("/v1/admin/keys", status_code=201, summary="Create an API key (shown once; stored hashed).")
async def create_key(
    request: Request, body: KeyBody, _: Principal = Depends(require("admin")), gate=Depends(ingress)
) -> dict:
    return gate.create_key(request, body)


@app.get("/v1/admin/models", summary="Registered models with their versions and aliases.")
async def list_models(_: Principal = Depends(require("admin")), gate=Depends(ingress)) -> dict:
    return await gate.models()


@app.get("/v1/admin/models/{name}", summary="One model: aliases and every version's manifest.")
async def show_model(name: str, _: Principal = Depends(require("admin")), gate=Depends(ingress)) -> dict:
    return await gate.models(name)


@app.get("/v1/admin/audit", summary="Audit records, newest last.")
async def audit(
    since: datetime | None = Query(None, description="ISO 8601; records at or after it."),
    agent: str | None = Query(None, max_length=64, description="Only this agent's records."),
    limit: int = Query(100, ge=1, description="Most records to return (newest)."),
    _: Principal = Depends(require("admin")),
    gate=Depends(ingress),
) -> dict:
    return await gate.audit(since, agent, limit)


@app.get("/metrics", summary="Prometheus metrics.")
async def metrics(request: Request, gate=Depends(ingress)) -> Response:
    if not gate.config.auth.anonymous_metrics:
        gate.authorize(request, "admin")
    payload = await gate.actors[control.MONITOR].prometheus.remote()
    return Response(payload, media_type="text/plain; version=0.0.4; charset=utf-8")


Ingress = serve.deployment(serve.ingress(app)(Gateway))
