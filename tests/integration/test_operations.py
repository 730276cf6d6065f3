"""Operations (API.md §6-7): keys, stats, metrics, traffic changes under load, audit."""

from __future__ import annotations

import concurrent.futures as futures
import threading
import time
from collections import Counter

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.audit import read_audit
from cluster.storage import Storage

pytestmark = pytest.mark.slow


def wait_for_audit(storage_uri: str, request_ids: set[str], timeout_s: float = 15) -> dict[str, dict]:
    deadline = time.monotonic() + timeout_s
    found: dict[str, dict] = {}
    while time.monotonic() < deadline:
        records = read_audit(Storage(storage_uri), request_ids=sorted(request_ids), limit=len(request_ids) + 10)
        found = {r["request_id"]: r for r in records}
        if request_ids <= set(found):
            break
        time.sleep(0.3)
    return found


def test_created_key_is_shown_once_and_stored_hashed(client, baton_url, storage_uri):
    response = client.post("/v1/admin/keys", json={"role": "invoke", "name": "ci-bot"})
    assert response.status_code == 201
    created = response.json()
    assert set(created) >= {"key", "id"}
    stored = Storage(storage_uri)
    files = stored.fs.glob(f"{stored.path('auth', 'keys')}/*.json")
    contents = "".join(stored.fs.cat(f).decode() for f in files)
    assert created["key"] not in contents and created["id"] in contents
    use = httpx.post(f"{baton_url}/v1/route", json={"text": "ok", "agent": "sentiment"}, headers={"Authorization": f"Bearer {created['key']}"})
    assert use.status_code == 200


def test_stats_and_metrics_count_requests(client):
    for _ in range(3):
        assert client.post("/v1/agents/entities/invoke", json={"text": "Ada Lovelace lived in London."}).status_code == 200
    time.sleep(1.0)
    stats = client.get("/v1/admin/stats").json()
    window = stats["agents"]["entities"]["v1"]["last_minute"]
    total = stats["agents"]["entities"]["v1"]["since_start"]
    assert total["requests"] >= 3 and window["requests"] >= 3
    assert total["errors"] == 0 and total["error_rate"] == 0
    assert 0 < total["p50_ms"] <= total["p95_ms"] <= total["p99_ms"]
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
    requests = families["baton_requests"].samples
    entity_ok = [s for s in requests if s.labels.get("agent") == "entities" and s.labels.get("status") == "200" and s.name.endswith("_total")]
    assert entity_ok and entity_ok[0].value >= 3
    assert "baton_request_latency_seconds" in families
    assert any(s.labels.get("routed_by") == "direct" for s in families["baton_route_decisions"].samples)


def test_metrics_need_a_key_by_default(baton_url):
    assert httpx.get(f"{baton_url}/metrics").status_code == 401


def test_weight_change_under_load_drops_nothing_and_is_audited(client, baton_url, new_key, storage_uri):
    keys = [new_key("invoke") for _ in range(8)]
    stop = threading.Event()
    results: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def load(worker: int) -> None:
        with httpx.Client(base_url=baton_url, headers={"Authorization": f"Bearer {keys[worker]}"}, timeout=60) as http:
            while not stop.is_set():
                response = http.post("/v1/agents/sentiment/invoke", json={"text": "pretty good overall"})
                with lock:
                    results.append((response.status_code, response.json().get("version")))
                time.sleep(0.05)

    with futures.ThreadPoolExecutor(8) as pool:
        running = [pool.submit(load, w) for w in range(8)]
        time.sleep(1.5)
        changes = [{"v1": 100, "v2": 0}, {"v1": 0, "v2": 100}, {"v1": 50, "v2": 50}]
        for weights in changes:
            response = client.put("/v1/admin/agents/sentiment/traffic", json={"weights": weights})
            assert response.status_code == 200 and response.json()["weights"] == weights
            time.sleep(1.5)
        stop.set()
        for future in running:
            future.result()
    statuses = Counter(status for status, _ in results)
    assert statuses == Counter({200: len(results)}), statuses
    assert len(results) > 50
    assert {version for _, version in results} == {"v1", "v2"}
    agents = {a["name"]: a for a in client.get("/v1/agents").json()["agents"]}
    assert {v["version"]: v["weight"] for v in agents["sentiment"]["versions"]} == {"v1": 50, "v2": 50}
    actions = read_audit(Storage(storage_uri), endpoint="admin.traffic.set", limit=50)
    afters = [r["output"] for r in actions]
    assert any('"v2": 100' in a for a in afters) and all('"before"' in a for a in afters)


def test_only_v2_serves_after_shift_and_sessions_are_sticky(client):
    assert client.put("/v1/admin/agents/sentiment/traffic", json={"weights": {"v1": 0, "v2": 100}}).status_code == 200
    # The other ingress replica adopts the shared table within a second (Gateway._follow_traffic).
    time.sleep(1.5)
    versions = {client.post("/v1/agents/sentiment/invoke", json={"text": "nice"}).json()["version"] for _ in range(10)}
    assert versions == {"v2"}
    assert client.put("/v1/admin/agents/sentiment/traffic", json={"weights": {"v1": 50, "v2": 50}}).status_code == 200
    time.sleep(1.5)
    for session in ("alpha", "beta", "gamma", "delta"):
        seen = {
            client.post("/v1/route", json={"text": "I love it", "agent": "sentiment", "session_id": session}).json()["version"]
            for _ in range(5)
        }
        assert len(seen) == 1, (session, seen)


def test_every_request_id_the_client_saw_is_audited(client, baton_url, storage_uri):
    seen: set[str] = set()
    bodies = [
        {"text": "I love this"},
        {"text": "Bonjour tout le monde"},
        {"text": "mail me at jane.doe@example.com", "agent": "entities"},
        {"text": "x", "agent": "ghost"},
        {"text": ""},
    ]
    for body in bodies:
        seen.add(client.post("/v1/route", json=body).headers["x-request-id"])
    seen.add(httpx.post(f"{baton_url}/v1/route", json={"text": "no key"}).headers["x-request-id"])
    found = wait_for_audit(storage_uri, seen)
    assert seen <= set(found), seen - set(found)
    statuses = sorted(r["status_code"] for r in found.values())
    assert statuses == [200, 200, 200, 401, 404, 422]
    pii = next(r for r in found.values() if r["agent"] == "entities" and r["status_code"] == 200)
    assert "jane.doe@example.com" not in (pii["input_text"] or "") and "[EMAIL]" in pii["input_text"]
    assert "jane.doe@example.com" not in (pii["output"] or "")
    assert len(pii["input_sha256"]) == 64 and pii["input_chars"] == len("mail me at jane.doe@example.com")
    unauthorised = next(r for r in found.values() if r["status_code"] == 401)
    assert unauthorised["principal"] is None and "unauthorized" in unauthorised["error"]


def test_audit_endpoint_filters_by_agent_and_limit(client):
    client.post("/v1/agents/language/invoke", json={"text": "Ciao, come stai?"})
    time.sleep(1.0)
    records = client.get("/v1/admin/audit", params={"agent": "language", "limit": 5}).json()["records"]
    assert 1 <= len(records) <= 5 and all(r["agent"] == "language" for r in records)
    assert client.get("/v1/admin/audit", params={"since": "not-a-date"}).status_code == 422
    assert client.get("/v1/admin/audit", params={"limit": 0}).status_code == 422
