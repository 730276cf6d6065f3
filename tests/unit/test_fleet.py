"""ServeFleet.retire: a retired candidate leaves the traffic table at once and its Serve
application is deleted only after the drain time, so requests an ingress replica picked before
it saw the change still get answers; a configured version is never deleted; retiring again
(a restarted controller) finishes the deletion. Serve and the traffic actor are test doubles."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import serve.fleet
from serve.fleet import ServeFleet


class Remote:
    """A Ray actor method double: ``.remote(...)`` returns an awaitable."""

    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        async def call():
            return self.fn(*args)

        return call()


class TrafficDouble:
    def __init__(self, added: dict):
        self.added = added
        self.events: list[tuple[str, float]] = []
        self.snapshot = Remote(lambda: {"agents": {"sentiment": {"added": dict(self.added)}}})
        self.remove_version = Remote(self._remove)

    def _remove(self, agent, version):
        self.events.append((f"removed {version}", time.monotonic()))
        del self.added[version]


def fleet_with(monkeypatch, apps: set[str], added: dict, drain_s: float = 0.2):
    traffic = TrafficDouble(added)
    monkeypatch.setattr(serve.fleet.serve, "status", lambda: SimpleNamespace(applications={app: object() for app in apps}))

    def delete(app):
        traffic.events.append((f"deleted {app}", time.monotonic()))
        apps.discard(app)

    monkeypatch.setattr(serve.fleet.serve, "delete", delete)
    config = SimpleNamespace(rollouts=SimpleNamespace(drain_s=drain_s))
    return ServeFleet(config, "/tmp/unused", traffic, "baton"), traffic


def test_a_retired_candidate_leaves_the_table_at_once_and_its_app_after_the_drain(monkeypatch):
    apps = {"baton", "baton.sentiment.v3"}
    fleet, traffic = fleet_with(monkeypatch, apps, {"v3": {"app": "baton.sentiment.v3"}})

    asyncio.run(fleet.retire("sentiment", "v3"))

    (removed, removed_at), (deleted, deleted_at) = traffic.events
    assert (removed, deleted) == ("removed v3", "deleted baton.sentiment.v3")
    assert deleted_at - removed_at >= 0.2
    assert apps == {"baton"} and traffic.added == {}


def test_a_configured_version_is_never_deleted(monkeypatch):
    apps = {"baton"}
    fleet, traffic = fleet_with(monkeypatch, apps, {})

    asyncio.run(fleet.retire("sentiment", "v1"))

    assert traffic.events == [] and apps == {"baton"}


def test_retiring_again_after_a_crash_mid_drain_deletes_the_app(monkeypatch):
    apps = {"baton", "baton.sentiment.v3"}
    fleet, traffic = fleet_with(monkeypatch, apps, {}, drain_s=0.0)  # the table forgot v3 before the crash

    asyncio.run(fleet.retire("sentiment", "v3"))

    assert [event for event, _ in traffic.events] == ["deleted baton.sentiment.v3"] and apps == {"baton"}
