"""Operator actions: one audit record shape (operator_record) for every path, and every CLI
action (keys create, models alias/promote/approve, deploys) audited, done or refused.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

import serve.cli as serve_cli
import train.cli as train_cli
from actors.audit import AuditWriter, cli_principal, operator_record, read_audit, write_operator_action
from cluster.config import ENVIRONMENT_VAR
from cluster.errors import BatonError, ConfigError, Conflict
from cluster.keys import KeyStore
from cluster.registry import ModelRegistry
from cluster.storage import Storage

ORCHESTRA = {
    "storage": "store",
    "agents": [
        {"name": "mood", "kind": "sentiment", "description": "how a text feels", "versions": [
            {"version": "v1", "weight": 50},
            {"version": "v2", "weight": 50, "kind": "classify", "model": "registry://sst@champion", "if_missing": "skip"},
        ]},
    ],
}


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """A working directory with configs/orchestra.yaml (storage ./store) and a prod overlay."""
    (tmp_path / "configs/environments").mkdir(parents=True)
    (tmp_path / "configs/orchestra.yaml").write_text(yaml.safe_dump(ORCHESTRA))
    (tmp_path / "configs/environments/prod.yaml").write_text(yaml.safe_dump({"environment": "prod", "require_approval": True}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENVIRONMENT_VAR, raising=False)
    return tmp_path


@pytest.fixture
def storage(repo) -> Storage:
    return Storage(str(repo / "store"))


@pytest.fixture
def registry(storage, repo) -> ModelRegistry:
    """sst v1 (accuracy 0.8, the champion) and v2 (accuracy 0.9)."""
    registry = ModelRegistry(storage)
    model_dir = repo / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    for accuracy in (0.8, 0.9):
        registry.register(
            "sst", model_dir, task="sequence-classification", base_model="minilm", labels=["NEGATIVE", "POSITIVE"],
            metrics={"accuracy": accuracy}, dataset={"uri": "x", "sha256": "0" * 64, "rows": 1},
            recipe={"evaluation": {"metric": "accuracy", "promote_margin": 0.05}},
        )
    registry.promote("sst", "v1", metric="accuracy", margin=0.0)
    return registry


def baton(*args: str):
    root = typer.Typer()
    serve_cli.register(root)
    train_cli.register(root)
    return CliRunner().invoke(root, list(args))


def actions(storage: Storage, endpoint: str) -> list[dict]:
    records = read_audit(storage, endpoint=endpoint, limit=50)
    return [{**r, "output": json.loads(r["output"]) if r["output"] else None} for r in records]


# -- the record ----------------------------------------------------------------------------


def test_operator_record_is_an_audit_row_with_before_and_after():
    started = time.time()
    row = operator_record(
        "key_1", "admin.traffic.set", before={"v1": 100}, after={"v1": 90, "v2": 10}, agent="mood",
        extra={"sticky": True}, request_id="req-1",
    )
    assert row["endpoint"] == "admin.traffic.set" and row["principal"] == "key_1" and row["agent"] == "mood"
    assert row["output"] == {"before": {"v1": 100}, "after": {"v1": 90, "v2": 10}, "sticky": True}
    assert row["status_code"] == 200 and row["error"] is None and row["request_id"] == "req-1"
    assert started <= row["ts"] <= time.time()
    assert operator_record("p", "a")["request_id"] != operator_record("p", "a")["request_id"]


def test_operator_record_refuses_what_would_hide_the_change():
    with pytest.raises(ValueError, match="before"):
        operator_record("p", "admin.models.alias", extra={"before": "v1"})
    with pytest.raises(ValueError, match="principal"):
        operator_record("", "admin.models.alias")
    with pytest.raises(ValueError, match="status_code"):
        operator_record("p", "admin.models.alias", status=409.5)


def test_the_audit_writer_takes_operator_records(tmp_path):
    storage = Storage(str(tmp_path / "store"))
    writer = AuditWriter(storage, store_input_text=False)
    writer.write([operator_record("controller:rollout", "rollout.step", after={"weight": 25}, agent="mood", version="v3", ts=1_700_000_000)])
    writer.close()
    [row] = read_audit(storage)
    assert (row["endpoint"], row["agent"], row["version"], row["status_code"]) == ("rollout.step", "mood", "v3", 200)
    assert datetime.fromisoformat(row["ts"]).timestamp() == 1_700_000_000
    assert json.loads(row["output"]) == {"before": None, "after": {"weight": 25}}


def test_write_operator_action_is_readable_at_once(tmp_path):
    storage = Storage(str(tmp_path / "store"))
    record = write_operator_action(storage, "cli:alice", "admin.models.alias", status=404, error="not_found: no model", extra={"name": "x"})
    [row] = read_audit(storage)
    assert row["request_id"] == record["request_id"] and row["principal"] == "cli:alice"
    assert row["status_code"] == 404 and row["error"] == "not_found: no model"


# -- keys ----------------------------------------------------------------------------------


def test_keys_create_is_audited_without_the_key(repo, storage):
    result = baton("keys", "create", "--role", "invoke", "--name", "ci-bot")
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    [record] = actions(storage, "admin.keys.create")
    assert record["principal"] == cli_principal() and record["status_code"] == 200
    assert record["output"] == {"before": None, "after": {"id": created["id"], "name": "ci-bot", "role": "invoke"}}
    assert created["key"] not in json.dumps(read_audit(storage))


def test_a_refused_key_is_audited_too(repo, storage):
    result = baton("keys", "create", "--role", "root", "--name", "mallory")
    assert isinstance(result.exception, ConfigError)
    [record] = actions(storage, "admin.keys.create")
    assert record["status_code"] == 422 and "role" in record["error"]
    assert record["output"] == {"before": None, "after": None, "role": "root", "name": "mallory"}


def test_the_dev_key_baton_up_makes_is_audited_once(repo, storage):
    store = KeyStore(storage)
    key = serve_cli.ensure_dev_key(store, repo / "dev-key")
    assert serve_cli.ensure_dev_key(store, repo / "dev-key") == key  # kept, not created again
    [record] = actions(storage, "admin.keys.create")
    assert record["output"]["after"]["role"] == "admin" and record["output"]["via"] == "baton up"


# -- models --------------------------------------------------------------------------------


def test_models_alias_is_audited(registry, storage):
    result = baton("models", "alias", "sst", "v2", "canary", "--storage", storage.uri)
    assert result.exit_code == 0, result.output
    [record] = actions(storage, "admin.models.alias")
    assert record["principal"] == cli_principal()
    assert record["output"] == {"before": None, "after": "v2", "name": "sst", "alias": "canary"}

    failed = baton("models", "alias", "sst", "v9", "canary", "--storage", storage.uri)
    assert failed.exit_code != 0
    refused = actions(storage, "admin.models.alias")[-1]
    assert refused["status_code"] == 404 and refused["error"].startswith("not_found: ")


def test_models_promote_is_audited_done_and_refused(registry, storage):
    result = baton("models", "promote", "sst", "v2", "--storage", storage.uri)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["after"] == "v2" and registry.aliases("sst")["champion"] == "v2"
    [done] = actions(storage, "admin.models.promote")
    assert done["status_code"] == 200
    assert {k: done["output"][k] for k in ("before", "after", "name", "candidate", "metric")} == {
        "before": "v1", "after": "v2", "name": "sst", "candidate": "v2", "metric": "accuracy",
    }

    # v1 no longer beats the champion by the margin: refused, audited, aliases unchanged.
    refused = baton("models", "promote", "sst", "v1", "--storage", storage.uri)
    assert refused.exit_code != 0 and registry.aliases("sst")["champion"] == "v2"
    record = actions(storage, "admin.models.promote")[-1]
    assert record["status_code"] == 409 and record["error"].startswith("conflict: ")
    assert record["output"] == {"before": None, "after": None, "name": "sst", "candidate": "v1"}


def test_models_approve_and_revoke_print_and_audit_before_and_after(registry, storage):
    result = baton("models", "approve", "sst:v2", "--env", "prod", "--storage", storage.uri)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["before"] is None and printed["after"]["principal"] == cli_principal()
    assert registry.is_approved("sst", "v2", "prod")
    [record] = actions(storage, "admin.models.approve")
    assert record["output"]["after"] == printed["after"]
    assert (record["output"]["name"], record["output"]["version"], record["output"]["environment"]) == ("sst", "v2", "prod")

    revoked = baton("models", "approve", "sst:v2", "--env", "prod", "--revoke", "--storage", storage.uri)
    assert revoked.exit_code == 0, revoked.output
    assert not registry.is_approved("sst", "v2", "prod")
    [record] = actions(storage, "admin.models.revoke")
    assert record["output"]["before"] == printed["after"] and record["output"]["after"] is None


def test_models_approve_takes_baton_env_and_needs_a_version(registry, storage):
    result = CliRunner().invoke(_models_root(), ["models", "approve", "sst:v1", "--storage", storage.uri], env={ENVIRONMENT_VAR: "test"})
    assert result.exit_code == 0, result.output
    assert registry.is_approved("sst", "v1", "test")

    refused = baton("models", "approve", "sst@champion", "--env", "prod", "--storage", storage.uri)
    assert refused.exit_code != 0 and not registry.is_approved("sst", "v1", "prod")
    record = actions(storage, "admin.models.approve")[-1]
    assert record["status_code"] == 422 and "NAME:VERSION" in record["error"]


def _models_root() -> typer.Typer:
    root = typer.Typer()
    train_cli.register(root)
    return root


# -- promote --deploy ----------------------------------------------------------------------


@pytest.fixture
def cluster(monkeypatch) -> list[tuple]:
    """A running cluster as far as promote --deploy can tell; the redeploys it asked for."""
    deploys: list[tuple] = []
    monkeypatch.setattr(train_cli.local, "dashboard_up", lambda: True)
    monkeypatch.setattr(serve_cli, "deploy_and_wait", lambda *args: deploys.append(args))
    return deploys


def test_promote_deploy_redeploys_the_orchestra_after_the_promotion(registry, storage, cluster):
    result = baton("models", "promote", "sst", "v2", "--storage", storage.uri, "--deploy", "--timeout", "30")
    assert result.exit_code == 0, result.output
    assert registry.aliases("sst")["champion"] == "v2"
    assert cluster == [(Path("configs/orchestra.yaml"), None, 30.0)]


def test_promote_deploy_to_prod_refuses_an_unapproved_version_before_the_alias_moves(registry, storage, cluster):
    result = baton("models", "promote", "sst", "v2", "--storage", storage.uri, "--deploy", "--env", "prod")
    assert isinstance(result.exception, Conflict) and "baton models approve sst:v2 --env prod" in str(result.exception)
    assert registry.aliases("sst")["champion"] == "v1" and cluster == []
    assert actions(storage, "admin.models.promote")[-1]["status_code"] == 409

    registry.approve("sst", "v2", "prod", "cli:alice")
    result = baton("models", "promote", "sst", "v2", "--storage", storage.uri, "--deploy", "--env", "prod")
    assert result.exit_code == 0, result.output
    assert cluster == [(Path("configs/orchestra.yaml"), "prod", 600.0)]


def test_promote_deploy_checks_the_target_before_promoting(registry, storage, cluster, monkeypatch, tmp_path_factory):
    other = tmp_path_factory.mktemp("other-store")
    wrong_storage = baton("models", "promote", "sst", "v2", "--storage", str(other), "--deploy")
    assert isinstance(wrong_storage.exception, ConfigError) and "serves models from" in str(wrong_storage.exception)

    Path("configs/plain.yaml").write_text(yaml.safe_dump({**ORCHESTRA, "agents": [{"name": "mood", "kind": "sentiment", "description": "feels"}]}))
    no_champion = baton("models", "promote", "sst", "v2", "--storage", storage.uri, "--deploy", "--config", "configs/plain.yaml")
    assert isinstance(no_champion.exception, ConfigError) and "registry://sst@champion" in str(no_champion.exception)

    monkeypatch.setattr(train_cli.local, "dashboard_up", lambda: False)
    no_cluster = baton("models", "promote", "sst", "v2", "--storage", storage.uri, "--deploy")
    assert isinstance(no_cluster.exception, BatonError) and "baton up" in str(no_cluster.exception)

    assert registry.aliases("sst")["champion"] == "v1" and cluster == [] and actions(storage, "admin.models.promote") == []


def test_a_failed_redeploy_says_how_to_move_the_alias_back(registry, storage, cluster, monkeypatch):
    def fail(*args):
        raise BatonError("deployment failed")

    monkeypatch.setattr(serve_cli, "deploy_and_wait", fail)
    result = baton("models", "promote", "sst", "v2", "--storage", storage.uri, "--deploy")
    assert "baton models alias sst v1 champion" in str(result.exception)
    assert registry.aliases("sst")["champion"] == "v2"


# -- deploys -------------------------------------------------------------------------------


class FakeServe:
    """ServeSubmissionClient as deploy() uses it: what runs, and what was submitted."""

    running: dict = {}
    submitted: list[dict] = []

    def __init__(self, address: str):
        pass

    def get_serve_details(self) -> dict:
        return {"applications": {"baton": {"status": "RUNNING", "deployed_app_config": {"args": FakeServe.running}}}} if FakeServe.running else {}

    def deploy_applications(self, config: dict) -> None:
        FakeServe.submitted.append(config)
        FakeServe.running = config["applications"][0]["args"]


def test_a_deploy_is_audited_with_what_ran_before_and_after(registry, storage, monkeypatch):
    monkeypatch.setattr("ray.dashboard.modules.serve.sdk.ServeSubmissionClient", FakeServe)
    monkeypatch.setattr(FakeServe, "running", {})
    monkeypatch.setattr(FakeServe, "submitted", [])
    first = serve_cli.deploy(Path("configs/orchestra.yaml"))
    registry.approve("sst", "v1", "prod", "cli:alice")
    second = serve_cli.deploy(Path("configs/orchestra.yaml"), "prod")
    assert FakeServe.submitted == [first, second]
    records = actions(storage, "admin.deploy")
    assert [r["output"]["before"] for r in records] == [None, first["applications"][0]["args"]]
    assert records[1]["output"]["after"]["environment"] == "prod"
    assert records[1]["output"]["after"]["models"] == {"mood/v2": "registry://sst:v1"}
