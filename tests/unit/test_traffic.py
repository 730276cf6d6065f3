"""TrafficTable: validation, weighted picks, stickiness, generations."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from actors.traffic import TrafficTable
from cluster.errors import Conflict, NotFound, ValidationFailed


def table() -> TrafficTable:
    return TrafficTable({"sentiment": {"weights": {"v1": 90, "v2": 10}, "sticky": True}})


def test_picks_follow_the_weights():
    rng = random.Random(7)
    counts = Counter(table().pick("sentiment", rng=rng) for _ in range(20_000))
    assert 0.88 < counts["v1"] / 20_000 < 0.92


def test_sticky_key_keeps_its_version_and_moves_only_when_its_slice_moves():
    traffic = table()
    before = {f"user-{i}": traffic.pick("sentiment", f"user-{i}") for i in range(2_000)}
    assert all(traffic.pick("sentiment", key) == version for key, version in before.items())
    traffic.set_weights("sentiment", {"v1": 80, "v2": 20})
    after = {key: traffic.pick("sentiment", key) for key in before}
    moved = [key for key in before if before[key] != after[key]]
    assert all(before[k] == "v1" and after[k] == "v2" for k in moved)
    assert 0.05 < len(moved) / len(before) < 0.15


def test_zero_weight_version_gets_nothing():
    traffic = table()
    traffic.set_weights("sentiment", {"v1": 0, "v2": 100})
    assert {traffic.pick("sentiment", f"k{i}") for i in range(500)} == {"v2"}


@pytest.mark.parametrize(
    "weights, error, words",
    [
        ({"v1": 50, "v3": 50}, Conflict, "v3"),
        ({"v1": 60, "v2": 60}, ValidationFailed, "100"),
        ({"v1": -1, "v2": 101}, ValidationFailed, "non-negative"),
        ({"v1": 99.5, "v2": 0.5}, ValidationFailed, "integer"),
        ({"v1": True, "v2": 99}, ValidationFailed, "integer"),
    ],
)
def test_bad_weights_are_refused_and_change_nothing(weights, error, words):
    traffic = table()
    with pytest.raises(error, match=words):
        traffic.set_weights("sentiment", weights)
    assert traffic.weights("sentiment") == {"v1": 90, "v2": 10} and traffic.generation == 0


def test_unknown_agent_is_not_found():
    with pytest.raises(NotFound):
        table().set_weights("ghost", {"v1": 100})


def test_change_returns_before_after_and_replicas_follow_newer_snapshots():
    leader, follower = table(), table()
    before, after = leader.set_weights("sentiment", {"v1": 50, "v2": 50}, sticky=False)
    assert before == {"weights": {"v1": 90, "v2": 10}, "sticky": True}
    assert after == {"weights": {"v1": 50, "v2": 50}, "sticky": False}
    follower.load(leader.snapshot())
    assert follower.weights("sentiment") == {"v1": 50, "v2": 50} and follower.generation == 1
    stale = table().snapshot()
    follower.load(stale)
    assert follower.weights("sentiment") == {"v1": 50, "v2": 50}


def test_shared_table_adopts_a_new_deploy_and_persists(tmp_path):
    from serve.control import TrafficActor

    agents = {"sentiment": {"weights": {"v1": 90, "v2": 10}, "sticky": True}}
    actor = TrafficActor(str(tmp_path), agents, "deploy-a")
    actor.set_weights("sentiment", {"v1": 50, "v2": 50}, None)
    assert actor.adopt(agents, "deploy-a")["agents"]["sentiment"]["weights"] == {"v1": 50, "v2": 50}
    # Which Serve apps run is given, as on a cluster, so this plain-Python test starts no Ray.
    restarted = TrafficActor(str(tmp_path), agents, "deploy-a", running_apps=lambda: {"baton"})
    assert restarted.snapshot()["agents"]["sentiment"]["weights"] == {"v1": 50, "v2": 50}
    new = {**agents, "tiny": {"weights": {"v1": 100}, "sticky": False}}
    snapshot = restarted.adopt(new, "deploy-b")
    assert snapshot["fingerprint"] == "deploy-b" and set(snapshot["agents"]) == {"sentiment", "tiny"}
    assert snapshot["agents"]["sentiment"]["weights"] == {"v1": 90, "v2": 10}
    assert snapshot["generation"] > 1


def test_a_restarted_table_forgets_run_time_versions_whose_app_is_gone(tmp_path):
    """After a cluster restart the candidates' Serve apps are gone: a promoted candidate that
    took all traffic voids the saved split (the config's applies, whose version pins the new
    champion); a retired-weight one just leaves. While its app runs, a version stays."""
    from serve.control import TrafficActor

    agents = {"sentiment": {"weights": {"v1": 0, "v2": 100}, "sticky": True}}
    actor = TrafficActor(str(tmp_path), agents, "deploy-a", running_apps=set)
    actor.add_version("sentiment", "v2-2", {"app": "baton.sentiment.v2-2", "deployment": "sentiment.v2-2"})
    actor.add_version("sentiment", "v3", {"app": "baton.sentiment.v3", "deployment": "sentiment.v3"})
    actor.set_weights("sentiment", {"v2-2": 100}, None)

    kept = TrafficActor(str(tmp_path), agents, "deploy-a", running_apps=lambda: {"baton", "baton.sentiment.v2-2", "baton.sentiment.v3"})
    assert kept.weights("sentiment") == {"v1": 0, "v2": 0, "v2-2": 100, "v3": 0}

    partly = TrafficActor(str(tmp_path), agents, "deploy-a", running_apps=lambda: {"baton", "baton.sentiment.v2-2"})
    assert partly.weights("sentiment") == {"v1": 0, "v2": 0, "v2-2": 100}

    restarted = TrafficActor(str(tmp_path), agents, "deploy-a", running_apps=lambda: {"baton"})
    assert restarted.weights("sentiment") == {"v1": 0, "v2": 100} and restarted.table.added() == {}
    again = TrafficActor(str(tmp_path), agents, "deploy-a", running_apps=lambda: {"baton"})
    assert again.weights("sentiment") == {"v1": 0, "v2": 100}  # the reset was saved
