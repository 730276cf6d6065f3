"""API keys (hashed at rest, roles, cross-replica visibility) and the per-key rate limiter."""

from __future__ import annotations

import json

import pytest

from actors.ratelimit import RateLimiter
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


def test_a_key_made_elsewhere_becomes_valid_after_refresh(tmp_path):
    clock = FakeClock()
    reader = KeyStore(Storage(str(tmp_path)), refresh_s=2, clock=clock)
    reader.reload()
    key, _ = KeyStore(Storage(str(tmp_path))).create("admin", "other-replica")
    clock.now = 5
    assert reader.verify(key).role == "admin"


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
    reloaded.reload()
    assert reloaded.verify(key) == principal
    limiter = RateLimiter(rate_per_s=100, burst=100, clock=clock)
    assert limiter.acquire(principal.key_id, principal.rate_per_s, principal.burst) == 0.0
    assert limiter.acquire(principal.key_id, principal.rate_per_s, principal.burst) == pytest.approx(2.0)
