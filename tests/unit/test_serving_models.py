"""Serving registered models: sentiment mapping of classifier output, weight re-spreading,
and pinning registry aliases (or skipping missing models) when an orchestra is built.
"""

from __future__ import annotations

import numpy as np
import pytest

from actors.specialists.classify import sentiment_result
from cluster.config import OrchestraConfig
from cluster.errors import ConfigError
from cluster.registry import ModelRegistry
from cluster.storage import Storage
from serve.builder import pin_models, rescale


def test_confident_binary_output_keeps_its_label():
    result = sentiment_result(["NEGATIVE", "POSITIVE"], np.array([0.05, 0.95]), neutral_threshold=0.7)
    assert result["label"] == "POSITIVE"
    assert result["scores"] == {"POSITIVE": 0.95, "NEGATIVE": 0.05, "NEUTRAL": 0.0, "MIXED": 0.0}


def test_doubt_becomes_neutral_and_scores_still_sum_to_one():
    result = sentiment_result(["NEGATIVE", "POSITIVE"], np.array([0.45, 0.55]), neutral_threshold=0.7)
    assert result["label"] == "NEUTRAL"
    assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-3)
    assert result["scores"]["NEUTRAL"] == pytest.approx(0.45)


@pytest.mark.parametrize("weights, expected", [([90], [100]), ([0], [100]), ([0, 0, 0], [34, 33, 33]), ([30, 30], [50, 50])])
def test_rescale_sums_to_100(weights, expected):
    assert rescale(weights) == expected


def orchestra(storage: str) -> OrchestraConfig:
    return OrchestraConfig.model_validate(
        {
            "storage": storage,
            "router": {"fallback_agent": "intents"},
            "agents": [
                {"name": "sentiment", "kind": "sentiment", "description": "mood", "versions": [
                    {"version": "v1", "weight": 0},
                    {"version": "v2", "weight": 100, "kind": "classify", "model": "registry://sst@champion", "if_missing": "skip"},
                ]},
                {"name": "intents", "kind": "classify", "description": "intents", "versions": [
                    {"version": "v1", "weight": 100, "model": "registry://clinc@champion", "if_missing": "skip"},
                ]},
            ],
        }
    )


def test_missing_models_are_skipped_and_weights_re_spread(tmp_path):
    pinned = pin_models(orchestra(str(tmp_path)), str(tmp_path))
    assert [a.name for a in pinned.agents] == ["sentiment"]
    assert [(v.version, v.weight) for v in pinned.agents[0].versions] == [("v1", 100)]
    assert pinned.router.fallback_agent is None


def test_present_models_are_pinned_to_a_version(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    registry = ModelRegistry(Storage(str(tmp_path / "store")))
    manifest = registry.register(
        "sst", model_dir, task="sequence-classification", base_model="minilm", labels=["NEGATIVE", "POSITIVE"],
        metrics={"accuracy": 0.9}, dataset={"uri": "x", "sha256": "0" * 64, "rows": 1}, recipe={},
    )
    registry.promote("sst", manifest.version, metric="accuracy", margin=0.0)
    pinned = pin_models(orchestra(str(tmp_path / "store")), str(tmp_path / "store"))
    versions = {v.version: v for v in pinned.agents[0].versions}
    assert versions["v2"].model == f"registry://sst:{manifest.version}" and versions["v2"].weight == 100


def test_missing_model_fails_the_deploy_unless_skippable(tmp_path):
    config = orchestra(str(tmp_path))
    strict = config.model_copy(update={"agents": [config.agents[1].model_copy(update={"versions": [config.agents[1].versions[0].model_copy(update={"if_missing": "fail"})]})]})
    with pytest.raises(ConfigError, match="clinc"):
        pin_models(strict, str(tmp_path))
