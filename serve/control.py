"""The named Ray actors shared by every ingress replica: monitor, audit writer, the traffic
table and the rate limits. Each wraps a plain class from ``actors/`` and restarts on failure; the monitor
and the audit writer may be several shards, which the ingress reaches as one.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import itertools
import json
import logging
import os
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import ray
from ray import serve

from actors.audit import AuditWriter, read_audit
from actors.monitor import Monitor, parse_outcome
from actors.ratelimit import RateLimiter
from actors.traffic import TrafficTable
from cluster.config import CostSettings, DriftSettings, OrchestraConfig, ReviewPolicy, config_dict
from cluster.errors import Unavailable
from cluster.local import DASHBOARD_URL, JOB_EXCLUDES
from cluster.storage import ROOT_ENV, Storage
from cluster.version import REPO_ROOT

NAMESPACE = "baton"
REPLACE_ATTEMPTS = 3
ACTOR_START_S = 120.0
MONITOR, AUDIT, TRAFFIC, ROLLOUTS, LIMITS = "baton_monitor", "baton_audit", "baton_traffic", "baton_rollouts", "baton_limits"
MONITOR_PRINCIPAL, ROLLOUT_PRINCIPAL = "controller:monitor", "controller:rollouts"
logger = logging.getLogger(__name__)


def actor_identity(cls: type, args: tuple) -> str:
    """What a control actor was made from: its module's code and its arguments. A redeploy
    that changes either replaces the actor (its state is on storage, so nothing is lost)."""
    source = inspect.getsource(inspect.getmodule(cls))
    return hashlib.sha256(json.dumps([source, args], sort_keys=True, default=str).encode()).hexdigest()[:16]


class Identified:
    """Mixin of the control actors: they answer who they were made as, and get ready to be replaced."""

    identity = ""

    def made_as(self) -> str:
        return self.identity

    def before_replacement(self) -> None:
        """Write what only memory holds; the actor is killed next."""


class MonitorActor(Identified):
    """The monitor over durable outcomes; a thread hands its drift alerts to the audit log,
    the webhook and the rollout controller (which retrains on them)."""

    def __init__(self, storage_uri: str, settings: dict, shard: int = 0, identity: str = ""):
        from actors.drift import DriftWatch, registry_references

        self.identity = identity
        drift = DriftSettings.model_validate(settings["drift"])
        self._storage = Storage(storage_uri)
        self.monitor = Monitor(
            window_s=settings["monitor"]["window_s"],
            storage=self._storage,
            retention_s=settings["monitor"]["retention_s"],
            prices=CostSettings.model_validate(settings["cost"]),
            drift=DriftWatch(drift, registry_references(storage_uri)),
            shard=shard,
        )
        self._webhook = drift.webhook
        self._lock = threading.Lock()
        threading.Thread(target=self._forward_alerts_forever, daemon=True, name="drift-alerts").start()

    def record(self, outcomes: list[dict], batch_id: str | None = None) -> None:
        """Count a batch; one malformed outcome is dropped and logged, so a reporter never
        resends a batch that can never be accepted."""
        valid, now = [], time.time()
        for outcome in outcomes:
            try:
                valid.append(parse_outcome(outcome, now))
            except ValueError as error:
                logger.error("dropped a malformed outcome: %s", error)
        with self._lock:
            self.monitor.record_parsed(valid, batch_id=batch_id, now=now)

    def stats(self) -> dict:
        with self._lock:
            return self.monitor.stats()

    def window(self, agent: str, version: str, since: float, until: float | None = None) -> dict:
        with self._lock:
            return self.monitor.window(agent, version, since, until)

    def drift_report(self) -> dict:
        with self._lock:
            return self.monitor.drift_report()

    def export(self, since: float, until: float | None = None, key: tuple[str, str] | None = None) -> dict:
        with self._lock:
            return self.monitor.export(since, until, key)

    def before_replacement(self) -> None:
        with self._lock:
            self.monitor.checkpoint()

    def prometheus(self) -> bytes:
        with self._lock:
            return self.monitor.prometheus()

    def _forward_alerts_forever(self) -> None:
        while True:
            time.sleep(1.0)
            with self._lock:
                alerts = self.monitor.take_alerts()
            if alerts:
                try:
                    forward_drift_alerts(alerts, self._webhook, self._storage)
                except Exception:  # storage or the webhook is down: alerts stay on /v1/admin/drift
                    logger.exception("could not forward %d drift alerts", len(alerts))


def forward_drift_alerts(alerts: list[dict], webhook: str | None, storage: Storage) -> None:
    """Each alert becomes an audit record, written before anyone acts on it; the rollout
    controller may retrain on it."""
    from actors.audit import operator_record, write_now

    records = [
        operator_record(MONITOR_PRINCIPAL, "drift.alert", after=alert, agent=alert.get("agent"), version=alert.get("version"))
        for alert in alerts
    ]
    write_now(storage, records)
    try:
        rollouts = ray.get_actor(ROLLOUTS, namespace=NAMESPACE)
    except ValueError:
        rollouts = None
    if rollouts is not None:
        rollouts.on_drift.remote(alerts)
    if webhook:
        import httpx

        for alert in alerts:
            httpx.post(webhook, json=alert, timeout=5.0)


class AuditActor(Identified):
    """Takes records in at once and writes them, redacted, from a timer thread, so a caller
    waits for no redaction or I/O; ``status`` tells a reporter which batches are durable."""

    def __init__(self, storage_uri: str, settings: dict, review_policies: dict | None = None, identity: str = ""):
        from actors.feedback import ReviewQueue
        from actors.pii import CachedRedactor, PiiRedactor

        self.identity = identity
        self.storage = Storage(storage_uri)
        # Outputs repeat the same strings (labels, language codes): redact each once, and
        # the rest of a batch in one NER pass.
        self.redact = CachedRedactor(PiiRedactor(use_ner=settings["redact_names"]))
        self.writer = AuditWriter(
            self.storage,
            batch_size=settings["batch_size"],
            flush_interval_s=settings["flush_interval_s"],
            store_input_text=settings["store_input_text"],
            redactor=self.redact,
            dedupe_window_s=settings["dedupe_window_s"],
        )
        policies = {agent: ReviewPolicy.model_validate(policy) for agent, policy in (review_policies or {}).items()}
        self.review = ReviewQueue(self.storage, policies)
        self._interval = settings["flush_interval_s"]
        threading.Thread(target=self._flush_forever, daemon=True, name="audit-flush").start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(self._interval / 2)
            try:
                self.writer.maybe_flush()
            except Exception:  # storage hiccup: records stay buffered for the next tick
                logger.exception("audit flush failed; will retry")

    def receive(self, batch_id: str | None, records: list[dict]) -> int:
        """Take a batch (a resent one's records only once); those the ingress marked for review
        also join the review queue, their text redacted here, off the request's path."""
        reviews = {record["request_id"]: record.pop("review") for record in records if "review" in record}
        fresh = self.writer.accept(records, batch_id)
        for record in fresh:
            if record["request_id"] in reviews:
                self._offer(record, reviews[record["request_id"]])
        return len(fresh)

    def write(self, records: list[dict]) -> int:
        """A batch from a caller that does not ask after it (the controllers)."""
        return self.receive(None, records)

    def status(self, batch_ids: list[str]) -> dict[str, str]:
        return self.writer.status(batch_ids)

    def _offer(self, record: dict, review: dict) -> None:
        item = {
            "request_id": record["request_id"], "agent": record["agent"], "version": record["version"], "text": record.get("text"),
            "output": record.get("output"), "label": review.get("label"), "confidence": review.get("confidence"), "ts": record["ts"].timestamp(),
        }
        try:
            self.review.offer(item, self.redact)
        except Exception:  # the queue is best effort; the audit record itself must still be written
            logger.exception("could not queue request %s for review", record["request_id"])

    def flush(self) -> int:
        return self.writer.flush()

    def before_replacement(self) -> None:
        self.flush()

    def query(self, **filters: Any) -> list[dict]:
        self.writer.flush()
        return read_audit(self.storage, **filters)


class LimitsActor(Identified):
    """Every key's token bucket, shared by the ingress replicas; they take tokens in leases
    (``LeasedLimiter``). A restart refills the buckets: it forgives at most one burst."""

    def __init__(self, rate_per_s: float, burst: int, identity: str = ""):
        self.identity = identity
        self.buckets = RateLimiter(rate_per_s, burst)

    def take(self, key: str, want: int, rate_per_s: float, burst: int) -> tuple[int, float]:
        return self.buckets.take(key, want, rate_per_s, burst)


def traffic_fingerprint(config: OrchestraConfig) -> str:
    """Identifies the deployed versions and configured weights: a redeploy that changes
    them starts from the config again, one that does not keeps run-time changes.
    """
    shape = {a.name: {v.version: v.weight for v in a.versions} for a in config.agents}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def serve_applications() -> set[str]:
    """The Serve applications running now; none when Serve is not up (a cluster starting)."""
    try:
        return set(serve.status().applications)
    except Exception:  # no Serve controller yet: nothing deployed at run time survives
        return set()


def initial_traffic(config: OrchestraConfig) -> dict:
    return {a.name: {"weights": {v.version: v.weight for v in a.versions}, "sticky": a.sticky} for a in config.agents}


class TrafficActor(Identified):
    """The shared traffic table, persisted to storage so a restart keeps run-time weights."""

    def __init__(
        self, storage_uri: str, agents: dict, fingerprint: str, identity: str = "", running_apps: Callable[[], set[str]] | None = None
    ):
        self.identity = identity
        self.storage = Storage(storage_uri)
        self.path = self.storage.path("state", "traffic.json")
        self.fingerprint = fingerprint
        self.initial = agents
        self.table = TrafficTable(agents)
        if self.storage.exists(self.path):
            saved = self.storage.read_json(self.path)
            if saved.get("fingerprint") == fingerprint:
                self.table.load(saved["snapshot"])
                self._forget_unserved((running_apps or serve_applications)())

    def _forget_unserved(self, apps: set[str]) -> None:
        """Run-time versions whose Serve application is gone (the cluster restarted since) leave
        the table; if one of them took traffic, the saved split is void and the config's applies."""
        gone = [(agent, version) for agent, versions in self.table.added().items() for version, where in versions.items() if where.get("app") not in apps]
        if not gone:
            return
        if any(self.table.weights(agent)[version] > 0 for agent, version in gone):
            generation = self.table.generation
            self.table = TrafficTable(self.initial)
            self.table.generation = generation + 1
        else:
            for agent, version in gone:
                if (self.table.shadow(agent) or {}).get("version") == version:
                    self.table.set_shadow(agent, version, 0)
                self.table.remove_version(agent, version)
        logger.warning("traffic: run-time versions %s are no longer served; removed from the table", gone)
        self._save()

    def snapshot(self) -> dict:
        return {"fingerprint": self.fingerprint, **self.table.snapshot()}

    def adopt(self, agents: dict, fingerprint: str) -> dict:
        """A deploy with other versions or weights starts from its config; the generation
        keeps growing so replicas of that deploy pick the new table up."""
        if fingerprint != self.fingerprint:
            generation = self.table.generation
            self.table = TrafficTable(agents)
            self.table.generation = generation + 1
            self.fingerprint = fingerprint
            self._save()
        return self.snapshot()

    def set_weights(self, agent: str, weights: dict, sticky: bool | None = None) -> dict:
        """Returns {"before", "after", "snapshot"}; raises BatonError subclasses on bad input."""
        before, after = self.table.set_weights(agent, weights, sticky)
        self._save()
        return {"before": before, "after": after, "snapshot": self.snapshot()}

    def weights(self, agent: str) -> dict:
        return self.table.weights(agent)

    def set_shadow(self, agent: str, version: str, percent: int) -> dict:
        before, after = self.table.set_shadow(agent, version, percent)
        self._save()
        return {"before": before, "after": after, "snapshot": self.snapshot()}

    def add_version(self, agent: str, version: str, location: dict) -> dict:
        self.table.add_version(agent, version, location)
        self._save()
        return self.snapshot()

    def remove_version(self, agent: str, version: str) -> dict:
        self.table.remove_version(agent, version)
        self._save()
        return self.snapshot()

    def _save(self) -> None:
        self.storage.write_json_atomic(self.path, {"fingerprint": self.fingerprint, "snapshot": self.table.snapshot()})


def _named(cls: type, name: str, *args: Any, num_cpus: float = 0.01, spread: bool = False) -> ray.actor.ActorHandle:
    identity = actor_identity(cls, args)
    options = dict(
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, max_restarts=-1, max_task_retries=-1, num_cpus=num_cpus
    )
    if spread:  # writers of one kind on different nodes, so their rate adds up
        options["scheduling_strategy"] = "SPREAD"
    for _ in range(REPLACE_ATTEMPTS):
        actor = ray.remote(cls).options(**options).remote(*args, identity=identity)
        try:
            if ray.get(actor.made_as.remote(), timeout=ACTOR_START_S) == identity:
                return actor
            ray.get(actor.before_replacement.remote(), timeout=ACTOR_START_S)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass  # another replica is replacing it: look again
        logger.info("replacing control actor %s: new code or config", name)
        ray.kill(actor, no_restart=True)
        _wait_until_gone(name)
    raise RuntimeError(f"control actor {name} could not be replaced after {REPLACE_ATTEMPTS} attempts")


def _wait_until_gone(name: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return
        time.sleep(0.2)


class ActorTraffic:
    """The rollout controller's Traffic port: the shared traffic actor."""

    def __init__(self, actor: Any):
        self.actor = actor

    async def weights(self, agent: str) -> dict[str, int]:
        return await self.actor.weights.remote(agent)

    async def set_weights(self, agent: str, weights: dict[str, int]) -> dict:
        change = await self.actor.set_weights.remote(agent, weights)
        return {"before": change["before"], "after": change["after"]}

    async def set_shadow(self, agent: str, version: str, percent: int) -> None:
        await self.actor.set_shadow.remote(agent, version, percent)


class ActorWindow:
    """The rollout controller's Window port: the monitor's shards."""

    def __init__(self, shards: MonitorShards):
        self.shards = shards

    async def window(self, agent: str, version: str, since: float, until: float | None = None) -> dict:
        return await self.shards.window(agent, version, since, until)


class RayJobs:
    """The retraining runner's Jobs port: Ray jobs on this cluster, the repository as working directory."""

    def __init__(self, dashboard_url: str = DASHBOARD_URL):
        self.dashboard_url = dashboard_url

    @functools.cached_property
    def client(self):
        # Connecting checks the dashboard, which a cluster without jobs may not run: only on use.
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard_url)

    def submit(self, entrypoint: str, env_vars: dict[str, str]) -> str:
        root = os.environ.get(ROOT_ENV) or str(REPO_ROOT)
        runtime_env = {"working_dir": root, "excludes": JOB_EXCLUDES, "env_vars": {**env_vars, ROOT_ENV: root}}
        return self.client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)

    def status(self, job_id: str) -> str:
        return self.client.get_job_status(job_id).value


class RolloutActor(Identified):
    """The rollout controller as a named actor. Its coroutines run on one loop in a thread of
    their own: the tick loop and the calls from ingress replicas take turns there."""

    def __init__(self, storage_uri: str, config: dict, app_name: str, identity: str = ""):
        from actors.rollout import RolloutController
        from cluster.registry import ModelRegistry
        from serve.fleet import ServeFleet

        self.identity = identity
        settings = OrchestraConfig.model_validate(config)
        traffic = ray.get_actor(TRAFFIC, namespace=NAMESPACE)
        monitor = MonitorShards(_existing_shards(MONITOR), {"monitor": settings.monitor.model_dump(), "cost": settings.cost.model_dump()})
        self._storage = Storage(storage_uri)
        self.controller = RolloutController(
            self._storage, ServeFleet(settings, storage_uri, traffic, app_name), ActorTraffic(traffic),
            ActorWindow(monitor), ModelRegistry(Storage(storage_uri)), self._audit,
            environment=settings.environment, require_approval=settings.require_approval, history=settings.rollouts.history,
        )
        self.retraining = retrain_runner(settings, storage_uri, self.controller, self._audit)
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True, name="rollouts").start()
        asyncio.run_coroutine_threadsafe(self._tick_forever(settings.rollouts.tick_s), self._loop)

    def _audit(self, action: str, output: dict, agent: str | None, version: str | None) -> None:
        """A controller's step as an operator record, written before the step counts as done:
        its before/after where it changes something."""
        from actors.audit import write_operator_action

        extra = {key: value for key, value in output.items() if key not in ("before", "after")}
        write_operator_action(
            self._storage, ROLLOUT_PRINCIPAL, action, before=output.get("before"), after=output.get("after"), agent=agent, version=version, extra=extra
        )

    async def _tick_forever(self, tick_s: float) -> None:
        while True:
            for part in (self.controller, self.retraining):
                try:
                    await part.tick()
                except Exception:  # one bad tick must not stop every rollout; the next one retries
                    logger.exception("%s tick failed", type(part).__name__)
            await asyncio.sleep(tick_s)

    def _on_loop(self, function, *args: Any) -> Any:
        """Call ``function`` on the controller's loop, where every change happens, and wait:
        reads and writes from ingress replicas never interleave with a tick."""
        async def call() -> Any:
            result = function(*args)
            return await result if inspect.isawaitable(result) else result

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    def start(self, agent: str, candidate: str, plan: dict, principal: str) -> dict:
        from cluster.config import RolloutPlan

        return self._on_loop(self.controller.start, agent, candidate, RolloutPlan.model_validate(plan), principal)

    def get(self, rollout_id: str) -> dict:
        return self._on_loop(self.controller.get, rollout_id)

    def list(self) -> list[dict]:
        return self._on_loop(self.controller.list)

    def pause(self, rollout_id: str, principal: str) -> dict:
        return self._on_loop(self.controller.pause, rollout_id, principal)

    def resume(self, rollout_id: str, principal: str) -> dict:
        return self._on_loop(self.controller.resume, rollout_id, principal)

    def abort(self, rollout_id: str, principal: str) -> dict:
        return self._on_loop(self.controller.abort, rollout_id, principal)

    def on_drift(self, alerts: list[dict]) -> None:
        """Drift alerts from the monitor: agents whose policy retrains on drift will."""
        self._loop.call_soon_threadsafe(self.retraining.on_drift, alerts)

    def retrain(self, agent: str, principal: str) -> dict:
        """Retrain now (an operator's trigger); the next tick submits the job."""
        self._on_loop(self.retraining.trigger, agent, f"manual:{principal}")
        return {"agent": agent, "triggered": True}

    def retraining_view(self) -> dict:
        return self._on_loop(self.retraining.view)


def retrain_runner(settings: OrchestraConfig, storage_uri: str, controller: Any, audit: Any):
    """The retraining policies of the orchestra's agents, driven by the rollout actor's loop."""
    from actors.feedback import ReviewQueue
    from actors.retrain import RetrainRunner
    from cluster.registry import ModelRegistry

    # An agent retrains the registry model it serves most; one serving none (skipped as missing) waits for a redeploy.
    models = {a.name: _served_model(a) for a in settings.agents if a.retrain is not None and _served_model(a)}
    policies = {name: settings.agent(name).retrain for name in models}
    storage = Storage(storage_uri)

    async def get_rollout(rollout_id: str) -> dict:  # the runner ticks on the controller's loop
        return controller.get(rollout_id)

    reviews = ReviewQueue(storage, {a.name: a.review for a in settings.agents if a.review is not None})
    return RetrainRunner(
        storage, policies, models, RayJobs(), ModelRegistry(storage), reviews.labelled_rows,
        controller.start, get_rollout, audit,
    )


def _served_model(agent) -> str | None:
    model = max(agent.versions, key=lambda v: v.weight).model
    return model if model and model.startswith("registry://") else None


def review_policies(config: OrchestraConfig) -> dict[str, dict]:
    return {a.name: a.review.model_dump() for a in config.agents if a.review is not None}


def monitoring_settings(config: OrchestraConfig) -> dict:
    return {"monitor": config.monitor.model_dump(), "drift": config.drift.model_dump(), "cost": config.cost.model_dump()}


def shard_name(base: str, index: int) -> str:
    """The first shard keeps the name a single actor always had (the controllers use it)."""
    return base if index == 0 else f"{base}_{index}"


def audit_writer_name(index: int) -> str:
    return shard_name(AUDIT, index)


def monitor_shards(config: OrchestraConfig, storage_uri: str) -> MonitorShards:
    """The named monitor actors, spread over the nodes, created on first use: ``monitor.shards``
    of them, or as many as have logs on storage (so no shard's history goes unread)."""
    from actors.outcome_log import stored_shards

    settings = monitoring_settings(config)
    count = max(config.monitor.shards, stored_shards(Storage(storage_uri)))
    shards = [_named(MonitorActor, shard_name(MONITOR, index), storage_uri, settings, index, spread=True) for index in range(count)]
    return MonitorShards(shards, settings, intake=config.monitor.shards)


def audit_writers(config: OrchestraConfig, storage_uri: str) -> AuditShards:
    """The ``audit.writers`` named audit actors, spread over the nodes, created on first use;
    writers beyond that number (left by a deploy with more) flush and go."""
    count = config.audit.writers
    args = (storage_uri, config.audit.model_dump(), review_policies(config))
    writers = [_named(AuditActor, audit_writer_name(index), *args, spread=True) for index in range(count)]
    _retire_audit_writers(from_index=count)
    return AuditShards(writers)


def _existing_shards(base: str, from_index: int = 0) -> list[ray.actor.ActorHandle]:
    shards = []
    for index in itertools.count(from_index):
        try:
            shards.append(ray.get_actor(shard_name(base, index), namespace=NAMESPACE))
        except ValueError:
            return shards


def _existing_audit_writers(from_index: int = 0) -> list[ray.actor.ActorHandle]:
    return _existing_shards(AUDIT, from_index)


def _retire_audit_writers(from_index: int) -> None:
    for writer in _existing_audit_writers(from_index):
        try:
            ray.get(writer.before_replacement.remote(), timeout=ACTOR_START_S)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            logger.warning("a retired audit writer could not flush; killing it anyway")
        ray.kill(writer, no_restart=True)


class AuditShards:
    """Several audit writers as one sink for a ConfirmedReporter: each new batch goes to the
    next writer, so the rate of redaction and writing grows with the writers; a batch sent again
    goes to the writer it went to first, which may have written part of it. They write files of
    their own (unique names) into the same day partitions, so a query merges them by reading the
    storage after every writer has flushed. ``remote=False`` takes the writers as plain objects."""

    def __init__(self, writers: list[Any], remote: bool = True):
        if not writers:
            raise ValueError("need at least one audit writer")
        self.writers = writers
        self.remote = remote
        # Replicas start at different writers, so their batches spread from the first one.
        self._turn = itertools.count(random.randrange(len(writers)))
        self._writer_of: dict[str, int] = {}

    async def _call(self, index: int, method: str, *args: Any, **kwargs: Any) -> Any:
        bound = getattr(self.writers[index], method)
        return await bound.remote(*args, **kwargs) if self.remote else bound(*args, **kwargs)

    async def receive(self, batch_id: str, records: list[dict]) -> int:
        index = self._writer_of.setdefault(batch_id, next(self._turn) % len(self.writers))
        return await self._call(index, "receive", batch_id, records)

    async def status(self, batch_ids: list[str]) -> dict[str, str]:
        """Each batch's fate from its writer; ``pending`` where that writer cannot answer now."""
        by_writer: dict[int, list[str]] = defaultdict(list)
        for batch_id in batch_ids:
            by_writer[self._writer_of.get(batch_id, 0)].append(batch_id)
        answers = await asyncio.gather(*(self._call(index, "status", ids) for index, ids in by_writer.items()), return_exceptions=True)
        states: dict[str, str] = {}
        for ids, answer in zip(by_writer.values(), answers):
            states.update(dict.fromkeys(ids, "pending") if isinstance(answer, BaseException) else answer)
        for batch_id, state in states.items():
            if state != "pending":
                self._writer_of.pop(batch_id, None)
        return states

    def write(self, records: list[dict]) -> Any:
        """A batch nobody asks after (the saturation benchmark, the controllers)."""
        return self.writers[next(self._turn) % len(self.writers)].write.remote(records)

    async def query(self, **filters: Any) -> list[dict]:
        await asyncio.gather(*(self._call(index, "flush") for index in range(1, len(self.writers))))
        return await self._call(0, "query", **filters)


class MonitorShards:
    """Several monitor actors as one: each batch of outcomes goes to the next of the first
    ``intake`` shards; a read gathers every shard's share (``Monitor.export``) and answers from
    ``Monitor.merged``, as one monitor that got every outcome would. One shard is called directly."""

    def __init__(self, shards: list[Any], settings: dict, intake: int | None = None):
        if not shards:
            raise ValueError("need at least one monitor shard")
        self.shards = shards
        self.intake = shards[: intake or len(shards)]
        self.window_s = settings["monitor"]["window_s"]
        self.prices = CostSettings.model_validate(settings["cost"])
        self._turn = itertools.count(random.randrange(len(self.intake)))

    def record(self, outcomes: list[dict]) -> Any:
        return self.intake[next(self._turn) % len(self.intake)].record.remote(outcomes)

    async def _merged(self, since: float, until: float | None = None, key: tuple[str, str] | None = None) -> Monitor:
        shares = await asyncio.gather(*(shard.export.remote(since, until, key) for shard in self.shards))
        return Monitor.merged(shares, self.window_s, self.prices)

    async def window(self, agent: str, version: str, since: float, until: float | None = None) -> dict:
        if len(self.shards) == 1:
            return await self.shards[0].window.remote(agent, version, since, until)
        return (await self._merged(since, until, (agent, version))).window(agent, version, since, until)

    async def stats(self) -> dict:
        if len(self.shards) == 1:
            return await self.shards[0].stats.remote()
        return (await self._merged(time.time() - self.window_s)).stats()

    async def prometheus(self) -> bytes:
        if len(self.shards) == 1:
            return await self.shards[0].prometheus.remote()
        return (await self._merged(time.time() - self.window_s)).prometheus()

    async def drift_report(self) -> dict:
        if len(self.shards) == 1:
            return await self.shards[0].drift_report.remote()
        return (await self._merged(time.time())).drift_report()


SHARDED = (AuditShards, MonitorShards)


def control_actors(config: OrchestraConfig, storage_uri: str, app_name: str = "baton") -> dict[str, Any]:
    """Get the shared actors, creating each on first use (every replica calls this); the
    audit and monitor entries are their shards as one (``AuditShards``, ``MonitorShards``)."""
    actors = {
        AUDIT: audit_writers(config, storage_uri),
        MONITOR: monitor_shards(config, storage_uri),
        TRAFFIC: _named(TrafficActor, TRAFFIC, storage_uri, initial_traffic(config), traffic_fingerprint(config)),
        LIMITS: _named(LimitsActor, LIMITS, config.auth.rate_limit.requests_per_s, config.auth.rate_limit.burst),
    }
    # The controller reaches the others by name, so it comes last.
    actors[ROLLOUTS] = _named(RolloutActor, ROLLOUTS, storage_uri, config_dict(config), app_name)
    return actors


class ControlPlane:
    """The shared monitor, audit, traffic and rollout objects as an ingress replica reaches
    them: named Ray actors in production, or the same classes in-process (``remote=False``),
    which is how the ingress is unit-tested without Ray."""

    def __init__(self, monitor: Any, audit: Any, traffic: Any, rollouts: Any = None, remote: bool = True, limits: Any = None):
        self.monitor, self.audit, self.traffic, self.rollouts, self.remote = monitor, audit, traffic, rollouts, remote
        self.limits = limits

    @classmethod
    def of_cluster(cls, config: OrchestraConfig, storage_uri: str, app_name: str = "baton") -> ControlPlane:
        actors = control_actors(config, storage_uri, app_name)
        return cls(actors[MONITOR], actors[AUDIT], actors[TRAFFIC], actors[ROLLOUTS], limits=actors[LIMITS])

    @classmethod
    def in_process(cls, config: OrchestraConfig, storage_uri: str) -> ControlPlane:
        """Without Ray: no rollout controller (it deploys through Serve)."""
        traffic = TrafficActor(storage_uri, initial_traffic(config), traffic_fingerprint(config))
        audit = AuditShards([AuditActor(storage_uri, config.audit.model_dump(), review_policies(config))], remote=False)
        limits = RateLimiter(config.auth.rate_limit.requests_per_s, config.auth.rate_limit.burst)
        return cls(MonitorActor(storage_uri, monitoring_settings(config)), audit, traffic, remote=False, limits=limits)

    async def call(self, target: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        if target is None:
            raise Unavailable("the rollout controller runs only on a Ray cluster", retry_after_s=60)
        if isinstance(target, SHARDED):
            return await getattr(target, method)(*args, **kwargs)
        if self.remote:
            return await getattr(target, method).remote(*args, **kwargs)
        return getattr(target, method)(*args, **kwargs)

    def call_now(self, target: Any, method: str, *args: Any) -> Any:
        """A blocking call, for start-up before the event loop serves."""
        if self.remote:
            return ray.get(getattr(target, method).remote(*args))
        return getattr(target, method)(*args)

    def sink(self, target: Any, method: str):
        """A reporter's sink: the actor method, called with a batch of records."""
        if isinstance(target, SHARDED):
            return getattr(target, method)
        return getattr(target, method).remote if self.remote else getattr(target, method)


def flush_audit() -> int:
    """Write what the audit writers buffer (before a shutdown); 0 if none is running."""
    writers = _existing_audit_writers()
    return sum(ray.get([writer.flush.remote() for writer in writers], timeout=60))
