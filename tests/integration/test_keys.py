"""API keys across the two ingress replicas of the test app: a key works at once on both, a
revocation holds on both within auth.key_refresh_s (1 s) plus a margin, an expiry holds on
both, scopes hold, and the list never shows a secret."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

SENTIMENT = {"text": "I loved this hotel, the staff were wonderful."}
# A revocation is adopted at the next refresh (every auth.key_refresh_s = 1 s); the margin is
# the refresh's own time on a loaded 2-core machine.
REVOCATION_BOUND_S = 3.0


def calls(url: str, key: str, n: int = 12, path: str = "/v1/agents/sentiment/invoke", body: dict = SENTIMENT) -> list[tuple[int, str, dict]]:
    """``n`` requests on fresh connections (so the Serve proxy spreads them over both replicas)."""
    out = []
    for _ in range(n):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as fresh:
            response = fresh.post(path, json=body)
            out.append((response.status_code, response.headers.get("X-Served-By", ""), response.json()))
    return out


def test_a_key_works_at_once_on_both_replicas_and_a_revocation_holds_on_both(client, baton_url):
    created = client.post("/v1/admin/keys", json={"role": "invoke", "name": "two-replicas"})
    assert created.status_code == 201, created.text
    key, key_id = created.json()["key"], created.json()["id"]
    answered = calls(baton_url, key)
    assert [status for status, _, _ in answered] == [200] * len(answered)
    replicas = {served_by for _, served_by, _ in answered}
    assert len(replicas) == 2, f"the requests reached only {replicas}"

    listed = client.get("/v1/admin/keys").json()["keys"]
    assert any(k["id"] == key_id and k["revoked_at"] is None for k in listed)
    assert all("sha256" not in k and key not in str(k) for k in listed)

    assert client.delete(f"/v1/admin/keys/{key_id}").status_code == 200
    revoked_at, refused_after = time.monotonic(), {}
    while time.monotonic() - revoked_at < 10 and set(refused_after) != replicas:
        for status, served_by, _ in calls(baton_url, key, n=4):
            if status == 401:
                refused_after.setdefault(served_by, time.monotonic() - revoked_at)
    assert set(refused_after) == replicas and max(refused_after.values()) <= REVOCATION_BOUND_S, refused_after
    refused = calls(baton_url, key)
    assert {status for status, _, _ in refused} == {401}, refused
    assert all(body["error"]["message"] == "this API key was revoked" for _, _, body in refused)


def test_an_expiry_and_a_scope_hold_on_both_replicas(client, baton_url):
    expires = (datetime.now(timezone.utc) + timedelta(seconds=4)).isoformat()
    created = client.post("/v1/admin/keys", json={"role": "invoke", "name": "brief", "expires_at": expires, "agents": ["sentiment"]})
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    assert {status for status, _, _ in calls(baton_url, key, n=4)} == {200}
    scoped = calls(baton_url, key, n=4, path="/v1/agents/language/invoke", body={"text": "bonjour tout le monde"})
    assert {status for status, _, _ in scoped} == {403}
    time.sleep(max(0.0, datetime.fromisoformat(expires).timestamp() - time.time()) + 0.5)
    expired = calls(baton_url, key)
    assert {status for status, _, _ in expired} == {401} and len({served_by for _, served_by, _ in expired}) == 2
    assert all("expired" in body["error"]["message"] for _, _, body in expired)


@pytest.mark.parametrize("bad", ["not-a-key-id", "key_0123456789abcdef"])
def test_revoking_a_bad_or_unknown_id_is_refused(client, bad):
    response = client.delete(f"/v1/admin/keys/{bad}")
    assert response.status_code == (422 if bad == "not-a-key-id" else 404)
    assert response.json()["error"]["code"] == ("validation_error" if bad == "not-a-key-id" else "not_found")


def test_a_keys_rate_limit_holds_across_both_replicas(client, baton_url):
    # 0.05 req/s: no token comes back within the test, so the burst is all the key may spend.
    created = client.post("/v1/admin/keys", json={"role": "invoke", "name": "limited", "rate_limit": {"requests_per_s": 0.05, "burst": 4}})
    answered = calls(baton_url, created.json()["key"], n=14)
    assert len({served_by for _, served_by, _ in answered}) == 2, "the requests reached only one replica"
    statuses = [status for status, _, _ in answered]
    # Each replica alone would have let 4 through: 8 in all.
    assert statuses.count(200) == 4 and statuses.count(429) == 10, statuses
    refused = next(body for status, _, body in answered if status == 429)
    assert refused["error"]["code"] == "rate_limited"
