"""Environments: configs/environments/*.yaml overlaid on the orchestra (merge rules, errors,
BATON_ENV), and a prod orchestra serving only registry versions approved for prod.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from actors.specialists.registry import SPECIALISTS, validate_params
from cluster.config import ENVIRONMENT_VAR, load_orchestra, selected_environment
from cluster.errors import ConfigError
from cluster.registry import ModelRegistry
from cluster.storage import Storage

REPO = Path(__file__).resolve().parents[2]
SHIPPED_ORCHESTRAS = ["orchestra.yaml", "test.yaml", "examples/clinc_domains.yaml", "examples/sysops.yaml"]

ORCHESTRA = {
    "storage": "store",
    "auth": {"anonymous_metrics": True, "rate_limit": {"requests_per_s": 100, "burst": 200}},
    "router": {"rules": [{"name": "vip", "match": {"metadata": {"tier": "gold"}}, "agent": "mood"}]},
    "agents": [
        {"name": "mood", "kind": "sentiment", "description": "how a text feels", "examples": ["I love it"],
         "versions": [
             {"version": "v1", "weight": 50},
             {"version": "v2", "weight": 50, "kind": "classify", "model": "registry://sst@champion", "if_missing": "skip"},
         ]},
        {"name": "tone", "kind": "sentiment", "description": "the tone of a text", "examples": ["how rude"]},
    ],
}


def load(path: Path, environment: str | None = None, base_dir: Path | None = None):
    return load_orchestra(path, known_kinds=SPECIALISTS, check_params=validate_params, environment=environment, base_dir=base_dir)


@pytest.fixture
def repo(tmp_path) -> Path:
    """A repository with configs/orchestra.yaml and an empty configs/environments/."""
    (tmp_path / "configs" / "environments").mkdir(parents=True)
    (tmp_path / "configs" / "orchestra.yaml").write_text(yaml.safe_dump(ORCHESTRA))
    return tmp_path


def overlay(repo: Path, name: str, data) -> Path:
    path = repo / "configs" / "environments" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# -- the shipped environments --------------------------------------------------------------


@pytest.mark.parametrize("environment", ["dev", "test", "prod"])
@pytest.mark.parametrize("orchestra", SHIPPED_ORCHESTRAS)
def test_shipped_environments_overlay_every_shipped_orchestra(orchestra, environment):
    config = load(REPO / "configs" / orchestra, environment, REPO)
    assert config.environment == environment
    assert config.require_approval is (environment == "prod")


def test_prod_is_stricter_than_the_orchestra_it_overlays():
    base = load(REPO / "configs/orchestra.yaml")
    prod = load(REPO / "configs/orchestra.yaml", "prod", REPO)
    assert not prod.auth.anonymous_metrics
    assert prod.auth.rate_limit.requests_per_s < base.auth.rate_limit.requests_per_s
    assert prod.limits.max_text_chars < base.limits.max_text_chars
    assert prod.ingress.autoscaling.min_replicas > base.ingress.autoscaling.min_replicas
    assert prod.agents == base.agents and prod.storage == base.storage


def test_without_an_environment_the_orchestra_loads_as_written(repo):
    config = load(repo / "configs/orchestra.yaml")
    assert config.environment == "dev" and not config.require_approval


# -- merge rules ---------------------------------------------------------------------------


def test_mappings_merge_deeply_and_null_sets_null(repo):
    overlay(repo, "prod", {"auth": {"rate_limit": {"burst": 5}}, "router": {"fallback_agent": None}, "require_approval": True})
    config = load(repo / "configs/orchestra.yaml", "prod")
    assert config.auth.rate_limit.burst == 5
    assert config.auth.rate_limit.requests_per_s == 100 and config.auth.anonymous_metrics  # kept from the orchestra
    assert config.router.fallback_agent is None and [r.name for r in config.router.rules] == ["vip"]
    assert config.environment == "prod" and config.require_approval


def test_agents_merge_by_name_and_keep_their_order(repo):
    overlay(repo, "dev", {"agents": [{"name": "tone", "description": "tone, in dev"}, {"name": "mood", "sticky": False}]})
    config = load(repo / "configs/orchestra.yaml", "dev")
    assert config.agent_names() == ["mood", "tone"]
    mood, tone = config.agents
    assert tone.description == "tone, in dev" and tone.examples == ["how rude"]
    assert not mood.sticky and [v.version for v in mood.versions] == ["v1", "v2"] and mood.description == "how a text feels"


def test_other_lists_replace(repo):
    overlay(repo, "dev", {
        "agents": [{"name": "mood", "examples": ["meh"], "versions": [{"version": "v1", "weight": 100}]}],
        "router": {"rules": []},
    })
    config = load(repo / "configs/orchestra.yaml", "dev")
    mood = config.agent("mood")
    assert mood.examples == ["meh"] and [(v.version, v.weight) for v in mood.versions] == [("v1", 100)]
    assert config.router.rules == []


def test_an_empty_overlay_only_names_the_environment(repo):
    (repo / "configs/environments/test.yaml").write_text("")
    base, test = load(repo / "configs/orchestra.yaml"), load(repo / "configs/orchestra.yaml", "test")
    assert test.environment == "test" and test.model_copy(update={"environment": base.environment}) == base


def test_the_repo_defaults_to_the_config_files_parent_parent(repo, tmp_path_factory):
    overlay(repo, "prod", {"require_approval": True})
    assert load(repo / "configs/orchestra.yaml", "prod").require_approval
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    with pytest.raises(ConfigError, match="unknown environment 'prod'"):
        load(repo / "configs/orchestra.yaml", "prod", base_dir=elsewhere)


def test_an_overlay_file_given_by_path(repo, tmp_path_factory):
    path = tmp_path_factory.mktemp("overlays") / "staging.yaml"
    path.write_text(yaml.safe_dump({"require_approval": True}))
    assert load(repo / "configs/orchestra.yaml", str(path)).environment == "staging"
    path.write_text(yaml.safe_dump({"environment": "prod", "require_approval": True}))
    assert load(repo / "configs/orchestra.yaml", str(path)).environment == "prod"


def test_baton_env_selects_the_environment_when_none_is_given(monkeypatch):
    monkeypatch.delenv(ENVIRONMENT_VAR, raising=False)
    assert selected_environment(None) is None
    monkeypatch.setenv(ENVIRONMENT_VAR, "prod")
    assert selected_environment(None) == "prod"
    assert selected_environment("dev") == "dev"


# -- errors --------------------------------------------------------------------------------


def test_an_unknown_environment_names_the_available_ones(repo):
    overlay(repo, "dev", {})
    overlay(repo, "prod", {})
    for name in ("staging", "../configs/environments/prod", "Prod"):
        with pytest.raises(ConfigError, match=r"unknown environment .*available: dev, prod"):
            load(repo / "configs/orchestra.yaml", name)


def test_an_overlay_agent_must_be_an_agent_of_the_orchestra(repo):
    path = overlay(repo, "dev", {"agents": [{"name": "mod", "sticky": False}]})
    with pytest.raises(ConfigError, match=r"agents\[0\]\.name = 'mod': not an agent of the orchestra") as raised:
        load(repo / "configs/orchestra.yaml", "dev")
    assert str(path) in str(raised.value) and "'mood'" in str(raised.value)
    overlay(repo, "dev", {"agents": [{"sticky": False}]})
    with pytest.raises(ConfigError, match=r"agents\[0\]: an entry is a mapping with the 'name'"):
        load(repo / "configs/orchestra.yaml", "dev")
    overlay(repo, "dev", {"agents": {"mood": {"sticky": False}}})
    with pytest.raises(ConfigError, match="agents: a list of changes"):
        load(repo / "configs/orchestra.yaml", "dev")


def test_an_overlay_is_a_mapping(repo):
    overlay(repo, "dev", ["environment", "dev"])
    with pytest.raises(ConfigError, match="an environment overlay is a mapping"):
        load(repo / "configs/orchestra.yaml", "dev")


def test_a_named_overlay_may_not_declare_another_environment(repo):
    overlay(repo, "staging", {"environment": "prod"})
    with pytest.raises(ConfigError, match="environment = 'prod', but the file was selected as environment 'staging'"):
        load(repo / "configs/orchestra.yaml", "staging")


def test_a_bad_overlay_value_names_both_files_and_the_field(repo):
    path = overlay(repo, "prod", {"auth": {"rate_limit": {"burst": 0}}})
    with pytest.raises(ConfigError) as raised:
        load(repo / "configs/orchestra.yaml", "prod")
    message = str(raised.value)
    assert str(repo / "configs/orchestra.yaml") in message and str(path) in message
    assert "auth.rate_limit.burst = 0" in message


# -- approvals: prod serves only approved versions ----------------------------------------


def register_sst(storage_uri: str, tmp_path: Path) -> ModelRegistry:
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "config.json").write_text("{}")
    registry = ModelRegistry(Storage(storage_uri))
    registry.register(
        "sst", model_dir, task="sequence-classification", base_model="minilm", labels=["NEGATIVE", "POSITIVE"],
        metrics={"accuracy": 0.9}, dataset={"uri": "x", "sha256": "0" * 64, "rows": 1}, recipe={},
    )
    registry.set_alias("sst", "v1", "champion")
    return registry


def test_prod_refuses_an_unapproved_version_and_serves_it_once_approved(repo):
    from serve.builder import pin_models

    overlay(repo, "prod", {"require_approval": True})
    storage_uri = str(repo / "store")
    registry = register_sst(storage_uri, repo)
    prod = load(repo / "configs/orchestra.yaml", "prod")

    # if_missing: skip covers a missing model only: an unapproved one still fails the deploy.
    with pytest.raises(ConfigError) as raised:
        pin_models(prod, storage_uri)
    message = str(raised.value)
    assert "'prod'" in message and "mood/v2: sst:v1" in message and "baton models approve sst:v1 --env prod" in message

    registry.approve("sst", "v1", "test", "cli:alice")  # approved elsewhere does not count
    with pytest.raises(ConfigError, match="sst:v1"):
        pin_models(prod, storage_uri)

    registry.approve("sst", "v1", "prod", "cli:alice")
    pinned = pin_models(prod, storage_uri)
    assert pinned.agent("mood").versions[1].model == "registry://sst:v1"

    # dev requires no approval: the same registry serves whatever the alias says.
    registry.revoke_approval("sst", "v1", "prod")
    assert pin_models(load(repo / "configs/orchestra.yaml"), storage_uri).agent("mood").versions[1].model == "registry://sst:v1"


def test_prod_still_skips_a_missing_model_that_allows_it(repo):
    from serve.builder import pin_models

    overlay(repo, "prod", {"require_approval": True})
    pinned = pin_models(load(repo / "configs/orchestra.yaml", "prod"), str(repo / "store"))
    assert [(v.version, v.weight) for v in pinned.agent("mood").versions] == [("v1", 100)]


# -- the environment reaches the Serve application -----------------------------------------


def test_serve_config_carries_the_environment_and_the_pinned_models(repo, monkeypatch):
    from serve import builder

    overlay(repo, "prod", {"require_approval": True, "ingress": {"max_ongoing_requests": 7}})
    registry = register_sst(str(repo / "store"), repo)
    registry.approve("sst", "v1", "prod", "cli:alice")
    deployed = builder.serve_config(repo / "configs/orchestra.yaml", repo, environment="prod")
    [app] = deployed["applications"]
    assert app["args"]["environment"] == "prod" and app["args"]["models"] == {"mood/v2": "registry://sst:v1"}
    assert app["deployments"][0]["max_ongoing_requests"] == 7

    built = {}
    monkeypatch.setattr(builder, "build_application", lambda config, storage_uri: built.update(config=config, storage=storage_uri))
    builder.build_app(app["args"])
    assert built["config"].environment == "prod" and built["config"].ingress.max_ongoing_requests == 7
    assert built["storage"] == str(repo / "store")

    # A moved alias changes the args, so Serve rebuilds the application on redeploy.
    model_dir = repo / "model"
    registry.register("sst", model_dir, task="t", base_model="b", labels=["A"], metrics={}, dataset={"uri": "x", "sha256": "0" * 64, "rows": 1}, recipe={})
    registry.set_alias("sst", "v2", "champion")
    registry.approve("sst", "v2", "prod", "cli:alice")
    again = builder.serve_config(repo / "configs/orchestra.yaml", repo, environment="prod")
    assert again["applications"][0]["args"]["models"] == {"mood/v2": "registry://sst:v2"}


def test_an_edited_orchestra_changes_the_args_so_serve_rebuilds(repo):
    """Serve rebuilds an application only when its args change: an edit of the orchestra file
    that moves no alias and no code must still reach the replicas."""
    from serve import builder

    path = repo / "configs/orchestra.yaml"
    first = builder.serve_config(path, repo)["applications"][0]["args"]
    assert builder.serve_config(path, repo)["applications"][0]["args"] == first
    edited = yaml.safe_load(path.read_text())
    edited.setdefault("limits", {})["max_text_chars"] = 1234
    path.write_text(yaml.safe_dump(edited))
    second = builder.serve_config(path, repo)["applications"][0]["args"]
    assert second["orchestra_sha256"] != first["orchestra_sha256"]
    assert {k: v for k, v in second.items() if k != "orchestra_sha256"} == {k: v for k, v in first.items() if k != "orchestra_sha256"}


def test_an_overlay_file_reaches_serve_as_an_absolute_path(repo, monkeypatch, tmp_path_factory):
    from serve import builder

    path = tmp_path_factory.mktemp("overlays") / "staging.yaml"
    path.write_text(yaml.safe_dump({"ingress": {"max_ongoing_requests": 9}}))
    monkeypatch.chdir(path.parent)
    deployed = builder.serve_config(repo / "configs/orchestra.yaml", repo, environment="staging.yaml")
    assert deployed["applications"][0]["args"]["environment"] == str(path)
    assert "environment" not in builder.serve_config(repo / "configs/orchestra.yaml", repo)["applications"][0]["args"]


def serve_cli(args: list[str], env: dict[str, str] | None = None):
    from serve.cli import serve_config

    root = typer.Typer()
    root.command("serve-config")(serve_config)
    root.command("noop")(lambda: None)  # a second command keeps serve-config a subcommand
    return CliRunner().invoke(root, ["serve-config", *args], env=env)


def test_cli_serve_config_takes_env_or_baton_env(repo, monkeypatch):
    monkeypatch.chdir(repo)
    monkeypatch.delenv(ENVIRONMENT_VAR, raising=False)
    overlay(repo, "prod", {"require_approval": True})
    registry = register_sst(str(repo / "store"), repo)

    refused = serve_cli(["--config", "configs/orchestra.yaml", "--env", "prod"])
    assert refused.exit_code != 0 and isinstance(refused.exception, ConfigError)
    assert "baton models approve sst:v1 --env prod" in str(refused.exception)

    registry.approve("sst", "v1", "prod", "cli:alice")
    for args, env in ((["--env", "prod"], None), ([], {ENVIRONMENT_VAR: "prod"})):
        result = serve_cli(["--config", "configs/orchestra.yaml", *args], env)
        assert result.exit_code == 0, result.output
        assert yaml.safe_load(result.stdout)["applications"][0]["args"]["environment"] == "prod"
    plain = serve_cli(["--config", "configs/orchestra.yaml"])
    assert "environment" not in yaml.safe_load(plain.stdout)["applications"][0]["args"]


def test_a_redeploy_replaces_only_the_deployments_whose_arguments_changed(repo):
    """Each deployment's version is a fingerprint of the code and its constructor's arguments:
    Serve keeps the replicas of an unchanged version through a redeploy, so an ingress-only edit
    replaces only the ingress, and an agent's new param only that agent's replicas."""
    from serve import builder

    storage = str(repo / "store")

    def versions(config) -> dict[str, str]:
        graph = builder.build_application(config, storage)
        ingress = graph._bound_deployment
        agents = {app._bound_deployment.name: app._bound_deployment._version for versions in ingress.init_args[2].values() for app in versions.values()}
        return {builder.INGRESS: ingress._version, **agents}

    config = load(repo / "configs/orchestra.yaml")
    first = versions(config)
    assert set(first) == {"Ingress", "mood.v1", "tone.v1"} and len(set(first.values())) == 3
    assert versions(load(repo / "configs/orchestra.yaml")) == first
    admission = config.ingress.admission.model_copy(update={"max_concurrent": 1})
    stricter = config.model_copy(update={"ingress": config.ingress.model_copy(update={"admission": admission})})
    assert {name for name, tag in versions(stricter).items() if tag != first[name]} == {"Ingress"}
    tone = config.agent("tone").model_copy(update={"versions": [config.agent("tone").versions[0].model_copy(update={"params": {"neutral_threshold": 0.2}})]})
    retuned = config.model_copy(update={"agents": [config.agent("mood"), tone]})
    assert {name for name, tag in versions(retuned).items() if tag != first[name]} == {"Ingress", "tone.v1"}
