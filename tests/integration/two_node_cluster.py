"""Run in a subprocess by test_two_nodes.py: a two-node ``ray.cluster_utils.Cluster``, baton
deployed on it with a two-replica specialist spread one per node; prints placement as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import httpx
import ray
from ray import serve
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from cluster.config import OrchestraConfig
from cluster.keys import KeyStore
from cluster.storage import Storage
from serve.builder import APP_NAME, build_application, cluster_env
from tests.integration.conftest import free_port

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


def main() -> int:
    os.environ.update(cluster_env())
    os.environ.pop("RAY_ADDRESS", None)
    storage_uri = tempfile.mkdtemp(prefix="baton-two-nodes-")
    head = {"num_cpus": 1, "object_store_memory": 128 * 1024**2, "dashboard_port": free_port()}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    cluster.add_node(num_cpus=1, object_store_memory=128 * 1024**2)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = OrchestraConfig.model_validate({**ORCHESTRA, "storage": storage_uri})
        key, _ = KeyStore(Storage(storage_uri)).create("admin", "two-nodes")
        serve.run(build_application(config, storage_uri), name=APP_NAME, route_prefix="/")
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/route",
            json={"text": "I love this so much"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        replicas = [
            a for a in list_actors(filters=[("state", "=", "ALIVE")]) if a.class_name.endswith("sentiment.v1")
        ]
        print(
            REPORT_PREFIX + json.dumps(
                {
                    "nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]),
                    "replica_nodes": sorted(a.node_id for a in replicas),
                    "status": response.status_code,
                    "body": response.json(),
                }
            ),
            flush=True,
        )
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
        time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
