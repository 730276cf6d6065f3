"""API keys: random secrets shown once, stored only as sha256 hashes, one file per key
under ``<storage>/auth/keys/`` so concurrent writers never clobber each other; keys may
expire, be revoked, and be scoped to named agents or pipelines.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from cluster.errors import NotFound
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
    expires_at: float | None = None  # unix seconds; None never expires
    revoked: bool = False
    agents: frozenset[str] | None = None  # None: every agent
    pipelines: frozenset[str] | None = None  # None: every pipeline

    def allows(self, role: str) -> bool:
        """Whether this key may use an endpoint that asks for ``role``."""
        if role not in PERMISSIONS:
            raise ValueError(f"unknown role {role!r}; roles: {list(ROLES)}")
        return role in PERMISSIONS.get(self.role, frozenset())

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def reaches_agent(self, agent: str) -> bool:
        return self.agents is None or agent in self.agents

    def runs_pipeline(self, pipeline: str) -> bool:
        return self.pipelines is None or pipeline in self.pipelines

    @classmethod
    def of(cls, record: dict[str, Any]) -> Principal:
        validate_segment(record["id"], "key id")
        expires = record.get("expires_at")
        scope = {name: frozenset(record[name]) if record.get(name) is not None else None for name in ("agents", "pipelines")}
        return cls(
            record["id"], record["name"], record["role"], record.get("rate_per_s"), record.get("burst"),
            datetime.fromisoformat(expires).timestamp() if expires else None, record.get("revoked_at") is not None, **scope,
        )


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


PUBLIC_FIELDS = ("id", "name", "role", "created_at", "expires_at", "revoked_at", "rate_per_s", "burst", "agents", "pipelines")


class KeyStore:
    """Create, list, revoke and verify keys.

    Each key is one record ``auth/keys/<id>.json`` plus an index file named by its hash,
    ``auth/keys/by-hash/<sha256>.json``. A key this store has not seen is looked up by its
    hash (one read, never a listing), so a key made on another replica works at once; an
    unknown hash is remembered for ``refresh_s`` so repeating a bad key costs no storage read.
    ``refresh`` (run every ``refresh_s`` off the request path) lists the records and rereads
    the changed ones, so a revocation or a new expiry made elsewhere holds within that time.
    """

    def __init__(self, storage: Storage, refresh_s: float = 1.0, clock: Callable[[], float] = time.time, max_unknown: int = 10_000):
        self.storage = storage
        self.refresh_s = refresh_s
        self._clock = clock
        self._by_hash: dict[str, Principal] = {}
        self._versions: dict[str, tuple[Any, str]] = {}  # record path -> (its listing's version, its hash)
        self._unknown: OrderedDict[str, float] = OrderedDict()  # hash -> when it was found unknown
        self._max_unknown = max_unknown
        self._lock = threading.Lock()

    def _dir(self) -> str:
        return self.storage.path("auth", "keys")

    def _record_path(self, key_id: str) -> str:
        return self.storage.path("auth", "keys", f"{validate_segment(key_id, 'key id')}.json")

    def _index_path(self, digest: str) -> str:
        return self.storage.path("auth", "keys", "by-hash", f"{digest}.json")

    def create(
        self,
        role: str,
        name: str,
        key: str | None = None,
        rate_per_s: float | None = None,
        burst: int | None = None,
        expires_at: datetime | None = None,
        agents: list[str] | None = None,
        pipelines: list[str] | None = None,
    ) -> tuple[str, Principal]:
        """Store a new key (random unless given), optionally with its own rate limit, an expiry
        and a scope (the agents or pipelines it may reach)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {list(ROLES)}, got {role!r}")
        key = key or f"bk_{secrets.token_urlsafe(32)}"
        key_id = f"key_{secrets.token_hex(8)}"
        record = {
            "id": key_id,
            "name": name,
            "role": role,
            "sha256": hash_key(key),
            "rate_per_s": rate_per_s,
            "burst": burst,
            "created_at": datetime.now(timezone.utc).isoformat(),
            "expires_at": expires_at.astimezone(timezone.utc).isoformat() if expires_at else None,
            "revoked_at": None,
            "agents": sorted(agents) if agents is not None else None,
            "pipelines": sorted(pipelines) if pipelines is not None else None,
        }
        # The index first: a record without one would be found only by the next refresh.
        self.storage.write_json_atomic(self._index_path(record["sha256"]), {"id": key_id})
        self.storage.write_json_atomic(self._record_path(key_id), record)
        principal = Principal.of(record)
        with self._lock:
            self._by_hash[record["sha256"]] = principal
            self._unknown.pop(record["sha256"], None)
        return key, principal

    def revoke(self, key_id: str) -> dict[str, Any]:
        """Mark a key revoked (its record stays, for the audit trail); its public fields."""
        path = self._record_path(key_id)
        if not self.storage.exists(path):
            raise NotFound(f"API key {key_id!r} does not exist")
        record = self.storage.read_json(path)
        if record.get("revoked_at") is None:
            record["revoked_at"] = datetime.now(timezone.utc).isoformat()
            self.storage.write_json_atomic(path, record)
        with self._lock:
            self._by_hash[record["sha256"]] = Principal.of(record)
        return public(record)

    def list(self) -> list[dict[str, Any]]:
        """Every key's public fields (never its hash), oldest first."""
        records = [self.storage.read_json(path) for path in self._record_paths()]
        return sorted((public(r) for r in records), key=lambda r: (r["created_at"], r["id"]))

    def verify(self, key: str) -> Principal | None:
        """The key's principal, revoked or expired ones included (the caller says which), or
        None for a key that does not exist."""
        digest = hash_key(key)
        principal = self.cached(digest)
        if principal is not None:
            return principal
        with self._lock:
            seen = self._unknown.get(digest)
        if seen is not None and self._clock() - seen < self.refresh_s:
            return None
        return self._look_up(digest)

    def cached(self, digest: str) -> Principal | None:
        # A dict lookup by digest is safe: timing can reveal at most bits of a sha256 of a
        # high-entropy secret, never the key, and it keeps auth O(1) on the hot path.
        with self._lock:
            return self._by_hash.get(digest)

    def _look_up(self, digest: str) -> Principal | None:
        index = self._index_path(digest)
        record = None
        if self.storage.exists(index):
            path = self._record_path(self.storage.read_json(index)["id"])
            record = self.storage.read_json(path) if self.storage.exists(path) else None
        with self._lock:
            if record is None or record.get("sha256") != digest:
                self._unknown[digest] = self._clock()
                self._unknown.move_to_end(digest)
                while len(self._unknown) > self._max_unknown:
                    self._unknown.popitem(last=False)
                return None
            principal = self._by_hash[digest] = Principal.of(record)
            return principal

    def _record_paths(self) -> list[str]:
        fs, directory = self.storage.fs, self._dir()
        return sorted(fs.glob(f"{directory}/key_*.json")) if fs.exists(directory) else []

    def refresh(self) -> None:
        """Reread the records that changed since the last refresh (by the listing's modified
        time and size), drop the ones deleted; one listing plus one read per change."""
        fs, directory = self.storage.fs, self._dir()
        listing = fs.ls(directory, detail=True) if fs.exists(directory) else []
        current = {
            entry["name"]: (entry.get("mtime") or entry.get("LastModified") or entry.get("last_modified"), entry.get("size"))
            for entry in listing
            if entry.get("type") == "file" and entry["name"].rsplit("/", 1)[-1].startswith("key_") and entry["name"].endswith(".json")
        }
        changed = {path: self.storage.read_json(path) for path, version in current.items() if self._versions.get(path, (None,))[0] != version}
        with self._lock:
            for path in set(self._versions) - set(current):
                self._by_hash.pop(self._versions.pop(path)[1], None)
            for path, record in changed.items():
                principal = Principal.of(record)
                self._by_hash[record["sha256"]] = principal
                self._unknown.pop(record["sha256"], None)
                self._versions[path] = (current[path], record["sha256"])

    def find_by_name(self, name: str) -> list[Principal]:
        self.refresh()
        with self._lock:
            return [p for p in self._by_hash.values() if p.name == name]


def public(record: dict[str, Any]) -> dict[str, Any]:
    """A key record as the API shows it: no hash, no secret."""
    return {field: record.get(field) for field in PUBLIC_FIELDS}
