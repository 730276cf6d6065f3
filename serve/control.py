"""The named Ray actors shared by every ingress replica: monitor, audit writer and the
traffic table. Each wraps a plain class from ``actors/`` and restarts on failure.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from typing import Any

import ray

from actors.audit import AuditWriter, read_audit
from actors.monitor import Monitor
from actors.traffic import TrafficTable
from cluster.config import OrchestraConfig
from cluster.storage import Storage

NAMESPACE = "baton"
MONITOR, AUDIT, TRAFFIC = "baton_monitor", "baton_audit", "baton_traffic"
logger = logging.getLogger(__name__)


class MonitorActor:
    def __init__(self, window_s: float):
        self.monitor = Monitor(window_s=window_s)

    def record(self, outcomes: list[dict]) -> None:
        self.monitor.record(outcomes)

    def stats(self) -> dict:
        return self.monitor.stats()

    def prometheus(self) -> bytes:
        return self.monitor.prometheus()


class AuditActor:
    """Buffers records and writes Parquet from a timer thread, so callers never wait on I/O."""

    def __init__(self, storage_uri: str, settings: dict):
        from actors.pii import PiiRedactor

        self.storage = Storage(storage_uri)
        self.writer = AuditWriter(
            self.storage,
            batch_size=settings["batch_size"],
            flush_interval_s=settings["flush_interval_s"],
            store_input_text=settings["store_input_text"],
            # Outputs repeat the same strings (labels, language codes): redact each once.
            redactor=functools.lru_cache(maxsize=50_000)(PiiRedactor(use_ner=settings["redact_names"])),
        )
        self._lock = threading.Lock()
        self._interval = settings["flush_interval_s"]
        threading.Thread(target=self._flush_forever, daemon=True, name="audit-flush").start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(self._interval / 2)
            try:
                with self._lock:
                    self.writer.maybe_flush()
            except Exception:  # storage hiccup: records stay buffered for the next tick
                logger.exception("audit flush failed; will retry")

    def write(self, records: list[dict]) -> int:
        with self._lock:
            return self.writer.write(records)

    def flush(self) -> int:
        with self._lock:
            return self.writer.flush()

    def query(self, **filters: Any) -> list[dict]:
        with self._lock:
            self.writer.flush()
        return read_audit(self.storage, **filters)


def traffic_fingerprint(config: OrchestraConfig) -> str:
    """Identifies the deployed versions and configured weights: a redeploy that changes
    them starts from the config again, one that does not keeps run-time changes.
    """
    shape = {a.name: {v.version: v.weight for v in a.versions} for a in config.agents}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def initial_traffic(config: OrchestraConfig) -> dict:
    return {a.name: {"weights": {v.version: v.weight for v in a.versions}, "sticky": a.sticky} for a in config.agents}


class TrafficActor:
    """The shared traffic table, persisted to storage so a restart keeps run-time weights."""

    def __init__(self, storage_uri: str, agents: dict, fingerprint: str):
        self.storage = Storage(storage_uri)
        self.path = self.storage.path("state", "traffic.json")
        self.fingerprint = fingerprint
        self.table = TrafficTable(agents)
        if self.storage.exists(self.path):
            saved = self.storage.read_json(self.path)
            if saved.get("fingerprint") == fingerprint:
                self.table.load(saved["snapshot"])

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

    def set_weights(self, agent: str, weights: dict, sticky: bool | None) -> dict:
        """Returns {"before", "after", "snapshot"}; raises BatonError subclasses on bad input."""
        before, after = self.table.set_weights(agent, weights, sticky)
        self._save()
        return {"before": before, "after": after, "snapshot": self.snapshot()}

    def _save(self) -> None:
        self.storage.write_json_atomic(self.path, {"fingerprint": self.fingerprint, "snapshot": self.table.snapshot()})


def _named(cls: type, name: str, *args: Any, num_cpus: float = 0.05) -> ray.actor.ActorHandle:
    return (
        ray.remote(cls)
        .options(
            name=name,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            max_task_retries=-1,
            num_cpus=num_cpus,
        )
        .remote(*args)
    )


def control_actors(config: OrchestraConfig, storage_uri: str) -> dict[str, ray.actor.ActorHandle]:
    """Get the shared actors, creating each on first use (every replica calls this)."""
    return {
        MONITOR: _named(MonitorActor, MONITOR, config.monitor.window_s),
        AUDIT: _named(AuditActor, AUDIT, storage_uri, config.audit.model_dump()),
        TRAFFIC: _named(TrafficActor, TRAFFIC, storage_uri, initial_traffic(config), traffic_fingerprint(config)),
    }


class ControlPlane:
    """The shared monitor, audit and traffic objects as an ingress replica reaches them:
    named Ray actors in production, or the same classes in-process (``remote=False``),
    which is how the ingress is unit-tested without Ray."""

    def __init__(self, monitor: Any, audit: Any, traffic: Any, remote: bool = True):
        self.monitor, self.audit, self.traffic, self.remote = monitor, audit, traffic, remote

    @classmethod
    def of_cluster(cls, config: OrchestraConfig, storage_uri: str) -> ControlPlane:
        actors = control_actors(config, storage_uri)
        return cls(actors[MONITOR], actors[AUDIT], actors[TRAFFIC])

    @classmethod
    def in_process(cls, config: OrchestraConfig, storage_uri: str) -> ControlPlane:
        traffic = TrafficActor(storage_uri, initial_traffic(config), traffic_fingerprint(config))
        return cls(MonitorActor(config.monitor.window_s), AuditActor(storage_uri, config.audit.model_dump()), traffic, remote=False)

    async def call(self, target: Any, method: str, *args: Any, **kwargs: Any) -> Any:
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
        return getattr(target, method).remote if self.remote else getattr(target, method)


def flush_audit() -> int:
    """Write what the audit actor buffers (before a shutdown); 0 if it is not running."""
    try:
        actor = ray.get_actor(AUDIT, namespace=NAMESPACE)
    except ValueError:
        return 0
    return ray.get(actor.flush.remote(), timeout=60)
