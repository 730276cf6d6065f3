"""Two local nodes: baton deployed as `baton up --address` does, its specialist spread over
both, a fine-tuning job training beside it while it answers, then a node that dies: the
replicas come back on the node that replaces it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.conftest import REPO
from tests.integration.two_node_cluster import DATA_ROWS, REPORT_PREFIX

pytestmark = [pytest.mark.slow, pytest.mark.own_cluster]


@pytest.fixture(scope="module")
def report() -> dict:
    # Its own process: this session's shared Ray instance cannot host a second cluster.
    run = subprocess.run([sys.executable, "-m", "tests.integration.two_node_cluster"], cwd=REPO, capture_output=True, text=True, timeout=900)
    # Ray prints its own lines on shutdown, so the report line is found by its prefix.
    line = next((line for line in run.stdout.splitlines() if line.startswith(REPORT_PREFIX)), None)
    assert run.returncode == 0 and line is not None, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(line[len(REPORT_PREFIX) :])


def test_deploy_to_an_existing_cluster_spreads_replicas_over_both_nodes(report):
    assert len(report["nodes"]) == 2
    assert sorted(report["replica_nodes"]) == sorted(report["nodes"]), report
    assert report["status"] == 200
    assert report["body"]["agent"] == "sentiment" and report["body"]["result"]["label"] == "POSITIVE"


def test_replicas_are_rescheduled_when_a_node_dies(report):
    after = report["replica_nodes_after"]
    assert report["doomed"] not in after and report["replacement"] in after and len(after) == 2, report
    assert report["status_after"] == 200


def test_training_job_beside_serve_reads_its_shards_and_finishes(report):
    assert report["job"] == "SUCCEEDED", report.get("job_logs")
    assert report["statuses_during_training"] == [200] and report["answered_during_training"] > 0
    trained = report["trained"]
    # 10% held out for validation; each of the 2 workers trained on its equal half of the rest.
    train_rows = DATA_ROWS - round(DATA_ROWS * 0.1)
    assert trained["train_rows"] == train_rows - train_rows % 2
    assert trained["dataset_rows"] == DATA_ROWS
    assert trained["accuracy"] >= 0.9, trained
