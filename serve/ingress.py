"""The front door's logic (``Gateway``: auth, limits, routing policy, dispatch, sessions,
reporting) and the thin class-based Serve ingress that builds it once per replica and
serves the FastAPI app of ``serve.app`` over it. No module-global state.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import numpy as np
from fastapi import Request
from ray import serve
from ray.serve.handle import DeploymentHandle

from actors.audit import operator_record
from actors.batching import MicroBatcher
from actors.composition import LlmLead, Pipeline, Supervisor
from actors.dispatcher import Called, Dispatcher, Target
from actors.feedback import FeedbackStore, ReviewQueue, find_request
from actors.shadow import ShadowCopies
from actors.specialists.registry import SPECIALISTS
from actors.documents.store import DocumentStore
from actors.invocation import Chunk, Document, Invocation
from actors.ratelimit import LeasedLimiter, RateLimiter
from actors.reporter import BufferedReporter, ConfirmedReporter
from actors.router import RouteDecision, SemanticRouter, build_router, choose_from_segments, team_segments
from actors.routing import LlmRouter, RoutingPolicy, RuleSet
from actors.sessions import SessionLimits, SessionStore, open_session_store
from actors.traffic import TrafficTable
from cluster.config import OrchestraConfig
from cluster.errors import Forbidden, NotFound, RateLimited, Unauthorized, ValidationFailed
from cluster.keys import KeyStore, Principal, hash_key
from cluster.registry import ModelRegistry
from cluster.storage import Storage
from serve import control as control_module
from serve.control import ControlPlane
from serve.agent import deployment_name
from serve.schemas import ChatBody, DocumentFields, InvokeBody, KeyBody, RouteBody, TrafficBody
from serve.uploads import body_limit
from serve.lifecycle import lifecycle_metrics
from serve.targets import ServeTarget, serve_targets

logger = logging.getLogger(__name__)
# A schema-by-example query may be larger than an agent's options; this much more is allowed.
MAX_QUERY_BYTES = 65_536
# What an agent's Result.usage may declare that the monitor prices (cost per request).
USAGE_FIELDS = ("cpu_s", "gpu_s", "input_tokens", "output_tokens")


def note(request: Request, **fields: Any) -> None:
    """Remember facts about this request for its audit record and monitor outcome."""
    for name, value in fields.items():
        setattr(request.state, name, value)


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", None) or "unknown"


def check_unicode(fields: dict[str, Any]) -> None:
    """Refuse a lone surrogate anywhere in a request's fields (keys too): JSON lets a body
    escape one ("\\ud800"), but no UTF-8 encodes it, so it would fail wherever the text is
    encoded next (a tokenizer, the audit writer, the response) instead of here with a 422."""
    stack: list[tuple[str, Any]] = list(fields.items())
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            _check_text(path, value)
        elif isinstance(value, dict):
            for key, child in value.items():
                _check_text(f"{path} (a key)", str(key))
                stack.append((f"{path}.{key}", child))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{path}[{index}]", child) for index, child in enumerate(value))


def _check_text(path: str, text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        raise ValidationFailed(
            f"{path}: has a lone surrogate (\\u{code:04x} at character {error.start}); text must be valid Unicode"
        ) from None


def session_limits(config: OrchestraConfig) -> SessionLimits:
    s = config.router.session
    return SessionLimits(
        ttl_s=s.ttl_s, max_turns=s.max_turns, max_content_chars=s.max_turn_chars,
        max_sessions=s.max_sessions, purge_interval_s=s.purge_interval_s,
    )


class Gateway:
    """One ingress replica's state and request logic. Everything per request travels in
    the ``Invocation``; what lives here is shared by all requests of the replica."""

    def __init__(
        self,
        config: OrchestraConfig,
        *,
        keys: KeyStore,
        registry: ModelRegistry,
        router: SemanticRouter,
        sessions: SessionStore,
        control: ControlPlane,
        targets: dict[str, dict[str, Target]],
        documents: DocumentStore | None = None,
        replica: str = "local",
        statuses: Callable[[], dict[str, str]] = dict,
        connect: Callable[[str, str, dict], Target] | None = None,
    ):
        self.config, self.keys, self.registry, self.router = config, keys, registry, router
        self.documents = documents
        self.sessions, self.control, self.replica, self._read_statuses = sessions, control, replica, statuses
        limits = config.auth.rate_limit
        self.limiter = LeasedLimiter(
            functools.partial(control.call, control.limits, "take"), RateLimiter(limits.requests_per_s, limits.burst),
            lease_s=limits.lease_s, lease_ttl_s=limits.lease_ttl_s,
        )
        batching = config.router.batching
        self._scorer = MicroBatcher(router.scores, batching.max_batch_size, batching.batch_wait_timeout_s)
        self.traffic = TrafficTable(control_module.initial_traffic(config))
        self.traffic_fingerprint = control_module.traffic_fingerprint(config)
        reporting = config.reporter
        kwargs = dict(max_batch=reporting.max_batch, interval_s=reporting.interval_s, max_buffer=reporting.max_buffer)
        self.monitor_reporter = BufferedReporter(control.sink(control.monitor, "record"), name="monitor", **kwargs)
        self.audit_reporter = ConfirmedReporter(control.audit, name="audit", **{**kwargs, "max_batch": reporting.audit_max_batch})
        self.dispatcher = Dispatcher(targets, self.traffic, default_timeout_s=config.limits.agent_timeout_s)
        self.dispatcher.shadow = ShadowCopies(
            self.dispatcher.targets, self.traffic, self.monitor_reporter.add, max_in_flight=config.shadow.max_in_flight,
            text_agreement=config.shadow.text_agreement, timeout_s=config.limits.agent_timeout_s,
        )
        self.storage = registry.storage
        self.review = ReviewQueue(self.storage, {a.name: a.review for a in config.agents if a.review is not None})
        self.feedback_store = FeedbackStore(self.storage)
        self._configured = {a.name: {v.version for v in a.versions} for a in config.agents}
        self.version_models = {(a.name, v.version): v.model for a in config.agents for v in a.versions if v.model}
        self._connect = connect
        self.adopt_traffic(control.call_now(control.traffic, "adopt", control_module.initial_traffic(config), self.traffic_fingerprint))
        self._add_composites()
        llm = config.router.llm
        self.policy = RoutingPolicy(
            router,
            RuleSet(config.router.rules),
            self.score,
            llm=LlmRouter(llm, [a for a in config.agents if a.routable], self.dispatcher) if llm else None,
        )
        self._background: list[asyncio.Task] = []
        self._statuses: tuple[float, dict[str, str]] = (float("-inf"), {})

    @classmethod
    def for_replica(cls, config: dict, storage_uri: str, handles: dict[str, dict[str, DeploymentHandle]]) -> Gateway:
        """The Gateway of one Serve ingress replica: Ray actors, Serve handles, the shared stores."""
        settings = OrchestraConfig.model_validate(config)
        keys = KeyStore(Storage(storage_uri), refresh_s=settings.auth.key_refresh_s)
        keys.refresh()
        return cls(
            settings,
            keys=keys,
            registry=ModelRegistry(Storage(storage_uri)),
            router=build_router(settings, storage_uri, settings.ingress.resources.torch_threads),
            sessions=open_session_store(storage_uri, session_limits(settings)),
            control=ControlPlane.of_cluster(settings, storage_uri, serve.get_replica_context().app_name),
            targets=serve_targets(settings, handles),
            documents=DocumentStore(Storage(storage_uri)),
            replica=serve.get_replica_context().replica_id.unique_id,
            statuses=deployment_statuses,
            connect=functools.partial(connect_version, settings),
        )

    # -- wiring -----------------------------------------------------------------------

    def _add_composites(self) -> None:
        """Supervisors and pipelines are agents in this process that hold the dispatcher;
        their steps report to the monitor like any call."""
        steps = self.dispatcher.reporting_to(self._report_step)
        descriptions = {a.name: a.description for a in self.config.agents}
        for agent in self.config.agents:
            settings = agent.supervisor
            if settings is None:
                continue
            lead = LlmLead(settings.lead, descriptions, settings.max_tool_calls) if settings.policy == "llm" else None
            supervisor = Supervisor(
                agent.name, settings.team, steps, policy=settings.policy, max_agents=settings.max_agents,
                choose=self._team_chooser(settings.threshold), lead=lead,
            )
            self.dispatcher.targets[agent.name] = {v.version: supervisor for v in agent.versions}
        for pipeline in self.config.pipelines:
            self.dispatcher.targets[pipeline.name] = {"v1": Pipeline.of(pipeline, steps)}

    def _team_chooser(self, threshold: float | None):
        threshold = self.config.router.threshold if threshold is None else threshold

        async def choose(invocation: Invocation, team, k: int) -> list[str]:
            segments = team_segments(invocation.input_text)
            scores = np.stack(await asyncio.gather(*(self.score(segment) for segment in segments)))
            return choose_from_segments(self.router, scores, team, threshold, k)

        return choose

    def _report_step(self, called: Called) -> None:
        self.monitor_reporter.add(called.outcome())

    # -- life cycle -------------------------------------------------------------------

    def ensure_background(self) -> None:
        """Start reporters and the traffic follower on the replica's event loop, once."""
        if self._background:
            return
        self.monitor_reporter.start()
        self.audit_reporter.start()
        loop = asyncio.get_running_loop()
        self._background += [loop.create_task(self._follow_traffic()), loop.create_task(self._follow_keys())]

    async def _follow_keys(self) -> None:
        """Adopt key changes made elsewhere (revocations, new expiries) within ``auth.key_refresh_s``."""
        while True:
            await asyncio.sleep(self.keys.refresh_s)
            try:
                await asyncio.to_thread(self.keys.refresh)
            except Exception:  # storage hiccup: keep the keys known so far, try again next time
                logger.warning("key store unreadable; keeping the keys known so far", exc_info=True)

    async def _follow_traffic(self) -> None:
        """Adopt weight changes made through other ingress replicas."""
        while True:
            await asyncio.sleep(1.0)
            try:
                self.adopt_traffic(await self.control.call(self.control.traffic, "snapshot"))
            except Exception:  # the actor restarts by itself; keep the last known weights
                logger.warning("traffic table unreachable; keeping generation %s", self.traffic.generation)

    def adopt_traffic(self, snapshot: dict) -> None:
        """Only a table for this deploy's versions: during a rollout the old replicas keep theirs."""
        if snapshot["fingerprint"] == self.traffic_fingerprint:
            self.traffic.load(snapshot)
            self._follow_added_versions()

    def _follow_added_versions(self) -> None:
        """Connect to versions deployed at run time (rollout candidates); forget retired ones."""
        added = self.traffic.added()
        for agent, versions in added.items():
            targets = self.dispatcher.targets.get(agent)
            for version, location in versions.items():
                if targets is not None and version not in targets and self._connect is not None:
                    targets[version] = self._connect(agent, version, location)
                    self.version_models[agent, version] = location.get("model")
        for agent, targets in self.dispatcher.targets.items():
            configured = self._configured.get(agent)
            if configured is None:  # a pipeline: its one version is this process's
                continue
            for version in [v for v in targets if v not in configured and v not in added.get(agent, {})]:
                del targets[version]

    def check_health(self) -> None:
        if self.monitor_reporter.dropped or self.audit_reporter.dropped:
            logger.warning(
                "reporters dropped records: monitor=%s audit=%s", self.monitor_reporter.dropped, self.audit_reporter.dropped
            )

    # -- auth -------------------------------------------------------------------------

    async def authorize(self, request: Request, role: str) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        # A key this replica knows costs a dict lookup; another one a storage read, off the loop.
        principal = self.keys.cached(hash_key(key.strip())) or await asyncio.to_thread(self.keys.verify, key.strip())
        if principal is None:
            raise Unauthorized("unknown API key")
        if principal.revoked:
            raise Unauthorized("this API key was revoked")
        if principal.expired(time.time()):
            raise Unauthorized("this API key has expired")
        request.state.principal = principal.key_id
        request.state.key = principal
        if not principal.allows(role):
            raise Forbidden(f"this key has role {principal.role!r}; the endpoint needs {role!r}")
        wait_s = await self.limiter.acquire(principal.key_id, principal.rate_per_s, principal.burst)
        if wait_s > 0:
            raise RateLimited("rate limit exceeded for this key", retry_after_s=wait_s)
        return principal

    # -- request path -----------------------------------------------------------------

    async def score(self, text: str) -> np.ndarray:
        """The router's confidences for one text, batched with concurrent requests."""
        return await self._scorer.submit(text)

    def check_input(self, text: str, options: dict) -> None:
        limit = self.config.limits.max_text_chars
        if len(text) > limit:
            raise ValidationFailed(f"text: must be at most {limit} characters, got {len(text)}")
        size = len(json.dumps(options))
        if size > self.config.limits.max_options_bytes:
            raise ValidationFailed(f"options: must be at most {self.config.limits.max_options_bytes} bytes as JSON, got {size}")

    def document_invocation(self, request: Request, document: Document, fields: DocumentFields, options: dict) -> Invocation:
        """A document request as an Invocation; the audit keeps the document's hash, not its bytes."""
        check_unicode(fields.model_dump())
        size = len(json.dumps(options))
        if size > self.config.limits.max_options_bytes + MAX_QUERY_BYTES:
            raise ValidationFailed(f"options and query: must be at most {self.config.limits.max_options_bytes + MAX_QUERY_BYTES} bytes as JSON, got {size}")
        note(request, input_sha256=hashlib.sha256(document.data).hexdigest(), metadata=fields.metadata or None)
        return Invocation(
            document=document, options=options, session_id=fields.session_id, user_id=fields.user_id,
            request_id=request_id_of(request), deadline=time.time() + self.config.limits.documents.timeout_s,
            metadata=dict(fields.metadata),
        )

    def body_limit(self, path: str) -> int:
        """Document endpoints take a file as big as limits.documents allows; the rest take JSON."""
        if path == "/v1/extract" or path.startswith("/v1/pipelines/") or (path.startswith("/v1/agents/") and path.endswith("/invoke")):
            return body_limit(self.config.limits.documents, self.config.limits.max_body_bytes)
        return self.config.limits.max_body_bytes

    def invocation(self, request: Request, body: InvokeBody, **changes: Any) -> Invocation:
        check_unicode(body.model_dump())
        self.check_input(body.text, body.options)
        note(request, text=body.text, metadata=body.metadata or None)
        return Invocation(
            text=body.text, options=body.options, session_id=body.session_id, user_id=body.user_id,
            request_id=request_id_of(request), deadline=time.time() + self.config.limits.agent_timeout_s,
            metadata=dict(body.metadata), stream=body.stream, **changes,
        )

    async def decide(self, request: Request, body: RouteBody, invocation: Invocation) -> RouteDecision:
        session_agent = None
        if body.session_id is not None and body.agent is None:
            session_agent = await asyncio.to_thread(self.sessions.last_agent, body.user_id, body.session_id)
        decision = await self.policy.decide(invocation, agent=body.agent, session_agent=session_agent)
        note(request, routed_by=decision.routed_by, confidence=decision.confidence, agent=decision.agent)
        return decision

    async def with_history(self, invocation: Invocation, agent: str) -> Invocation:
        """An LLM agent gets its own earlier turns of this session."""
        if invocation.session_id is None or not self._is_llm(agent) or not self.config.router.session.history_turns:
            return invocation
        turns = await asyncio.to_thread(
            self.sessions.turns, invocation.user_id, invocation.session_id, agent, self.config.router.session.history_turns
        )
        return invocation.derive(history=tuple({"role": t["role"], "content": t["content"]} for t in turns))

    def _is_llm(self, agent: str) -> bool:
        settings = self.config.agent(agent)
        return settings is not None and any(settings.version_kind(v) == "llm" for v in settings.versions)

    async def remember(self, invocation: Invocation, called: Called) -> None:
        if invocation.session_id is None or not called.ok:
            return
        output = called.result.output
        answer = output.get("text") if isinstance(output, dict) and isinstance(output.get("text"), str) else json.dumps(output, ensure_ascii=False)
        # A document turn is kept as its type and size: the bytes stay in the document store.
        asked = invocation.input_text if invocation.document is None else f"[document: {invocation.document.media_type}, {len(invocation.document.data)} bytes]"
        turns = [{"role": "user", "content": asked}, {"role": "assistant", "content": answer}]
        await asyncio.to_thread(self.sessions.append, invocation.user_id, invocation.session_id, called.agent, turns)

    def pick(self, request: Request, agent: str, invocation: Invocation) -> str:
        self.check_scope(request, agent=agent)
        version = self.dispatcher.pick(agent, invocation)
        note(request, version=version)
        return version

    @staticmethod
    def check_scope(request: Request, agent: str | None = None, pipeline: str | None = None) -> None:
        """A scoped key reaches only its agents and pipelines (the one a request names or is routed to)."""
        principal: Principal | None = getattr(request.state, "key", None)
        if principal is None:
            return
        if agent is not None and not principal.reaches_agent(agent):
            raise Forbidden(f"this API key may not use agent {agent!r} (it may use: {sorted(principal.agents or ())})")
        if pipeline is not None and not principal.runs_pipeline(pipeline):
            raise Forbidden(f"this API key may not run pipeline {pipeline!r} (it may run: {sorted(principal.pipelines or ())})")

    @staticmethod
    def note_outcome(request: Request, called: Called) -> None:
        """A call's outcome for the request's audit record and monitor outcome."""
        result = called.result
        if result is None:
            return
        note(request, output=result.output, label=result.label, trace=result.trace, score=result.score,
             features=list(result.features) if result.features else None, usage=result.usage)

    def finished(self, request: Request, called: Called) -> None:
        """Note a call's outcome; raise its error for the error response."""
        self.note_outcome(request, called)
        if not called.ok:
            raise called.error

    async def run(self, request: Request, agent: str, version: str, invocation: Invocation) -> Called:
        invocation = await self.with_history(invocation, agent)
        called = await self.dispatcher.invoke(agent, invocation, version)
        self.finished(request, called)
        await self.remember(invocation, called)
        return called

    async def stream(self, request: Request, agent: str, version: str, invocation: Invocation) -> AsyncIterator[Chunk | Called]:
        """Chunks, then the Called; the session and the audit note happen at the end."""
        invocation = await self.with_history(invocation, agent)
        async for item in self.dispatcher.stream(agent, invocation, version):
            if isinstance(item, Called):
                # The response began as 200: a failure after the first chunk is recorded as its own status.
                self.note_outcome(request, item)
                if not item.ok:
                    note(request, error=f"{item.error.code}: {item.error.message}", status=item.error.status)
                await self.remember(invocation, item)
            yield item

    def known(self, name: str) -> None:
        if not self.dispatcher.knows(name):
            raise NotFound(f"agent {name!r} does not exist (agents: {sorted(self.dispatcher.targets)})")

    def pipeline_names(self) -> list[str]:
        return [p.name for p in self.config.pipelines]

    def chat_invocation(self, request: Request, body: ChatBody) -> Invocation:
        if not self.dispatcher.knows(body.model):
            raise NotFound(f"model {body.model!r} is not an agent or pipeline (see GET /v1/models)")
        check_unicode(body.model_dump())
        messages = tuple(m.model_dump(exclude_none=True) for m in body.messages)
        options = {}
        if self._is_llm(body.model):
            options = {k: v for k, v in (("max_tokens", body.max_tokens), ("temperature", body.temperature)) if v is not None}
        invocation = Invocation(
            messages=messages, options=options, user_id=body.user, request_id=request_id_of(request),
            deadline=time.time() + self.config.limits.agent_timeout_s, stream=body.stream,
        )
        text = invocation.input_text
        self.check_input(text or "-", options)
        if not text:
            raise ValidationFailed("messages: no message has text content")
        note(request, text=text, agent=body.model, routed_by="direct")
        return invocation if self._is_llm(body.model) else invocation.derive(text=text)

    # -- operations -------------------------------------------------------------------

    async def agents_view(self) -> dict:
        # Serve's status is a controller round trip: refresh it at most every 2 s.
        if time.monotonic() - self._statuses[0] > 2.0:
            self._statuses = (time.monotonic(), await asyncio.to_thread(self._read_statuses))
        statuses = self._statuses[1]
        agents = []
        for agent in self.config.agents:
            weights = self.traffic.weights(agent.name)
            added = self.traffic.added(agent.name).get(agent.name, {})
            versions = [
                {
                    "version": version,
                    "weight": weight,
                    "status": self._version_status(agent, version, added, statuses),
                }
                for version, weight in weights.items()
            ]
            entry = {"name": agent.name, "kind": agent.kind, "description": agent.description, "versions": versions}
            if agent.supervisor is not None:
                entry["team"] = list(agent.supervisor.team)
                entry["policy"] = agent.supervisor.policy
            agents.append(entry)
        return {"agents": agents}

    def _version_status(self, agent, version: str, added: dict, statuses: dict[str, str]) -> str:
        if agent.composite:
            return "ready"
        if version in added:  # a rollout candidate, served by an application of its own
            return "ready" if version in self.dispatcher.targets.get(agent.name, {}) else "connecting"
        return statuses.get(deployment_name(agent.name, version), "unknown")

    def pipelines_view(self) -> dict:
        return {
            "pipelines": [
                {"name": p.name, "description": p.description, "mode": p.mode,
                 "steps": [{"name": s.name, "agent": s.agent} for s in p.steps]}
                for p in self.config.pipelines
            ]
        }

    def models_view(self) -> dict:
        names = [*(a.name for a in self.config.agents), *self.pipeline_names()]
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "baton"} for name in names]}

    @staticmethod
    def note_action(request: Request, action: str, *, agent: str | None = None, version: str | None = None, before: Any = None, after: Any = None) -> None:
        """An operator action made over HTTP: its audit record is this request's, built by
        ``operator_record`` like the CLI's and the controllers' (see ``report``)."""
        note(request, action={"action": action, "agent": agent, "version": version, "before": before, "after": after})

    async def set_traffic(self, request: Request, name: str, body: TrafficBody) -> dict:
        change = await self.control.call(self.control.traffic, "set_weights", name, body.weights, body.sticky)
        self.adopt_traffic(change["snapshot"])
        self.note_action(request, "admin.traffic.set", agent=name, before=change["before"], after=change["after"])
        return {"agent": name, **change["after"]}

    # -- ground truth: feedback and review (serve/review.py's port) ---------------------

    async def feedback(self, request: Request, body: dict, principal: Principal) -> dict:
        audited = await asyncio.to_thread(find_request, self.storage, body["request_id"])
        outcome = await asyncio.to_thread(self.feedback_store.add, audited, body, principal.key_id)
        if outcome["correct"] is not None or outcome["reward"] is not None:  # a label the answer did not declare judges nothing
            self.monitor_reporter.add(outcome)
        # The audit trail keeps the feedback too, so a rebuilt monitor or a report can find it.
        note(request, endpoint="feedback", output=outcome)
        return outcome

    async def review_items(self, request: Request, agent: str | None, limit: int, principal: Principal) -> list[dict]:
        return await asyncio.to_thread(self.review.pending, agent, limit, principal.role == "admin")

    async def answer_review(self, request: Request, request_id: str, label: str, principal: Principal) -> dict:
        answered = await asyncio.to_thread(self.review.answer, request_id, label, principal.key_id)
        self.note_action(
            request, "review.answer", agent=answered["agent"], version=answered["version"],
            before={"state": "pending", "label": answered["model_label"]}, after={"state": "answered", "label": answered["label"]},
        )
        self.monitor_reporter.add(
            {"kind": "feedback", "ts": time.time(), "agent": answered["agent"], "version": answered["version"],
             "request_id": request_id, "correct": answered["label"] == answered["model_label"], "reward": None}
        )
        return answered

    async def version_windows(self, agent: str, window_s: float) -> dict[str, dict]:
        """Each version's monitor window over the last ``window_s`` seconds."""
        since = time.time() - window_s
        versions = list(self.traffic.weights(agent)) if agent in self._configured else list(self.dispatcher.targets.get(agent, {}))
        windows = await asyncio.gather(*(self.control.call(self.control.monitor, "window", agent, v, since) for v in versions))
        return dict(zip(versions, windows))

    async def create_key(self, request: Request, body: KeyBody) -> dict:
        unknown = self.config.unknown_scope(body.agents, body.pipelines)
        if unknown:
            raise ValidationFailed(f"agents/pipelines: {unknown} are not in this orchestra")
        limit = body.rate_limit
        key, principal = await asyncio.to_thread(
            self.keys.create, body.role, body.name, rate_per_s=limit.requests_per_s if limit else None,
            burst=limit.burst if limit else None, expires_at=body.expires_at, agents=body.agents, pipelines=body.pipelines,
        )
        after = {"id": principal.key_id, "name": principal.name, "role": principal.role}
        self.note_action(request, "admin.keys.create", after=after)
        return {"key": key, "id": principal.key_id, "role": principal.role, "name": principal.name}

    async def list_keys(self) -> dict:
        return {"keys": await asyncio.to_thread(self.keys.list)}

    async def revoke_key(self, request: Request, key_id: str) -> dict:
        revoked = await asyncio.to_thread(self.keys.revoke, key_id)
        self.note_action(request, "admin.keys.revoke", after={"id": key_id, "revoked_at": revoked["revoked_at"]})
        return revoked

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
        records = await self.control.call(self.control.audit, "query", since=since, agent=agent, limit=limit)
        return {"records": records}

    async def search_documents(self, query: str, k: int) -> dict:
        store = self._document_store()
        vector = (await asyncio.to_thread(self.router.embed, [query]))[0]
        return {"query": query, "results": await asyncio.to_thread(store.search, vector, k, query)}

    async def document(self, document_id: str) -> dict:
        return await asyncio.to_thread(self._document_store().get, document_id)

    def _document_store(self) -> DocumentStore:
        if self.documents is None:
            raise NotFound("this deployment keeps no document store")
        return self.documents

    async def stats(self) -> dict:
        return await self.control.call(self.control.monitor, "stats")

    async def prometheus(self) -> bytes:
        monitor = await self.control.call(self.control.monitor, "prometheus")
        rollouts = await self.control.call(self.control.rollouts, "list") if self.control.rollouts is not None else []
        weights = {a.name: self.traffic.weights(a.name) for a in self.config.agents}
        return monitor + lifecycle_metrics(weights, rollouts)

    # -- reporting --------------------------------------------------------------------

    async def report(self, request: Request, status: int, started: float, wall_start: float) -> None:
        """Hand the request's audit record and monitor outcome over, and wait for the receipt."""
        await self.await_receipt(self.hand_over(request, status, started, wall_start), request)

    async def await_receipt(self, receipt: asyncio.Future, request: Request) -> None:
        """Returns once an audit writer holds the record, so no answered request lives in this
        process alone; or after ``audit.receipt_timeout_s``, the record still queued here."""
        timeout_s = self.config.audit.receipt_timeout_s
        request_id = getattr(request.state, "request_id", None)
        try:
            await asyncio.wait_for(asyncio.shield(receipt), timeout_s)
        except TimeoutError:
            logger.warning("no audit writer took request %s within %.1f s; answering, the record stays queued", request_id, timeout_s)
        except RuntimeError:
            logger.error("audit record of request %s dropped: the replica's audit buffer is full", request_id)

    def hand_over(self, request: Request, status: int, started: float, wall_start: float) -> asyncio.Future:
        """Queue the request's audit record and monitor outcome; returns the audit receipt."""
        state = request.state
        latency_ms = (time.perf_counter() - started) * 1000
        get = lambda name: getattr(state, name, None)  # noqa: E731
        status = get("status") or status  # a stream's status is its outcome, not the 200 it began with
        agent, version, usage = get("agent"), get("version"), get("usage") or {}
        record = {
            "request_id": get("request_id"),
            "ts": wall_start,
            "principal": get("principal"),
            "endpoint": get("endpoint") or f"{request.method} {request.url.path}",
            "agent": agent,
            "version": version,
            "routed_by": get("routed_by"),
            "confidence": get("confidence"),
            "status_code": status,
            "latency_ms": latency_ms,
            "text": get("text"),
            "input_sha256": get("input_sha256"),
            "output": get("output"),
            "error": get("error"),
            "metadata": get("metadata"),
            "trace": get("trace"),
        }
        action = get("action")
        if action is not None:
            record.update(operator_record(
                record["principal"] or "anonymous", action["action"], before=action["before"], after=action["after"], status=status,
                agent=action["agent"], version=action["version"], error=record["error"], request_id=record["request_id"], ts=wall_start,
            ))
        if action is not None or get("endpoint") == "feedback":
            return self.audit_reporter.add(record)  # an operator action or feedback: no agent call to count
        if status == 200 and agent is not None and record["text"] and self.review.wants(agent, get("score")):
            # The audit actor queues it for a person, with the input redacted there, off this path.
            record["review"] = {"label": get("label"), "confidence": get("score")}
        receipt = self.audit_reporter.add(record)
        self.monitor_reporter.add(
            {
                "ts": wall_start,
                "agent": agent,
                "version": version,
                "status": status,
                "latency_ms": latency_ms,
                "routed_by": get("routed_by"),
                "label": get("label"),
                "confidence": get("score"),
                "features": get("features"),
                "model": self.version_models.get((agent, version)),
                "request_id": get("request_id"),
                **{name: usage[name] for name in USAGE_FIELDS if name in usage},
            }
        )
        return receipt


def connect_version(config: OrchestraConfig, agent: str, version: str, location: dict) -> Target:
    """A dispatcher target for a version deployed at run time, from where the traffic table says it runs."""
    settings = config.agent(agent)
    kind = settings.version_kind(max(settings.versions, key=lambda v: v.weight))
    handle = serve.get_deployment_handle(location["deployment"], app_name=location["app"])
    return ServeTarget(handle, SPECIALISTS[kind].streams, f"agent {agent} {version}")


SERVE_STATUS = {"HEALTHY": "ready", "UPSCALING": "ready", "DOWNSCALING": "ready", "UPDATING": "updating", "UNHEALTHY": "unhealthy", "DEPLOY_FAILED": "failed"}


def deployment_statuses() -> dict[str, str]:
    """Serve's view of every deployment in this application, in API words."""
    application = serve.status().applications.get(serve.get_replica_context().app_name)
    if application is None:
        return {}
    return {name: SERVE_STATUS.get(d.status.value, "unknown") for name, d in application.deployments.items()}


@serve.ingress()
class Ingress:
    """The Serve ingress: one Gateway per replica, and the app built over it at replica start."""

    def __init__(self, config: dict, storage_uri: str, agents: dict[str, dict[str, DeploymentHandle]]):
        self.gateway = Gateway.for_replica(config, storage_uri, agents)

    def __serve_build_asgi_app__(self):
        from serve.app import create_app

        return create_app(self.gateway)

    def check_health(self) -> None:
        self.gateway.check_health()


Ingress = serve.deployment(Ingress)
