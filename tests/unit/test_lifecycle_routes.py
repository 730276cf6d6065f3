"""The lifecycle's HTTP surface without Ray (API.md §10): shadow copies, feedback into the
monitor's accuracy, the review queue fed through the audit actor, A/B reports, drift, and
operator actions audited through one record builder. Agents are agent_doubles' EchoTargets."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient

from cluster.config import OrchestraConfig
from cluster.keys import KeyStore
from cluster.registry import ModelRegistry
from cluster.storage import Storage
from actors.router import SemanticRouter
from actors.sessions import SqliteSessionStore
from serve.app import create_app
from serve.control import ControlPlane
from serve.ingress import Gateway
from tests.unit.test_ingress import CONFIG, agents, embed  # noqa: F401 - fixtures

REVIEWED = {**CONFIG, "agents": [
    {**CONFIG["agents"][1], "review": {"sample_share": 1.0}}, *[a for i, a in enumerate(CONFIG["agents"]) if i != 1]
]}


@pytest.fixture
def gateway(tmp_path, embed, agents):  # noqa: F811
    config = OrchestraConfig.model_validate({**REVIEWED, "storage": str(tmp_path)})
    storage = Storage(str(tmp_path))
    return Gateway(
        config, keys=KeyStore(storage), registry=ModelRegistry(storage),
        router=SemanticRouter(config.agents, config.router, embed), sessions=SqliteSessionStore(tmp_path / "s.sqlite3"),
        control=ControlPlane.in_process(config, str(tmp_path)), targets=agents, replica="test",
    )


@pytest.fixture
def http(gateway):
    key, _ = gateway.keys.create("admin", "unit")
    with TestClient(create_app(gateway), headers={"Authorization": f"Bearer {key}"}) as client:
        yield client


def wait_for(check, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def audited(http, request_id: str) -> dict:
    return wait_for(lambda: {r["request_id"]: r for r in http.get("/v1/admin/audit", params={"limit": 1000}).json()["records"]}.get(request_id))


def test_shadow_copies_are_compared_and_shown_in_stats_and_the_change_is_audited(http, agents):  # noqa: F811
    answer = http.put("/v1/admin/agents/banking/shadow", json={"version": "v2", "percent": 100}, headers={"X-Request-ID": "shadow-on"})
    assert answer.status_code == 200 and answer.json() == {"agent": "banking", "shadow": {"version": "v2", "percent": 100}}
    http.put("/v1/admin/agents/banking/traffic", json={"weights": {"v1": 100, "v2": 0}})
    for i in range(5):
        assert http.post("/v1/agents/banking/invoke", json={"text": f"balance {i}"}).json()["version"] == "v1"
    def shadow_of_v2():
        shadow = http.get("/v1/admin/stats").json()["agents"].get("banking", {}).get("v2", {}).get("shadow")
        return shadow if shadow and shadow["requests"] == 5 else None

    shadow = wait_for(shadow_of_v2)
    # The doubles label answers with their own names, so the two versions never agree.
    assert shadow["requests"] == 5 and shadow["agreement"] == 0.0
    assert len(agents["banking"]["v2"].seen) == 5
    record = audited(http, "shadow-on")
    assert record["endpoint"] == "admin.shadow.set" and record["agent"] == "banking" and record["version"] == "v2"
    assert json.loads(record["output"]) == {"before": None, "after": {"version": "v2", "percent": 100}}
    refused = http.put("/v1/admin/agents/banking/shadow", json={"version": "v9", "percent": 10})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"
    assert http.put("/v1/admin/agents/ghost/shadow", json={"version": "v1", "percent": 10}).status_code == 404


def test_feedback_reaches_the_monitor_as_accuracy_and_is_refused_twice(http):
    http.put("/v1/admin/agents/banking/traffic", json={"weights": {"v1": 100, "v2": 0}})
    http.post("/v1/agents/banking/invoke", json={"text": "balance"}, headers={"X-Request-ID": "fb-1"})
    audited(http, "fb-1")
    accepted = http.post("/v1/feedback", json={"request_id": "fb-1", "correct": True})
    assert accepted.status_code == 202 and accepted.json()["request_id"] == "fb-1"
    again = http.post("/v1/feedback", json={"request_id": "fb-1", "reward": 0.5})
    assert again.status_code == 409
    assert http.post("/v1/feedback", json={"request_id": "no-such-request", "correct": True}).status_code == 404
    report = wait_for(lambda: (r := http.get("/v1/admin/experiments/banking").json())["versions"]["v1"].get("accuracy") is not None and r)
    assert report["versions"]["v1"]["accuracy"] == 1.0 and report["agent"] == "banking"


def test_sampled_requests_are_queued_for_review_with_pii_redacted_and_answers_audited(http, gateway):
    text = "my email is jane.doe@example.com, what's my balance"
    http.put("/v1/admin/agents/banking/traffic", json={"weights": {"v1": 100, "v2": 0}})
    http.post("/v1/agents/banking/invoke", json={"text": text}, headers={"X-Request-ID": "rv-1"})
    items = wait_for(lambda: http.get("/v1/admin/review", params={"agent": "banking"}).json()["items"])
    item = next(i for i in items if i["request_id"] == "rv-1")
    assert "jane.doe@example.com" not in item["input_text"] and "[EMAIL]" in item["input_text"]
    assert item["version"] == "v1"
    reviewer, _ = gateway.keys.create("review", "a person")
    answered = http.post("/v1/admin/review/rv-1", json={"label": "banking"}, headers={"Authorization": f"Bearer {reviewer}", "X-Request-ID": "rv-answer"})
    assert answered.status_code == 200 and answered.json()["label"] == "banking"
    assert gateway.review.labelled_rows("banking")[0]["label"] == "banking"
    record = audited(http, "rv-answer")
    assert record["endpoint"] == "review.answer" and json.loads(record["output"])["after"] == {"state": "answered", "label": "banking"}
    # A review key may review, and nothing else.
    assert http.get("/v1/admin/stats", headers={"Authorization": f"Bearer {reviewer}"}).status_code == 403


def test_rollouts_need_the_cluster_and_drift_is_empty_without_references(http):
    body = {"agent": "banking", "candidate": "registry://m:v2", "steps": [50, 100]}
    answer = http.post("/v1/admin/rollouts", json=body)
    assert answer.status_code == 503 and "Ray cluster" in answer.json()["error"]["message"]
    bad = http.post("/v1/admin/rollouts", json={**body, "steps": [50, 40]})
    assert bad.status_code == 422
    assert http.get("/v1/admin/drift").json() == {"agents": {}}


def test_metrics_show_each_versions_weight(http):
    http.put("/v1/admin/agents/banking/traffic", json={"weights": {"v1": 30, "v2": 70}})
    text = http.get("/metrics").text
    assert 'baton_rollout_weight{agent="banking",version="v2"} 70.0' in text
