"""The Grafana dashboard (configs/grafana/baton-dashboard.json) is importable JSON whose panels
query only metrics baton defines, filtered by its agent and version variables."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from actors.monitor import Monitor

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "configs" / "grafana" / "baton-dashboard.json"
METRIC = re.compile(r"\bbaton_[a-z0-9_]+")
# What prometheus_client appends to a family's name in the exposition.
SAMPLE_SUFFIXES = ("_bucket", "_count", "_sum", "_total")
# Every section the issue asks the dashboard to show, by the metric that carries it.
SHOWN = {
    "baton_requests_total", "baton_request_latency_seconds_bucket", "baton_rollout_weight",
    "baton_shadow_agreement", "baton_drift_alert", "baton_cost_cpu_seconds_total", "baton_cost_gpu_seconds_total",
    "baton_cost_input_tokens_total", "baton_cost_output_tokens_total",
}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def queries() -> list[tuple[str, str]]:
    """(panel title and target, expr) of every query."""
    return [(f"{panel['title']} {target['refId']}", target["expr"]) for panel in panels() for target in panel["targets"]]


def exprs() -> list[str]:
    return [expr for _, expr in queries()]


def by_panel(selected: list[tuple[str, str]]):
    return pytest.mark.parametrize("expr", [expr for _, expr in selected], ids=[where for where, _ in selected])


def family(sample_name: str) -> str:
    for suffix in SAMPLE_SUFFIXES:
        if sample_name.endswith(suffix):
            return sample_name.removesuffix(suffix)
    return sample_name


def defined_metric_names() -> set[str]:
    """The families a fresh monitor exposes (each with its TYPE line, even without samples),
    and the metric names quoted in serve/, where the ingress defines the rollout metrics."""
    exposed = re.findall(r"^# TYPE (baton_[a-z0-9_]+) ", Monitor().prometheus().decode(), flags=re.MULTILINE)
    quoted = re.compile(r"""["'](baton_[a-z0-9_]+)["']""")
    in_serve = {name for path in REPO.joinpath("serve").rglob("*.py") for name in quoted.findall(path.read_text())}
    return {family(name) for name in exposed} | {family(name) for name in in_serve}


def test_the_dashboard_is_an_importable_grafana_dashboard():
    board = dashboard()
    assert board["schemaVersion"] >= 36 and board["uid"] and board["title"]
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    assert {v["name"] for v in board["templating"]["list"]} == {"agent", "version"}
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]


def test_every_section_the_issue_asks_for_has_a_panel():
    named = {name for expr in exprs() for name in METRIC.findall(expr)}
    assert SHOWN <= named, SHOWN - named
    assert any("histogram_quantile(0.5," in expr for expr in exprs())
    assert any("histogram_quantile(0.95," in expr for expr in exprs())


@by_panel(queries())
def test_each_query_names_only_metrics_baton_defines(expr):
    defined = defined_metric_names()
    unknown = [name for name in METRIC.findall(expr) if family(name) not in defined]
    assert not unknown, f"{unknown}: neither the monitor exposes them nor serve/ names them"


@by_panel([(where, expr) for where, expr in queries() if "version" in expr])
def test_per_version_queries_follow_the_agent_and_version_variables(expr):
    for selector in re.findall(r"baton_[a-z0-9_]+\{([^}]*)\}", expr):
        assert 'agent=~"$agent"' in selector and 'version=~"$version"' in selector, expr
