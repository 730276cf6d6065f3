"""Conversation sessions shared by every ingress replica: turns per user, session and agent,
capped and with a TTL, on the storage URI (SQLite on a local path, JSON objects elsewhere).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from cluster.storage import Storage

SESSIONS_DIR = "sessions"
SQLITE_FILE = "sessions.sqlite3"
ROLES = ("user", "assistant")
BUSY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SessionLimits:
    """What a store keeps; every cap drops the oldest data first."""

    ttl_s: float = 900.0
    max_turns: int = 50
    max_content_chars: int = 8_000
    max_sessions: int = 100_000
    purge_interval_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("ttl_s", "max_turns", "max_content_chars", "max_sessions"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SessionLimits.{name} must be positive, got {getattr(self, name)!r}")
        if self.purge_interval_s < 0:
            raise ValueError(f"SessionLimits.purge_interval_s must be >= 0, got {self.purge_interval_s!r}")


def session_key(user_id: str | None, session_id: str) -> str:
    """A fixed-size key for (user, session): both are caller input, so neither becomes a
    path or an unbounded index entry. JSON keeps ("a", "b/c") and ("a/b", "c") apart."""
    if not isinstance(session_id, str) or not session_id:
        raise ValueError(f"session_id must be a non-empty string, got {session_id!r}")
    if user_id is not None and not isinstance(user_id, str):
        raise ValueError(f"user_id must be a string or None, got {user_id!r}")
    return hashlib.sha256(json.dumps([user_id or "", session_id]).encode()).hexdigest()


class SessionStore(ABC):
    """Turns per (user_id, session_id, agent) and the agent of each session's last turn.

    A session expires ``ttl_s`` after its last append; an expired session is invisible to
    reads and starts empty on the next append. ``user_id`` None is the anonymous user.
    Methods are synchronous and thread-safe; async callers use ``asyncio.to_thread``.
    """

    def __init__(self, limits: SessionLimits, clock: Callable[[], float]):
        # Wall-clock time: it is compared across processes and across restarts.
        self.limits, self._clock = limits, clock

    @abstractmethod
    def last_agent(self, user_id: str | None, session_id: str) -> str | None:
        """The agent that answered the session's last turn, or None if none or expired."""

    @abstractmethod
    def turns(self, user_id: str | None, session_id: str, agent: str, limit: int | None = None) -> list[dict]:
        """The session's most recent turns with ``agent`` (at most ``limit``), oldest first:
        ``{"role": "user" | "assistant", "content": str, "ts": float}``."""

    @abstractmethod
    def append(self, user_id: str | None, session_id: str, agent: str, turns: Sequence[Mapping[str, Any]]) -> None:
        """Add turns with ``agent`` and make it the session's last agent."""

    @abstractmethod
    def purge(self) -> int:
        """Delete expired sessions (and, where enforced, the oldest beyond ``max_sessions``);
        returns how many were deleted."""

    def close(self) -> None:
        """Release connections; the stored sessions stay."""

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _expired_before(self, now: float) -> float:
        return now - self.limits.ttl_s

    def _limit(self, limit: int | None) -> int:
        if limit is None:
            return self.limits.max_turns
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
        return min(limit, self.limits.max_turns)

    def _clean_turns(self, agent: str, turns: Sequence[Mapping[str, Any]], now: float) -> list[dict]:
        """Validated turns with content truncated to ``max_content_chars``; ``ts`` defaults to now."""
        if not isinstance(agent, str) or not agent:
            raise ValueError(f"agent must be a non-empty string, got {agent!r}")
        cleaned = []
        for index, turn in enumerate(turns):
            role, content, ts = turn.get("role"), turn.get("content"), turn.get("ts", now)
            if role not in ROLES:
                raise ValueError(f"turns[{index}].role must be one of {ROLES}, got {role!r}")
            if not isinstance(content, str):
                raise ValueError(f"turns[{index}].content must be a string, got {type(content).__name__}")
            if isinstance(ts, bool) or not isinstance(ts, (int, float)):
                raise ValueError(f"turns[{index}].ts must be a number, got {ts!r}")
            cleaned.append({"role": role, "content": content[: self.limits.max_content_chars], "ts": float(ts)})
        return cleaned


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sessions (key TEXT PRIMARY KEY, last_agent TEXT NOT NULL, updated REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS sessions_by_updated ON sessions (updated)",
    "CREATE TABLE IF NOT EXISTS turns (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, agent TEXT NOT NULL,"
    " role TEXT NOT NULL, content TEXT NOT NULL, ts REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS turns_by_session_agent ON turns (key, agent, id)",
)


class SqliteSessionStore(SessionStore):
    """Sessions in one SQLite file, shared by every process on this machine.

    WAL lets readers run beside the one writer; each append is one ``BEGIN IMMEDIATE``
    transaction, which takes the write lock up front so concurrent writers wait on the busy
    timeout instead of failing on a lock upgrade. Each thread gets its own connection.
    SQLite's locking needs one host: on a multi-node cluster use an ``s3://`` storage URI.
    Expired sessions, and the oldest beyond ``max_sessions``, are purged by an append at
    most every ``purge_interval_s``, so the session count may briefly exceed the cap.
    """

    def __init__(self, path: str | Path, limits: SessionLimits = SessionLimits(), clock: Callable[[], float] = time.time):
        super().__init__(limits, clock)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._closed = False
        self._next_purge = float("-inf")
        # Two processes opening a new file at once could both try the switch to WAL, and that
        # switch fails at once on a lock instead of waiting out the busy timeout.
        with open(self.path.with_name(self.path.name + ".lock"), "w") as setup_lock:
            fcntl.flock(setup_lock, fcntl.LOCK_EX)
            with self._transaction() as db:
                for statement in _SCHEMA:
                    db.execute(statement)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is not None:
            return db
        with self._connections_lock:
            if self._closed:
                raise RuntimeError(f"session store {self.path} is closed")
            # Autocommit mode: transactions are explicit, and a read is one consistent statement.
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            self._connections.append(db)
        # WAL is a property of the file; switching needs a lock, so only switch when needed.
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            db.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode survives a process crash; only an OS crash may lose the last commits.
        db.execute("PRAGMA synchronous = NORMAL")
        self._local.db = db
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def last_agent(self, user_id: str | None, session_id: str) -> str | None:
        row = self._db().execute(
            "SELECT last_agent FROM sessions WHERE key = ? AND updated >= ?",
            (session_key(user_id, session_id), self._expired_before(self._clock())),
        ).fetchone()
        return row[0] if row else None

    def turns(self, user_id: str | None, session_id: str, agent: str, limit: int | None = None) -> list[dict]:
        key = session_key(user_id, session_id)
        rows = self._db().execute(
            "SELECT role, content, ts FROM turns WHERE key = ? AND agent = ?"
            " AND EXISTS (SELECT 1 FROM sessions WHERE key = ? AND updated >= ?)"
            " ORDER BY id DESC LIMIT ?",
            (key, agent, key, self._expired_before(self._clock()), self._limit(limit)),
        ).fetchall()
        return [{"role": role, "content": content, "ts": ts} for role, content, ts in reversed(rows)]

    def append(self, user_id: str | None, session_id: str, agent: str, turns: Sequence[Mapping[str, Any]]) -> None:
        key = session_key(user_id, session_id)
        now = self._clock()
        rows = [(key, agent, t["role"], t["content"], t["ts"]) for t in self._clean_turns(agent, turns, now)]
        with self._transaction() as db:
            # An expired session that no purge has reached yet must not bring its old turns back.
            db.execute(
                "DELETE FROM turns WHERE key = ? AND EXISTS (SELECT 1 FROM sessions WHERE key = ? AND updated < ?)",
                (key, key, self._expired_before(now)),
            )
            db.execute(
                "INSERT INTO sessions (key, last_agent, updated) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET last_agent = excluded.last_agent, updated = excluded.updated",
                (key, agent, now),
            )
            db.executemany("INSERT INTO turns (key, agent, role, content, ts) VALUES (?, ?, ?, ?, ?)", rows)
            db.execute(
                "DELETE FROM turns WHERE key = ? AND agent = ? AND id <= "
                "(SELECT id FROM turns WHERE key = ? AND agent = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (key, agent, key, agent, self.limits.max_turns),
            )
            if now >= self._next_purge:
                self._purge(db, now)
                self._next_purge = now + self.limits.purge_interval_s

    def purge(self) -> int:
        with self._transaction() as db:
            return self._purge(db, self._clock())

    def _purge(self, db: sqlite3.Connection, now: float) -> int:
        expired = "SELECT key FROM sessions WHERE updated < ?"
        db.execute(f"DELETE FROM turns WHERE key IN ({expired})", (self._expired_before(now),))
        removed = db.execute(f"DELETE FROM sessions WHERE key IN ({expired})", (self._expired_before(now),)).rowcount
        beyond_cap = "SELECT key FROM sessions ORDER BY updated DESC, key LIMIT -1 OFFSET ?"
        db.execute(f"DELETE FROM turns WHERE key IN ({beyond_cap})", (self.limits.max_sessions,))
        removed += db.execute(f"DELETE FROM sessions WHERE key IN ({beyond_cap})", (self.limits.max_sessions,)).rowcount
        return removed

    def close(self) -> None:
        with self._connections_lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for db in connections:
            db.close()


class ObjectSessionStore(SessionStore):
    """Sessions as JSON objects on any fsspec storage (``s3://`` on a cluster), no server.

    One object per (user, session), ``sessions/<sha256 of the key>.json``, read and written
    whole; an S3 PUT is atomic, so a reader sees the old or the new session, never a mix.
    Appends are read-modify-write without a lock: when two replicas append to one session
    at the same moment, the last writer wins and the other's turns are lost. That is
    accepted, since one conversation sends its turns one at a time.
    Expired sessions are invisible and restart empty; :meth:`purge` lists and deletes them,
    so run it on a schedule (or give the bucket a lifecycle rule on ``sessions/``).
    ``max_sessions`` is not enforced here: the count is bounded by the TTL.
    """

    def __init__(self, storage: Storage, limits: SessionLimits = SessionLimits(), clock: Callable[[], float] = time.time):
        super().__init__(limits, clock)
        self.storage = storage

    def _object_path(self, key: str) -> str:
        return self.storage.path(SESSIONS_DIR, f"{key}.json")

    def _read(self, path: str) -> dict | None:
        try:
            return self.storage.read_json(path)
        except FileNotFoundError:
            return None

    def _live_session(self, user_id: str | None, session_id: str, now: float) -> dict | None:
        session = self._read(self._object_path(session_key(user_id, session_id)))
        if session is None or session["updated"] < self._expired_before(now):
            return None
        return session

    def last_agent(self, user_id: str | None, session_id: str) -> str | None:
        session = self._live_session(user_id, session_id, self._clock())
        return session["last_agent"] if session else None

    def turns(self, user_id: str | None, session_id: str, agent: str, limit: int | None = None) -> list[dict]:
        limit = self._limit(limit)
        session = self._live_session(user_id, session_id, self._clock())
        if session is None or limit == 0:
            return []
        return session["turns"].get(agent, [])[-limit:]

    def append(self, user_id: str | None, session_id: str, agent: str, turns: Sequence[Mapping[str, Any]]) -> None:
        now = self._clock()
        cleaned = self._clean_turns(agent, turns, now)
        session = self._live_session(user_id, session_id, now) or {"turns": {}}
        history = session["turns"].setdefault(agent, [])
        history.extend(cleaned)
        del history[: -self.limits.max_turns]
        session.update(last_agent=agent, updated=now)
        self.storage.write_json_atomic(self._object_path(session_key(user_id, session_id)), session)

    def purge(self) -> int:
        """Lists every session object: O(sessions) requests, so keep it off the request path.
        A session appended between the read and the delete here is lost, a narrow race."""
        try:
            paths = self.storage.fs.ls(self.storage.path(SESSIONS_DIR), detail=False)
        except FileNotFoundError:
            return 0
        expired_before = self._expired_before(self._clock())
        removed = 0
        for path in paths:
            if not path.endswith(".json"):
                continue
            session = self._read(path)
            if session is not None and session["updated"] < expired_before:
                self.storage.fs.rm(path)
                removed += 1
        return removed


def open_session_store(
    storage_uri: str,
    limits: SessionLimits = SessionLimits(),
    clock: Callable[[], float] = time.time,
    **storage_options: Any,
) -> SessionStore:
    """The shared store on the storage URI: SQLite at ``<storage>/sessions/sessions.sqlite3``
    for a local path, JSON objects under ``<storage>/sessions/`` otherwise."""
    storage = Storage(storage_uri, **storage_options)
    if storage.is_local:
        return SqliteSessionStore(storage.path(SESSIONS_DIR, SQLITE_FILE), limits, clock)
    return ObjectSessionStore(storage, limits, clock)
