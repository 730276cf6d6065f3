"""Guarded rollouts on the shared Serve app: a candidate deployed as a Serve application of its
own, promoted through the steps while the monitor and the rollout controller are killed, and a
broken candidate rolled back by its guard. The ``reviews`` agent's models are test doubles
(tests/unit/classifier_doubles.py): real tiny BERTs, one deliberately broken."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import ray

from serve.control import MONITOR, NAMESPACE, ROLLOUTS

pytestmark = pytest.mark.slow
TEXTS = ["a wonderful film", "boring and far too long", "great acting", "awful dialogue", "a joy to watch", "a waste of time"]


class Traffic:
    """Steady invocations of the reviews agent from a thread, as callers would make them."""

    def __init__(self, client):
        # A key of its own: the admin key's limit holds across both replicas, and this thread
        # alone would spend it, refusing the test's own calls with 429.
        created = client.post("/v1/admin/keys", json={"role": "invoke", "name": "rollout-traffic", "rate_limit": {"requests_per_s": 200, "burst": 200}})
        self.client = httpx.Client(base_url=str(client.base_url), headers={"Authorization": f"Bearer {created.json()['key']}"}, timeout=60)
        self.statuses, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            response = self.client.post("/v1/agents/reviews/invoke", json={"text": TEXTS[index % len(TEXTS)]})
            self.statuses.append(response.status_code)
            index += 1
            time.sleep(0.02)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.client.close()


def wait_for_state(client, rollout_id: str, states: set[str], timeout_s: float = 240) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get(f"/v1/admin/rollouts/{rollout_id}")
        if response.status_code == 200 and response.json()["state"] in states:
            return response.json()
        time.sleep(1)
    raise AssertionError(f"rollout {rollout_id} did not reach {states}: {client.get(f'/v1/admin/rollouts/{rollout_id}').text[:2000]}")


def kill(name: str) -> None:
    """Kill a control actor as a crash would; Ray restarts it (max_restarts=-1)."""
    ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=False)


def test_a_good_candidate_is_promoted_although_the_monitor_and_the_controller_die_midway(client):
    body = {"agent": "reviews", "candidate": "registry://tiny:v2", "steps": [50, 100], "bake_s": 6, "min_requests": 20,
            "guards": ["error_rate<0.05", "p95_ms<5x"], "deadline_s": 180}
    with Traffic(client) as traffic:
        started = client.post("/v1/admin/rollouts", json=body)
        assert started.status_code == 201, started.text
        rollout_id = started.json()["id"]
        again = client.post("/v1/admin/rollouts", json=body)
        assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
        wait_for_state(client, rollout_id, {"stepping"})
        kill(MONITOR)
        time.sleep(3)
        kill(ROLLOUTS)
        final = wait_for_state(client, rollout_id, {"succeeded", "failed", "aborted"})
    assert final["state"] == "succeeded", final
    # Lost monitor data never passed a guard: every pass saw enough requests in a complete window.
    passes = [c for c in final["checks"] if c["verdict"] == "pass"]
    assert passes and all(c["verdict"] != "fail" for c in final["checks"])
    assert client.get("/v1/admin/models/tiny").json()["aliases"]["champion"] == "v2"
    weights = {v["version"]: v["weight"] for v in next(a for a in client.get("/v1/agents").json()["agents"] if a["name"] == "reviews")["versions"]}
    assert weights[final["candidate_version"]] == 100 and weights["v1"] == 0
    assert set(traffic.statuses) == {200}, sorted(set(traffic.statuses))
    actions = [r["endpoint"] for r in client.get("/v1/admin/audit", params={"limit": 1000}).json()["records"] if r["endpoint"].startswith("rollout.")]
    assert {"rollout.start", "rollout.step", "rollout.promote"} <= set(actions)


def test_a_broken_candidate_is_rolled_back_by_its_guard(client):
    current = next(a for a in client.get("/v1/agents").json()["agents"] if a["name"] == "reviews")
    serving = max(current["versions"], key=lambda v: v["weight"])["version"]
    body = {"agent": "reviews", "candidate": "registry://tiny:v3", "steps": [25, 100], "bake_s": 6, "min_requests": 20,
            "guards": ["error_rate<0.05", "labels>0.001"], "deadline_s": 180}
    with Traffic(client):
        started = client.post("/v1/admin/rollouts", json=body)
        assert started.status_code == 201, started.text
        final = wait_for_state(client, started.json()["id"], {"succeeded", "failed", "aborted"})
    assert final["state"] == "failed" and final["failed_check"]["metric"] == "labels", final
    assert final["failed_check"]["verdict"] == "fail" and final["failed_check"]["observed"] < 0.001

    def rolled_back() -> bool:
        # Each ingress replica adopts the shared table within a second of the rollback.
        agent = next(a for a in client.get("/v1/agents").json()["agents"] if a["name"] == "reviews")
        weights = {v["version"]: v["weight"] for v in agent["versions"]}
        return weights.get(final["candidate_version"], 0) == 0 and weights[serving] == 100

    deadline = time.monotonic() + 10
    while not rolled_back() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert rolled_back()
    assert client.get("/v1/admin/models/tiny").json()["aliases"]["champion"] == "v2"
    listed = client.get("/v1/admin/rollouts").json()["rollouts"]
    assert {r["id"] for r in listed} >= {final["id"]}
