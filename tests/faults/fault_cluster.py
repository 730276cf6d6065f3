"""Run in a subprocess by test_faults.py: baton on a two-node ``cluster_utils`` cluster under
steady load while one process at a time is killed; prints every request's outcome, the fault
timeline and the audit rows of the answered requests as one JSON report line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

import httpx
import ray
from ray import serve
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from actors.audit import read_audit
from cluster.config import OrchestraConfig
from cluster.keys import KeyStore
from cluster.storage import Storage
from serve.builder import APP_NAME, INGRESS, build_application, cluster_env
from serve.control import (
    AUDIT,
    LIMITS,
    MONITOR,
    NAMESPACE,
    ROLLOUTS,
    TRAFFIC,
    flush_audit,
)
from tests.integration.conftest import free_port
from tests.integration.two_node_cluster import ORCHESTRA as TWO_NODE_ORCHESTRA

REPORT_PREFIX = "FAULT-REPORT "
CONCURRENCY = 4
# Load runs this long after a kill before the next one: enough for Serve to replace a replica.
DWELL_S = 12.0
TEXTS = ["I love this so much", "This is the worst service ever", "Where is my parcel?", "Great value, would buy again"]
# The two-node test's orchestra (a two-replica sentiment agent, one per node), with two ingress
# replicas so that killing one leaves the other serving.
ORCHESTRA = {**TWO_NODE_ORCHESTRA, "ingress": {"autoscaling": {"min_replicas": 2, "max_replicas": 2}, "resources": {"num_cpus": 0.1}}}


class Load:
    """``CONCURRENCY`` clients sending ``/v1/route`` one after another; every outcome is kept."""

    def __init__(self, url: str, key: str):
        self.url, self.key = url, key
        self.outcomes: list[dict] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CONCURRENCY)]

    def _client(self, index: int) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(timeout=40) as http:
            sent = 0
            while not self._stop.is_set():
                request_id = uuid.uuid4().hex
                outcome = {"request_id": request_id, "sent": time.time()}
                try:
                    response = http.post(
                        f"{self.url}/v1/route", json={"text": TEXTS[sent % len(TEXTS)]},
                        headers={**headers, "X-Request-ID": request_id},
                    )
                    outcome.update(
                        status=response.status_code, retry_after=response.headers.get("retry-after"),
                        served_by=response.headers.get("x-served-by"),
                        body=response.text[:300] if response.status_code != 200 else None,
                    )
                except httpx.HTTPError as error:
                    outcome.update(status=None, error=f"{type(error).__name__}: {error}")
                outcome["done"] = time.time()
                self.outcomes.append(outcome)
                sent += 1

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def replica_actors(deployment: str) -> list:
    return [
        actor for actor in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
        if actor.class_name == f"ServeReplica:{APP_NAME}:{deployment}"
    ]


def kill_replica(deployment: str) -> Callable[[], dict]:
    def kill() -> dict:
        victim = replica_actors(deployment)[0]
        ray.kill(ray.get_actor(victim.name, namespace="serve"), no_restart=True)
        return {"killed": victim.name, "node": victim.node_id}

    return kill


def kill_actor(name: str) -> Callable[[], dict]:
    def kill() -> dict:
        # Ray restarts it (max_restarts=-1), as it would after a crash.
        ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=False)
        return {"killed": name}

    return kill


def wait_for_replicas(deployment: str, count: int, timeout_s: float) -> list:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        replicas = replica_actors(deployment)
        if len(replicas) >= count:
            return replicas
        time.sleep(1)
    return replica_actors(deployment)


def kill_worker_node(cluster: Cluster, worker) -> Callable[[], dict]:
    """The worker node dies; a new one joins, and the replicas that lived there move to it."""

    def kill() -> dict:
        agent = "sentiment.v1"
        before = sorted(actor.node_id for actor in replica_actors(agent))
        cluster.remove_node(worker)
        node = cluster.add_node(num_cpus=2, object_store_memory=128 * 1024**2)
        after = sorted(actor.node_id for actor in wait_for_replicas(agent, 2, timeout_s=90))
        return {"killed": worker.node_id, "replicas_before": before, "replicas_after": after, "new_node": node.node_id}

    return kill


def wait_until_audited(storage: Storage, request_ids: list[str], timeout_s: float) -> list[dict]:
    """The audit rows of ``request_ids`` once every one is there, or what is there at the deadline."""
    deadline = time.time() + timeout_s
    while True:
        flush_audit()
        rows = read_audit(storage, request_ids=request_ids, limit=10 * len(request_ids) + 10)
        if {row["request_id"] for row in rows} >= set(request_ids) or time.time() > deadline:
            return rows
        time.sleep(1)


def outcome_table(report: dict) -> str:
    """The report as a Markdown table, one row per fault: what the clients got and what the audit kept."""
    times = [entry["at"] for entry in report["timeline"]] + [max(o["sent"] for o in report["outcomes"]) + 1]
    keys = Counter((row["request_id"], row["endpoint"]) for row in report["audit"])
    audited = {request_id for request_id, _ in keys}
    duplicated = {request_id for (request_id, _), count in keys.items() if count > 1}
    lines = [
        "| fault | requests | 200 | other answers | no answer | answered, not in the audit | written twice | last non-200 after the kill |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for index, entry in enumerate(report["timeline"]):
        sent = [o for o in report["outcomes"] if times[index] <= o["sent"] < times[index + 1]]
        statuses = Counter(o["status"] for o in sent)
        others = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items()) if status not in (200, None)) or "–"
        missing = sum(1 for o in sent if o.get("served_by") and o["request_id"] not in audited)
        twice = sum(1 for o in sent if o["request_id"] in duplicated)
        late = max((o["sent"] - times[index] for o in sent if o["status"] != 200), default=None)
        lines.append(
            f"| {entry['fault']} | {len(sent)} | {statuses.get(200, 0)} | {others} | {statuses.get(None, 0)} | {missing} | {twice} | "
            f"{'–' if late is None else f'{late:.1f} s'} |"
        )
    return "\n".join(lines)


def main() -> int:
    os.environ.update(cluster_env())
    os.environ.pop("RAY_ADDRESS", None)
    storage_uri = tempfile.mkdtemp(prefix="baton-faults-")
    head = {"num_cpus": 3, "object_store_memory": 256 * 1024**2, "dashboard_port": free_port()}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    worker = cluster.add_node(num_cpus=2, object_store_memory=128 * 1024**2)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        port = free_port()
        # One proxy, on the head: the node fault is about replicas and actors, not client connections.
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        config = OrchestraConfig.model_validate({**ORCHESTRA, "storage": storage_uri})
        # A limit far above what 4 clients send: the suite is about faults, and a 429 is the
        # rate limiter working (4 clients reach ~80 req/s here, near the default 100 req/s).
        key, _ = KeyStore(Storage(storage_uri)).create("admin", "faults", rate_per_s=10_000, burst=10_000)
        serve.run(build_application(config, storage_uri), name=APP_NAME, route_prefix="/")
        faults: list[tuple[str, Callable[[], dict]]] = [
            ("ingress replica", kill_replica(INGRESS)),
            ("agent replica", kill_replica("sentiment.v1")),
            ("audit actor", kill_actor(AUDIT)),
            ("monitor actor", kill_actor(MONITOR)),
            ("traffic actor", kill_actor(TRAFFIC)),
            ("rollout actor", kill_actor(ROLLOUTS)),
            ("limits actor", kill_actor(LIMITS)),
            ("worker node", kill_worker_node(cluster, worker)),
        ]
        load = Load(f"http://127.0.0.1:{port}", key)
        load.start()
        time.sleep(DWELL_S)
        timeline = []
        for name, kill in faults:
            started = time.time()
            detail = kill()
            timeline.append({"fault": name, "at": started, "detail": detail})
            time.sleep(max(0.0, DWELL_S - (time.time() - started)))
        time.sleep(DWELL_S)
        load.stop()
        answered = [o["request_id"] for o in load.outcomes if o.get("served_by")]
        rows = wait_until_audited(Storage(storage_uri), answered, timeout_s=60)
        report = {
            "timeline": timeline,
            "outcomes": load.outcomes,
            "audit": [{"request_id": row["request_id"], "endpoint": row["endpoint"]} for row in rows],
        }
        print(REPORT_PREFIX + json.dumps(report), flush=True)
        print(outcome_table(report), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
        time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
