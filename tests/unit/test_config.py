"""Orchestra config loading: the shipped files load, bad files name the field and value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from actors.specialists.registry import SPECIALISTS, validate_params
from cluster.config import load_orchestra
from cluster.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def load(path):
    return load_orchestra(path, known_kinds=SPECIALISTS, check_params=validate_params)


@pytest.mark.parametrize("name", ["orchestra.yaml", "test.yaml", "examples/clinc_domains.yaml"])
def test_shipped_configs_load(name):
    config = load(REPO / "configs" / name)
    assert config.agents and all(sum(v.weight for v in a.versions) == 100 for a in config.agents)


def test_clinc_example_has_ten_domains_of_at_most_twenty_examples():
    config = load(REPO / "configs/examples/clinc_domains.yaml")
    domains = [a for a in config.agents if not a.composite]
    assert len(domains) == 10 and all(1 <= len(a.examples) <= 20 for a in domains)
    [assistant] = [a for a in config.agents if a.composite]
    assert sorted(assistant.supervisor.team) == sorted(a.name for a in domains)


def write(tmp_path, data) -> Path:
    path = tmp_path / "orchestra.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def base() -> dict:
    return {"agents": [{"name": "sentiment", "kind": "sentiment", "description": "mood", "versions": [{"version": "v1", "weight": 100}]}]}


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c["agents"][0]["versions"][0].update(weight=150), "agents[0].versions[0].weight = 150"),
        (lambda c: c.update(colour="red"), "colour"),
        (lambda c: c["agents"][0].update(name="Bad Name"), "agents[0].name = 'Bad Name'"),
        (lambda c: c["agents"][0]["versions"].append({"version": "v2", "weight": 10}), "sum to 110"),
        (lambda c: c["agents"][0].update(kind="telepathy"), "agents[0].kind = 'telepathy'"),
        (lambda c: c["agents"][0]["versions"][0].update(params={"mixed_threshold": "lots"}), "agents[0].versions[0].params"),
        (lambda c: c.update(router={"fallback_agent": "ghost"}), "ghost"),
        (lambda c: c.update(limits={"max_text_chars": 0}), "limits.max_text_chars = 0"),
    ],
)
def test_invalid_config_names_field_and_value(tmp_path, mutate, expected):
    config = base()
    mutate(config)
    with pytest.raises(ConfigError) as raised:
        load(write(tmp_path, config))
    assert expected in str(raised.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("agents: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(broken)


def test_every_config_field_is_described():

    import cluster.config as module

    models = [m for m in vars(module).values() if isinstance(m, type) and issubclass(m, module.Strict) and m is not module.Strict]
    assert len(models) > 10
    for model in models:
        assert model.model_config.get("extra") == "forbid", model
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
