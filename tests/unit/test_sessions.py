"""Session stores: sharing between replicas, restarts, TTL, caps, key hashing, concurrency."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest

from actors.sessions import (
    ObjectSessionStore,
    SessionLimits,
    SqliteSessionStore,
    open_session_store,
    session_key,
)
from cluster.storage import Storage


class ManualClock:
    """Test double for the wall clock: time moves only when the test advances it."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def exchange(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


@pytest.fixture(params=["sqlite", "object-local", "object-s3"])
def open_store(request, tmp_path):
    """Opens stores on one shared location, as every ingress replica would; closes them all."""
    s3_uri = request.getfixturevalue("s3_uri") if request.param == "object-s3" else None
    opened = []

    def open_one(limits: SessionLimits = SessionLimits(), clock=ManualClock()):
        if request.param == "sqlite":
            store = SqliteSessionStore(tmp_path / "sessions" / "sessions.sqlite3", limits, clock)
        elif request.param == "object-local":
            store = ObjectSessionStore(Storage(str(tmp_path)), limits, clock)
        else:
            store = ObjectSessionStore(Storage(s3_uri), limits, clock)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


def test_a_second_replica_sees_the_first_ones_writes(open_store):
    clock = ManualClock()
    first, second = open_store(clock=clock), open_store(clock=clock)
    first.append("alice", "s1", "support", exchange("my order is late", "sorry, let me check"))
    assert second.last_agent("alice", "s1") == "support"
    assert [t["content"] for t in second.turns("alice", "s1", "support")] == ["my order is late", "sorry, let me check"]
    second.append("alice", "s1", "billing", exchange("and the refund?", "issued"))
    assert first.last_agent("alice", "s1") == "billing"
    assert len(first.turns("alice", "s1", "support")) == 2


def test_turns_are_kept_per_user_session_and_agent(open_store):
    store = open_store()
    store.append("alice", "s1", "support", exchange("a", "b"))
    store.append(None, "s1", "support", exchange("anonymous", "hello"))
    store.append("", "s2", "support", exchange("also anonymous", "hi"))
    assert [t["content"] for t in store.turns("alice", "s1", "support")] == ["a", "b"]
    assert [t["content"] for t in store.turns(None, "s1", "support")] == ["anonymous", "hello"]
    assert [t["content"] for t in store.turns(None, "s2", "support")] == ["also anonymous", "hi"]
    assert store.turns("alice", "s1", "billing") == []
    assert store.turns("bob", "s1", "support") == []
    assert store.last_agent("bob", "s1") is None


def test_turns_have_role_content_and_timestamp_oldest_first(open_store):
    clock = ManualClock(500.0)
    store = open_store(clock=clock)
    store.append("u", "s", "llm", [{"role": "user", "content": "q", "ts": 499.5}, {"role": "assistant", "content": "a"}])
    assert store.turns("u", "s", "llm") == [
        {"role": "user", "content": "q", "ts": 499.5},
        {"role": "assistant", "content": "a", "ts": 500.0},
    ]


def test_sessions_survive_closing_and_reopening(open_store):
    clock = ManualClock()
    store = open_store(clock=clock)
    store.append("alice", "s1", "llm", exchange("hello", "hi there"))
    store.close()
    reopened = open_store(clock=clock)
    assert reopened.last_agent("alice", "s1") == "llm"
    assert [t["content"] for t in reopened.turns("alice", "s1", "llm")] == ["hello", "hi there"]


def test_an_expired_session_is_invisible_and_restarts_empty(open_store):
    clock = ManualClock()
    store = open_store(SessionLimits(ttl_s=60), clock)
    store.append("alice", "s1", "llm", exchange("old question", "old answer"))
    clock.advance(59)
    assert store.last_agent("alice", "s1") == "llm"
    clock.advance(2)
    assert store.last_agent("alice", "s1") is None
    assert store.turns("alice", "s1", "llm") == []
    store.append("alice", "s1", "llm", exchange("new question", "new answer"))
    assert [t["content"] for t in store.turns("alice", "s1", "llm")] == ["new question", "new answer"]


def test_activity_keeps_a_session_alive(open_store):
    clock = ManualClock()
    store = open_store(SessionLimits(ttl_s=60), clock)
    for turn in range(5):
        store.append("alice", "s1", "llm", exchange(f"q{turn}", f"a{turn}"))
        clock.advance(50)
    assert len(store.turns("alice", "s1", "llm")) == 10


def test_purge_deletes_only_expired_sessions(open_store):
    clock = ManualClock()
    store = open_store(SessionLimits(ttl_s=60, purge_interval_s=3600), clock)
    store.append("alice", "old", "llm", exchange("q", "a"))
    clock.advance(30)
    store.append("alice", "recent", "llm", exchange("q", "a"))
    clock.advance(40)
    assert store.purge() == 1
    assert store.purge() == 0
    assert store.last_agent("alice", "recent") == "llm"
    clock.advance(-40)  # even with the clock turned back, the purged session is gone
    assert store.last_agent("alice", "old") is None


def test_sqlite_append_purges_expired_sessions_periodically(tmp_path):
    clock = ManualClock()
    with SqliteSessionStore(tmp_path / "s.sqlite3", SessionLimits(ttl_s=60, purge_interval_s=100), clock) as store:
        store.append("alice", "old", "llm", exchange("q", "a"))
        clock.advance(101)
        store.append("alice", "new", "llm", exchange("q", "a"))
        clock.advance(-101)  # the old session would be live again had the append not purged it
        assert store.last_agent("alice", "old") is None
        assert store.last_agent("alice", "new") == "llm"


def test_the_turn_cap_keeps_the_newest_turns(open_store):
    store = open_store(SessionLimits(max_turns=4))
    for turn in range(5):
        store.append("alice", "s1", "llm", exchange(f"q{turn}", f"a{turn}"))
    assert [t["content"] for t in store.turns("alice", "s1", "llm")] == ["q3", "a3", "q4", "a4"]
    assert [t["content"] for t in store.turns("alice", "s1", "llm", limit=1)] == ["a4"]
    assert store.turns("alice", "s1", "llm", limit=0) == []
    assert len(store.turns("alice", "s1", "llm", limit=100)) == 4


def test_the_turn_cap_counts_each_agent_separately(open_store):
    store = open_store(SessionLimits(max_turns=2))
    store.append("alice", "s1", "support", exchange("s-q", "s-a"))
    store.append("alice", "s1", "llm", exchange("l-q1", "l-a1"))
    store.append("alice", "s1", "llm", exchange("l-q2", "l-a2"))
    assert [t["content"] for t in store.turns("alice", "s1", "support")] == ["s-q", "s-a"]
    assert [t["content"] for t in store.turns("alice", "s1", "llm")] == ["l-q2", "l-a2"]


def test_long_content_is_truncated(open_store):
    store = open_store(SessionLimits(max_content_chars=10))
    store.append("alice", "s1", "llm", exchange("x" * 25, "short"))
    assert [t["content"] for t in store.turns("alice", "s1", "llm")] == ["x" * 10, "short"]


def test_the_oldest_sessions_beyond_the_cap_are_evicted(tmp_path):
    clock = ManualClock()
    limits = SessionLimits(max_sessions=3, purge_interval_s=0)
    with SqliteSessionStore(tmp_path / "s.sqlite3", limits, clock) as store:
        for session in range(5):
            store.append("alice", f"s{session}", "llm", exchange("q", "a"))
            clock.advance(1)
        assert [store.last_agent("alice", f"s{s}") for s in range(5)] == [None, None, "llm", "llm", "llm"]
        assert store.turns("alice", "s0", "llm") == []
        evicted_turns = store._db().execute("SELECT COUNT(*) FROM turns").fetchone()[0]
        assert evicted_turns == 3 * 2


@pytest.mark.parametrize("user_id, session_id", [("../../etc", "passwd"), ("a/b", "c"), ("a", "b/c"), (None, "../..")])
def test_path_like_keys_stay_inside_the_sessions_folder(tmp_path, user_id, session_id):
    storage = Storage(str(tmp_path / "root"))
    store = ObjectSessionStore(storage)
    store.append(user_id, session_id, "llm", exchange("q", "a"))
    assert store.last_agent(user_id, session_id) == "llm"
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == [tmp_path / "root" / "sessions" / f"{session_key(user_id, session_id)}.json"]


def test_keys_that_concatenate_alike_stay_apart(open_store):
    store = open_store()
    store.append("a", "b/c", "support", exchange("q", "a"))
    store.append("a/b", "c", "llm", exchange("q", "a"))
    assert store.last_agent("a", "b/c") == "support"
    assert store.last_agent("a/b", "c") == "llm"
    assert session_key("a", "b/c") != session_key("a/b", "c")


@pytest.mark.parametrize(
    "turns, message",
    [
        ([{"role": "system", "content": "x"}], "role"),
        ([{"role": "user", "content": 3}], "content"),
        ([{"role": "user", "content": "x", "ts": "now"}], "ts"),
    ],
)
def test_invalid_turns_are_rejected_and_nothing_is_written(open_store, turns, message):
    store = open_store()
    with pytest.raises(ValueError, match=message):
        store.append("alice", "s1", "llm", exchange("q", "a") + turns)
    assert store.last_agent("alice", "s1") is None


@pytest.mark.parametrize("user_id, session_id", [("alice", ""), ("alice", None), (7, "s1")])
def test_invalid_keys_are_rejected(user_id, session_id):
    with pytest.raises(ValueError):
        session_key(user_id, session_id)


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="max_turns"):
        SessionLimits(max_turns=0)


def test_open_session_store_picks_sqlite_for_a_local_path_and_objects_otherwise(tmp_path, s3_uri):
    with open_session_store(str(tmp_path)) as local:
        assert isinstance(local, SqliteSessionStore)
        assert local.path == tmp_path / "sessions" / "sessions.sqlite3"
    with open_session_store(s3_uri) as remote:
        assert isinstance(remote, ObjectSessionStore)
        remote.append("alice", "s1", "llm", exchange("q", "a"))
        assert remote.last_agent("alice", "s1") == "llm"


def test_threads_sharing_one_sqlite_store_lose_no_turns(tmp_path):
    with SqliteSessionStore(tmp_path / "s.sqlite3", SessionLimits(max_turns=1_000)) as store:

        def write(worker: int) -> None:
            for turn in range(20):
                store.append("alice", "s1", "llm", [{"role": "user", "content": f"{worker}-{turn}"}])

        threads = [threading.Thread(target=write, args=(worker,)) for worker in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        contents = [t["content"] for t in store.turns("alice", "s1", "llm")]
    assert sorted(contents) == sorted(f"{w}-{t}" for w in range(4) for t in range(20))


def append_from_another_process(path: str, worker: int, count: int) -> None:
    with SqliteSessionStore(Path(path), SessionLimits(max_turns=1_000, purge_interval_s=0)) as store:
        for turn in range(count):
            store.append("alice", "s1", "llm", [{"role": "user", "content": f"{worker}-{turn}"}])
            store.append("bob", f"s-{worker}-{turn}", "support", exchange("q", "a"))


def test_processes_sharing_one_sqlite_file_lose_no_turns(tmp_path):
    path = tmp_path / "sessions" / "sessions.sqlite3"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=append_from_another_process, args=(str(path), w, 25)) for w in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    with SqliteSessionStore(path, SessionLimits(max_turns=1_000)) as store:
        contents = [t["content"] for t in store.turns("alice", "s1", "llm")]
        assert all(store.last_agent("bob", f"s-{w}-{t}") == "support" for w in range(2) for t in range(25))
    assert sorted(contents) == sorted(f"{w}-{t}" for w in range(2) for t in range(25))
