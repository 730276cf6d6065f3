"""Run in a subprocess by test_two_nodes.py: a two-node ``ray.cluster_utils.Cluster`` where
baton is deployed as ``baton up --address`` does (code uploaded, orchestra inline), a fine-tuning
job trains on a generated dataset beside it, then a worker node dies and is replaced; prints
what happened as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from cluster.keys import KeyStore
from cluster.registry import ModelRegistry
from cluster.storage import Storage
from serve.builder import cluster_env
from tests.integration.conftest import REPO, free_port

REPORT_PREFIX = "TWO-NODE-REPORT "
ORCHESTRA = {
    "router": {"calibration": {"midpoint": 0.3, "temperature": 0.05}},
    "ingress": {"autoscaling": {"min_replicas": 1, "max_replicas": 1}, "resources": {"num_cpus": 0.1}},
    "agents": [
        {
            "name": "sentiment",
            "kind": "sentiment",
            "description": "Sentiment of reviews and opinions",
            "examples": ["I love it", "This is awful"],
            "versions": [
                {
                    "version": "v1",
                    "weight": 100,
                    "max_replicas_per_node": 1,
                    "autoscaling": {"min_replicas": 2, "max_replicas": 2},
                    "resources": {"num_cpus": 0.1},
                }
            ],
        }
    ],
}


RECOVERY_DEADLINE_S = 180  # replicas back on two live nodes within this
JOB_DEADLINE_S = 420
# Rows of the generated dataset, and characters of text per row: 32 MB of text, which the
# workers read as Ray Data shards; only the row counts travel in the loop config.
DATA_ROWS, ROW_CHARS = 2000, 16_000


def write_dataset(path: str) -> None:
    """Sentiment rows whose opening words carry the label and whose long tail is filler."""
    import random

    rng = random.Random(0)
    filler = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor ".split()
    openings = {"POSITIVE": ["wonderful great film", "i loved it", "superb and delightful"], "NEGATIVE": ["awful boring film", "i hated it", "dreadful and dull"]}
    with open(path, "w") as handle:
        for row in range(DATA_ROWS):
            label = "POSITIVE" if row % 2 else "NEGATIVE"
            text = " ".join([rng.choice(openings[label]), *rng.choices(filler, k=ROW_CHARS // 5)])
            handle.write(json.dumps({"text": text[:ROW_CHARS], "label": label}) + "\n")


def write_recipe(directory: str, storage_uri: str) -> str:
    data = os.path.join(directory, "big.jsonl")
    write_dataset(data)
    recipe = {
        "name": "two-node-sentiment",
        "storage": storage_uri,
        "data": {"train": data, "validation_fraction": 0.1, "seed": 0},
        "training": {"epochs": 1, "learning_rate": 1.0e-4, "batch_size": 32, "max_length": 16, "seed": 0},
        "scaling": {"num_workers": 2, "resources_per_worker": {"CPU": 0.3}},
    }
    path = os.path.join(directory, "recipe.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(recipe, handle)
    return path


def route(port: int, key: str) -> int:
    try:
        return httpx.post(f"http://127.0.0.1:{port}/v1/route", json={"text": "I love this so much"}, headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code
    except httpx.HTTPError:
        return 0


def alive_replicas(api: str) -> list[str]:
    """Node ids of the sentiment replicas that are alive."""
    return sorted(a.node_id for a in list_actors(address=api, filters=[("state", "=", "ALIVE")]) if a.class_name.endswith("sentiment.v1"))


def wait_for(what: str, check, deadline_s: float, step_s: float = 1.0):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step_s)
    raise TimeoutError(f"{what}: not within {deadline_s:.0f}s")


def main() -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient

    from cluster import local
    from serve.cli import deploy_and_wait

    os.environ.update(cluster_env(REPO))
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ.pop("RAY_ADDRESS", None)
    workspace = tempfile.mkdtemp(prefix="baton-two-nodes-")
    storage_uri = os.path.join(workspace, "storage")
    dashboard_port, port = free_port(), free_port()
    head = {**node_args(), "include_dashboard": True, "dashboard_port": dashboard_port}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    doomed = cluster.add_node(**node_args())
    api = f"http://127.0.0.1:{dashboard_port}"
    report: dict = {"phase_s": {}}
    phase_started = time.monotonic()

    def phase_done(name: str) -> None:
        # Where the test's minutes go, for whoever has to make it faster.
        nonlocal phase_started
        report["phase_s"][name] = round(time.monotonic() - phase_started, 1)
        phase_started = time.monotonic()

    try:
        cluster.wait_for_nodes()
        wait_for("dashboard", lambda: local.dashboard_up(api), 60)
        phase_done("cluster")
        config_path = os.path.join(workspace, "orchestra.yaml")
        with open(config_path, "w") as handle:
            yaml.safe_dump({**ORCHESTRA, "storage": storage_uri, "http": {"host": "127.0.0.1", "port": port}}, handle)
        os.chdir(REPO)  # the checkout is what gets uploaded
        deploy_and_wait(Path(config_path), None, 300, address=api)
        phase_done("deploy")
        key, _ = KeyStore(Storage(storage_uri)).create("admin", "two-nodes")
        nodes_before = sorted(n["NodeID"] for n in ray_nodes(api))
        report.update(nodes=nodes_before, replica_nodes=alive_replicas(api), status=route(port, key), doomed=doomed.node_id)
        response = httpx.post(f"http://127.0.0.1:{port}/v1/route", json={"text": "I love this so much"}, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        report["body"] = response.json()
        phase_done("first_answers")

        recipe = write_recipe(workspace, storage_uri)
        job = local.run_job(f"python -m train.finetune --config {recipe}", {"BATON_STORAGE": storage_uri}, follow=False, address=api)
        client = JobSubmissionClient(api)
        done = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
        during: list[int] = []

        def finished() -> str | None:
            during.append(route(port, key))
            status = client.get_job_status(job)
            return status.value if status in done else None

        report["job"] = wait_for("training job", finished, JOB_DEADLINE_S, 2)
        phase_done("training_job")
        report["statuses_during_training"] = sorted(set(during))
        report["answered_during_training"] = len(during)
        if report["job"] != "SUCCEEDED":
            report["job_logs"] = client.get_job_logs(job)[-3000:]
        else:
            registry = ModelRegistry(Storage(storage_uri))
            manifest = registry.manifest(*registry.resolve("two-node-sentiment"))
            report["trained"] = {"train_rows": manifest.metrics.get("train_rows"), "accuracy": manifest.metrics.get("accuracy"), "dataset_rows": manifest.dataset.rows}

        # The node dies after the job: the nodes of a cluster_utils cluster share one session
        # directory, and a dying node's runtime-env agent deletes the unpacked working
        # directories of its workers under the other nodes' processes, which a real cluster's
        # separate machines never see.
        cluster.remove_node(doomed)
        replacement = cluster.add_node(**node_args())
        phase_done("node_replaced")
        report["replacement"] = replacement.node_id
        survivors = {head_id(cluster), replacement.node_id}

        def rescheduled() -> list[str] | None:
            nodes = alive_replicas(api)
            return nodes if len(nodes) == 2 and set(nodes) <= survivors else None

        report["replica_nodes_after"] = wait_for("replicas rescheduled", rescheduled, RECOVERY_DEADLINE_S)
        phase_done("rescheduled")
        report["status_after"] = wait_for("route answers", lambda: route(port, key) == 200 and 200, 60)
        phase_done("answers_after")
    finally:
        print(REPORT_PREFIX + json.dumps(report), flush=True)
        cluster.shutdown()
        time.sleep(1)
        phase_done("shutdown")
        print(f"phases (s): {json.dumps(report['phase_s'])}", file=sys.stderr, flush=True)
    return 0


def node_args() -> dict:
    """One CPU, and ports of its own for the node's dashboard agent: the test session's Ray
    instance already holds the default ones, and a node whose agent cannot listen takes no job
    ("No available agent to submit job")."""
    return {"num_cpus": 1, "object_store_memory": 128 * 1024**2, "dashboard_agent_listen_port": free_port(), "metrics_export_port": free_port()}


def ray_nodes(api: str) -> list[dict]:
    from ray.util.state import list_nodes

    return [{"NodeID": n.node_id} for n in list_nodes(address=api, filters=[("state", "=", "ALIVE")])]


def head_id(cluster: Cluster) -> str:
    return cluster.head_node.node_id


if __name__ == "__main__":
    sys.exit(main())
