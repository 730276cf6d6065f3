"""API keys (hashed at rest, roles, cross-replica visibility) and the per-key rate limiter."""

from __future__ import annotations

import asyncio

import json
from datetime import datetime, timedelta, timezone

import pytest

from actors.ratelimit import LeasedLimiter, RateLimiter
from cluster.errors import NotFound
from cluster.keys import KeyStore
from cluster.storage import Storage


class FakeClock:
    """Test double for time: advanced by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_keys_are_stored_hashed_and_verify(tmp_path):
    store = KeyStore(Storage(str(tmp_path)))
    key, principal = store.create("invoke", "svc")
    files = list((tmp_path / "auth" / "keys").glob("*.json"))
    assert len(files) == 1 and key not in files[0].read_text()
    assert json.loads(files[0].read_text())["role"] == "invoke"
    assert store.verify(key) == principal
    assert store.verify(key + "x") is None
    assert principal.allows("invoke") and not principal.allows("admin")


def test_a_key_made_elsewhere_is_valid_at_once_without_listing_the_store(tmp_path, monkeypatch):
    clock = FakeClock()
    reader = KeyStore(Storage(str(tmp_path)), refresh_s=2, clock=clock)
    reader.refresh()
    key, _ = KeyStore(Storage(str(tmp_path))).create("admin", "other-replica")

    def no_listing(*args, **kwargs):
        raise AssertionError("the request path listed the key store")

    monkeypatch.setattr(reader.storage.fs, "glob", no_listing)
    monkeypatch.setattr(reader.storage.fs, "ls", no_listing)
    assert reader.verify(key).role == "admin"


def test_an_unknown_key_is_remembered_as_unknown_until_the_refresh_interval(tmp_path, monkeypatch):
    clock = FakeClock()
    store = KeyStore(Storage(str(tmp_path)), refresh_s=2, clock=clock)
    reads = []
    real_exists = store.storage.exists
    monkeypatch.setattr(store.storage, "exists", lambda path: reads.append(path) or real_exists(path))
    assert store.verify("bk_not-a-key") is None and len(reads) == 1
    assert store.verify("bk_not-a-key") is None and len(reads) == 1  # remembered: no storage read
    clock.now = 2.5
    assert store.verify("bk_not-a-key") is None and len(reads) == 2


def test_a_revocation_made_elsewhere_holds_after_the_next_refresh(tmp_path):
    admin, replica = KeyStore(Storage(str(tmp_path))), KeyStore(Storage(str(tmp_path)))
    key, principal = admin.create("invoke", "svc")
    assert replica.verify(key) == principal and not principal.revoked
    revoked = admin.revoke(principal.key_id)
    assert revoked["revoked_at"] and "sha256" not in revoked
    assert admin.verify(key).revoked
    replica.refresh()
    assert replica.verify(key).revoked
    again = admin.revoke(principal.key_id)
    assert again["revoked_at"] == revoked["revoked_at"]  # revoking twice keeps the first time


def test_revoking_an_unknown_or_malformed_id_fails(tmp_path):
    store = KeyStore(Storage(str(tmp_path)))
    with pytest.raises(NotFound):
        store.revoke("key_0123456789abcdef")
    with pytest.raises(ValueError, match="key id"):
        store.revoke("../auth")


def test_keys_list_with_their_scope_and_expiry_and_never_a_hash(tmp_path):
    store = KeyStore(Storage(str(tmp_path)))
    expires = datetime.now(timezone.utc) + timedelta(hours=1)
    key, principal = store.create("invoke", "scoped", expires_at=expires, agents=["sentiment", "language"], pipelines=["doc"])
    store.create("admin", "ops")
    listed = store.list()
    assert sorted(k["name"] for k in listed) == ["ops", "scoped"]
    scoped = next(k for k in listed if k["name"] == "scoped")
    assert all("sha256" not in k and key not in json.dumps(k) for k in listed)
    assert scoped["agents"] == ["language", "sentiment"] and scoped["pipelines"] == ["doc"]
    assert next(k for k in listed if k["name"] == "ops")["agents"] is None
    assert principal.reaches_agent("sentiment") and not principal.reaches_agent("pii")
    assert principal.runs_pipeline("doc") and not principal.runs_pipeline("other")
    assert not principal.expired(expires.timestamp() - 1) and principal.expired(expires.timestamp())
    again = KeyStore(Storage(str(tmp_path)))
    again.refresh()
    assert again.verify(key) == principal


def test_given_key_and_bad_role(tmp_path):
    store = KeyStore(Storage(str(tmp_path)))
    key, _ = store.create("admin", "dev", key="my-dev-key")
    assert key == "my-dev-key" and store.verify("my-dev-key").name == "dev"
    with pytest.raises(ValueError, match="role"):
        store.create("root", "x")


def test_rate_limiter_allows_burst_then_rate():
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=2, burst=3, clock=clock)
    assert [limiter.acquire("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.acquire("k")
    assert wait == pytest.approx(0.5)
    assert limiter.acquire("other") == 0.0
    clock.now = 0.5
    assert limiter.acquire("k") == 0.0


def test_a_key_can_carry_its_own_limit(tmp_path):
    clock = FakeClock()
    store = KeyStore(Storage(str(tmp_path)))
    key, principal = store.create("invoke", "slow", rate_per_s=0.5, burst=1)
    reloaded = KeyStore(Storage(str(tmp_path)))
    reloaded.refresh()
    assert reloaded.verify(key) == principal
    limiter = RateLimiter(rate_per_s=100, burst=100, clock=clock)
    assert limiter.acquire(principal.key_id, principal.rate_per_s, principal.burst) == 0.0
    assert limiter.acquire(principal.key_id, principal.rate_per_s, principal.burst) == pytest.approx(2.0)


def shared_bucket(clock) -> tuple[RateLimiter, list[int]]:
    """The limits actor as a plain object; ``asked`` counts its calls and what each took."""
    bucket, asked = RateLimiter(rate_per_s=10, burst=20, clock=clock), []

    async def take(key, want, rate, burst):
        granted, wait_s = bucket.take(key, want, rate, burst)
        asked.append(granted)
        return granted, wait_s

    return take, asked


def test_replicas_leasing_from_one_bucket_admit_no_more_than_the_bucket_holds():
    clock = FakeClock()
    take, asked = shared_bucket(clock)
    replicas = [LeasedLimiter(take, RateLimiter(10, 20, clock=clock), lease_s=0.2, clock=clock) for _ in range(3)]

    async def burst():
        return [await replicas[i % 3].acquire("k", 10, 20) for i in range(60)]

    waits = asyncio.run(burst())
    # Alone, each replica's own bucket would have let 20 through: 60 in all.
    assert sum(wait == 0.0 for wait in waits) == 20
    assert all(wait == pytest.approx(0.1) for wait in waits[20:] if wait)
    assert len(asked) < 60 and max(asked) == 2  # leases of 0.2 s of 10 req/s, not a call per request


def test_a_lease_lapses_and_an_unreachable_bucket_falls_back_to_the_replicas_own():
    clock = FakeClock()
    take, asked = shared_bucket(clock)
    limiter = LeasedLimiter(take, RateLimiter(1, 1, clock=clock), lease_s=0.5, lease_ttl_s=1.0, clock=clock)
    assert asyncio.run(limiter.acquire("k", 10, 20)) == 0.0 and asked == [5]
    clock.now = 2.0  # the 4 tokens left of the lease lapsed: the bucket is asked again
    assert asyncio.run(limiter.acquire("k", 10, 20)) == 0.0 and asked == [5, 5]

    async def unreachable(*args):
        raise ConnectionError("limits actor restarting")

    # Meanwhile the key's limit holds per replica, as if this replica were the only one.
    alone = LeasedLimiter(unreachable, RateLimiter(1, 1, clock=clock), clock=clock)
    waits = [asyncio.run(alone.acquire("k", 10, 20)) for _ in range(21)]
    assert waits[:20] == [0.0] * 20 and waits[20] == pytest.approx(0.1)
