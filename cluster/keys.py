"""API keys: random secrets shown once, stored only as sha256 hashes, one file per key
under ``<storage>/auth/keys/`` so concurrent writers never clobber each other.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from cluster.storage import Storage, validate_segment

ROLES = ("invoke", "review", "admin")
# What a key of each role may use, by the role an endpoint asks for: a review key reaches the
# review queue and its page and nothing else; an admin key reaches everything.
PERMISSIONS: dict[str, frozenset[str]] = {
    "invoke": frozenset({"invoke"}),
    "review": frozenset({"review"}),
    "admin": frozenset(ROLES),
}


@dataclass(frozen=True)
class Principal:
    key_id: str
    name: str
    role: str
    rate_per_s: float | None = None
    burst: int | None = None

    def allows(self, role: str) -> bool:
        """Whether this key may use an endpoint that asks for ``role``."""
        if role not in PERMISSIONS:
            raise ValueError(f"unknown role {role!r}; roles: {list(ROLES)}")
        return role in PERMISSIONS.get(self.role, frozenset())


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyStore:
    """Create and verify keys; verification reads the store again on an unknown key,
    at most every ``refresh_s``, so keys made by another replica become valid quickly.
    """

    def __init__(self, storage: Storage, refresh_s: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.storage = storage
        self.refresh_s = refresh_s
        self._clock = clock
        self._by_hash: dict[str, Principal] = {}
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def _dir(self) -> str:
        return self.storage.path("auth", "keys")

    def create(
        self, role: str, name: str, key: str | None = None, rate_per_s: float | None = None, burst: int | None = None
    ) -> tuple[str, Principal]:
        """Store a new key (random unless given), optionally with its own rate limit."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {list(ROLES)}, got {role!r}")
        key = key or f"bk_{secrets.token_urlsafe(32)}"
        principal = Principal(f"key_{secrets.token_hex(8)}", name, role, rate_per_s, burst)
        record = {
            "id": principal.key_id,
            "name": name,
            "role": role,
            "sha256": hash_key(key),
            "rate_per_s": rate_per_s,
            "burst": burst,
            "created_at": datetime.now(timezone.utc).isoformat(),
        }
        self.storage.write_json_atomic(self.storage.path("auth", "keys", f"{principal.key_id}.json"), record)
        with self._lock:
            self._by_hash[record["sha256"]] = principal
        return key, principal

    def verify(self, key: str) -> Principal | None:
        digest = hash_key(key)
        principal = self._lookup(digest)
        if principal is None and self._clock() - self._loaded_at >= self.refresh_s:
            self.reload()
            principal = self._lookup(digest)
        return principal

    def _lookup(self, digest: str) -> Principal | None:
        # A dict lookup by digest is safe: timing can reveal at most bits of a sha256 of a
        # high-entropy secret, never the key, and it keeps auth O(1) on the hot path.
        with self._lock:
            return self._by_hash.get(digest)

    def reload(self) -> None:
        fs, directory = self.storage.fs, self._dir()
        loaded: dict[str, Principal] = {}
        paths = fs.glob(f"{directory}/key_*.json") if fs.exists(directory) else []
        for path in paths:
            record = self.storage.read_json(path)
            validate_segment(record["id"], "key id")
            loaded[record["sha256"]] = Principal(
                record["id"], record["name"], record["role"], record.get("rate_per_s"), record.get("burst")
            )
        with self._lock:
            self._by_hash = loaded
            self._loaded_at = self._clock()

    def find_by_name(self, name: str) -> list[Principal]:
        self.reload()
        with self._lock:
            return [p for p in self._by_hash.values() if p.name == name]
