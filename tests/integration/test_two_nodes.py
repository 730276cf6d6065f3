"""Two local nodes: a specialist's replicas land on both and the route still answers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.conftest import REPO
from tests.integration.two_node_cluster import REPORT_PREFIX

pytestmark = pytest.mark.slow


def test_specialist_replicas_spread_over_two_nodes():
    # Its own process: this session's shared Ray instance cannot host a second cluster.
    run = subprocess.run(
        [sys.executable, "-m", "tests.integration.two_node_cluster"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # Ray prints its own lines on shutdown, so the report line is found by its prefix.
    line = next(line for line in run.stdout.splitlines() if line.startswith(REPORT_PREFIX))
    report = json.loads(line[len(REPORT_PREFIX) :])
    assert len(report["nodes"]) == 2
    assert len(report["replica_nodes"]) == 2
    assert set(report["replica_nodes"]) == set(report["nodes"]), report
    assert report["status"] == 200
    assert report["body"]["agent"] == "sentiment" and report["body"]["result"]["label"] == "POSITIVE"
