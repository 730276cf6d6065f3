"""Watching baton with a real Prometheus (Debian's package): the committed scrape config and
alert rules pass promtool, the alerts fire on bad series only, and a Prometheus scraping the
shared test instance answers queries with baton's series per agent and version."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.conftest import REPO, free_port
from tests.unit.test_grafana_dashboard import defined_metric_names, exprs, family

pytestmark = pytest.mark.slow

CONFIGS = REPO / "configs" / "prometheus"
ALERTS = CONFIGS / "alerts.yml"
METRIC_NAME = r"\bbaton_[a-z0-9_]+"


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not on PATH (Debian: apt-get install --no-install-recommends prometheus; `make prometheus` does it as root)"
        if os.environ.get("BATON_REQUIRE_PROMETHEUS"):
            pytest.fail(f"{reason}, and BATON_REQUIRE_PROMETHEUS is set")
        pytest.skip(f"{reason}; set BATON_REQUIRE_PROMETHEUS=1 to make this a failure")
    return path


@pytest.fixture(scope="module")
def promtool() -> str:
    return binary("promtool")


@pytest.fixture(scope="module")
def prometheus() -> str:
    return binary("prometheus")


def run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=False, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_the_alert_rules_pass_promtool(promtool):
    checked = run([promtool, "check", "rules", str(ALERTS)])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout


def test_the_scrape_config_passes_promtool_and_finds_the_key_beside_the_repository(promtool, tmp_path):
    # The committed files in a copy of the repository layout, checked from another directory:
    # the rule file and ../../.baton/dev-key resolve against the config file, not the working directory.
    copy = tmp_path / "configs" / "prometheus"
    shutil.copytree(CONFIGS, copy)
    key = tmp_path / ".baton" / "dev-key"
    key.parent.mkdir()
    key.write_text("a-dev-key\n")

    checked = run([promtool, "check", "config", str(copy / "prometheus.yml")], cwd=Path("/"))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    key.unlink()
    missing = run([promtool, "check", "config", str(copy / "prometheus.yml")], cwd=Path("/"))
    assert missing.returncode != 0 and str(key) in missing.stdout + missing.stderr


def test_the_alert_rules_name_only_metrics_baton_defines():
    defined = defined_metric_names()
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    named = {name for rule in rules for name in re.findall(METRIC_NAME, rule["expr"])}
    assert {name for name in named if family(name) not in defined} == set()


# Two agents' series for 30 minutes: sentiment v2 is bad on every count, the rest is healthy.
BAD = {"agent": "sentiment", "version": "v2"}
SERIES = {
    'up{job="baton", instance="127.0.0.1:8000"}': "1x30",
    'up{job="baton", instance="127.0.0.1:8001"}': "0x30",
    'baton_requests_total{agent="sentiment", version="v2", status="200"}': "0+60x30",
    'baton_requests_total{agent="sentiment", version="v2", status="500"}': "0+10x30",
    'baton_requests_total{agent="sentiment", version="v1", status="200"}': "0+600x30",
    'baton_requests_total{agent="sentiment", version="v1", status="500"}': "0+1x30",
    'baton_request_latency_seconds_bucket{agent="sentiment", version="v2", le="2.5"}': "0+10x30",
    'baton_request_latency_seconds_bucket{agent="sentiment", version="v2", le="5"}': "0+100x30",
    'baton_request_latency_seconds_bucket{agent="sentiment", version="v2", le="+Inf"}': "0+100x30",
    'baton_request_latency_seconds_bucket{agent="sentiment", version="v1", le="0.1"}': "0+100x30",
    'baton_request_latency_seconds_bucket{agent="sentiment", version="v1", le="2.5"}': "0+100x30",
    'baton_request_latency_seconds_bucket{agent="sentiment", version="v1", le="+Inf"}': "0+100x30",
    'baton_drift_alert{agent="sentiment", version="v2", kind="prediction"}': "1x30",
    'baton_drift_alert{agent="sentiment", version="v1", kind="prediction"}': "0x30",
    'baton_rollouts_failed_total{agent="sentiment"}': "0x10 1x20",
    'baton_rollouts_failed_total{agent="language"}': "0x30",
    'baton_shadow_agreement{agent="sentiment", version="v2"}': "0.5x30",
    'baton_shadow_agreement{agent="language", version="v3"}': "0.97x30",
}
EXPECTED_AT_15M = {
    "BatonDown": [{"job": "baton", "instance": "127.0.0.1:8001", "severity": "critical"}],
    "BatonHighErrorRate": [{**BAD, "severity": "critical"}],
    "BatonHighLatencyP95": [{**BAD, "severity": "warning"}],
    "BatonDrift": [{**BAD, "kind": "prediction", "severity": "warning"}],
    "BatonRolloutFailed": [{"agent": "sentiment", "severity": "critical"}],
    "BatonShadowDisagreement": [{**BAD, "severity": "warning"}],
}


def test_each_alert_fires_on_the_bad_version_and_stays_quiet_on_healthy_ones(promtool, tmp_path):
    rules = yaml.safe_load(ALERTS.read_text())
    names = [rule["alert"] for group in rules["groups"] for rule in group["rules"]]
    assert sorted(names) == sorted(EXPECTED_AT_15M)
    # promtool compares annotations too; the expressions, durations and labels are what is under test.
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    unit = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": series, "values": values} for series, values in SERIES.items()],
            "alert_rule_test": [
                {"eval_time": "15m", "alertname": name, "exp_alerts": [{"exp_labels": labels} for labels in expected]}
                for name, expected in EXPECTED_AT_15M.items()
            ],
        }],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(unit))

    tested = run([promtool, "test", "rules", "test.yml"], cwd=tmp_path)

    assert tested.returncode == 0, tested.stdout + tested.stderr


class RunningPrometheus:
    """A Prometheus process under test: its URL, and waiting on it with its log at hand."""

    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url, self.process, self.log = url, process, log

    def eventually(self, check: Callable[[], Any], what: str, timeout_s: float = 30) -> Any:
        """The first truthy value of ``check`` within ``timeout_s``; fails with Prometheus's log otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"Prometheus exited:\n{self.log.read_text()}"
            try:
                value = check()
            except httpx.HTTPError:
                value = None
            if value:
                return value
            time.sleep(0.25)
        pytest.fail(f"{what}: not within {timeout_s:g} s; Prometheus log:\n{self.log.read_text()}")

    def query(self, expr: str) -> list[dict]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def get(self, path: str) -> Any:
        return httpx.get(f"{self.url}{path}", timeout=5).json()["data"]


@pytest.fixture
def running_prometheus(prometheus, baton_url, admin_key, tmp_path) -> Iterator[RunningPrometheus]:
    """A Prometheus scraping the shared test instance every second, with baton's alert rules."""
    key = tmp_path / "admin-key"
    key.write_text(admin_key + "\n")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{
            "job_name": "baton",
            "static_configs": [{"targets": [baton_url.removeprefix("http://")]}],
            "authorization": {"type": "Bearer", "credentials_file": str(key)},
        }],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "prometheus.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address={address}", "--log.level=warn"],
            stdout=output, stderr=subprocess.STDOUT,
        )
    running = RunningPrometheus(f"http://{address}", process, log)
    try:
        running.eventually(lambda: httpx.get(f"{running.url}/-/ready", timeout=2).status_code == 200, "Prometheus ready")
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def as_instant_query(expr: str) -> str:
    """A dashboard expression with Grafana's variables filled in as Grafana would."""
    for variable, value in {"$agent": ".*", "$version": ".*", "$__rate_interval": "1m", "$__range": "1h"}.items():
        expr = expr.replace(variable, value)
    return expr


def test_prometheus_scrapes_baton_and_answers_queries_per_agent_and_version(client, running_prometheus):
    prometheus = running_prometheus
    for text in ("Bonjour tout le monde", "Das ist ein deutscher Satz", "This is plainly English"):
        assert client.post("/v1/agents/language/invoke", json={"text": text}).status_code == 200

    def target_up() -> bool:
        targets = prometheus.get("/api/v1/targets")["activeTargets"]
        return bool(targets) and all(target["health"] == "up" for target in targets)

    prometheus.eventually(target_up, "the baton target up")

    def language_series() -> list[dict] | None:
        # Other tests' bad requests to this agent (422s) are series of their own status.
        series = prometheus.query('baton_requests_total{agent="language",status="200"}')
        return series if sum(float(s["value"][1]) for s in series) >= 3 else None

    series = prometheus.eventually(language_series, "3 language requests in baton_requests_total")
    assert all(s["metric"]["job"] == "baton" and s["metric"]["version"] and s["metric"]["status"] == "200" for s in series)

    groups = prometheus.get("/api/v1/rules")["groups"]
    assert [(group["name"], len(group["rules"])) for group in groups] == [("baton", 6)]

    # Every dashboard query is valid PromQL on the real server; the traffic panel shows the calls.
    for expr in exprs():
        prometheus.query(as_instant_query(expr))
    traffic = as_instant_query(exprs()[0])
    assert traffic.startswith("sum by (agent, version) (rate(baton_requests_total")
    prometheus.eventually(
        lambda: [s for s in prometheus.query(traffic) if s["metric"]["agent"] == "language"], "the dashboard's traffic for language"
    )
