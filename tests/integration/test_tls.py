"""HTTPS on the front door from ``http.tls``: a client that trusts the test CA is answered,
one that does not is refused, and plain HTTP gets no answer from baton."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.conftest import REPO
from tests.integration.tls_front_door import REPORT_PREFIX

pytestmark = [pytest.mark.slow, pytest.mark.own_cluster]


def test_the_front_door_speaks_https_with_the_configured_certificate():
    # Its own process: Serve's proxy takes its TLS files when it starts, and this session's started without.
    run = subprocess.run([sys.executable, "-m", "tests.integration.tls_front_door"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(line for line in run.stdout.splitlines() if line.startswith(REPORT_PREFIX))
    report = json.loads(line[len(REPORT_PREFIX) :])
    assert report["https"]["status"] == 200, report
    assert report["https"]["body"]["agent"] == "sentiment" and report["https"]["body"]["result"]["label"] == "POSITIVE"
    assert report["https_healthz"] == {"status": 200, "body": {"status": "ok"}}
    assert report["https_untrusted"] == {"error": "ConnectError"}
    assert "status" not in report["plain_http"], report  # no HTTP answer without TLS
