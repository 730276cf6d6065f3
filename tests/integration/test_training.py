"""The model lifecycle on the shared Ray instance: a 2-worker TorchTrainer run, a 2-trial
Tune search, registration, a Ray Jobs submission, and serving the result through /v1/route.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from cluster.registry import ModelRegistry
from cluster.storage import Storage
from tests.integration.conftest import REPO

pytestmark = pytest.mark.slow
TINY_DATA = REPO / "tests" / "data" / "tiny_sentiment.jsonl"


def tiny_recipe(storage_uri: str, **overrides) -> dict:
    recipe = {
        "name": "tiny-sentiment",
        "storage": storage_uri,
        "data": {"train": str(TINY_DATA), "validation_fraction": 0.25, "seed": 0},
        "training": {"epochs": 2, "learning_rate": 1.0e-4, "batch_size": 8, "max_length": 16, "seed": 0},
        # Serve replicas (and the rollout tests' candidates) hold part of the 2 CPUs: each worker asks for 0.4.
        "scaling": {"num_workers": 2, "resources_per_worker": {"CPU": 0.4}},
        "search": {"num_samples": 2, "space": {"learning_rate": {"loguniform": [5.0e-5, 2.0e-4]}}},
    }
    recipe.update(overrides)
    return recipe


@pytest.fixture(scope="module")
def trained(ray_session, storage_uri):
    from train.finetune import finetune
    from train.recipe import Recipe

    recipe = Recipe.model_validate(tiny_recipe(storage_uri))
    first = finetune(recipe, storage_uri=storage_uri, fresh=True)
    second = finetune(recipe, storage_uri=storage_uri, fresh=True)
    return first, second


def test_two_worker_run_registers_a_complete_version(trained, storage_uri):
    first, _ = trained
    assert first.name == "tiny-sentiment" and first.labels == ["NEGATIVE", "POSITIVE"]
    assert set(first.metrics) >= {"accuracy", "macro_f1", "per_class_f1", "val_loss", "epoch"}
    assert set(first.metrics["per_class_f1"]) == {"NEGATIVE", "POSITIVE"}
    assert first.dataset.uri == str(TINY_DATA) and len(first.dataset.sha256) == 64 and first.dataset.rows == 60
    assert first.recipe["scaling"]["num_workers"] == 2
    assert "model.safetensors" in first.files and "config.json" in first.files
    assert first.code_version and first.extra["run"].startswith("tiny-sentiment-")
    fetched = ModelRegistry(Storage(storage_uri)).fetch(f"registry://tiny-sentiment:{first.version}")
    assert (Path(fetched) / "config.json").is_file()


def test_same_recipe_data_and_seed_give_the_same_metrics(trained):
    first, second = trained
    assert first.version != second.version
    for metric in ("accuracy", "macro_f1", "val_loss", "train_loss"):
        assert first.metrics[metric] == pytest.approx(second.metrics[metric], abs=1e-6), metric


def test_two_trial_search_registers_the_best_trial(ray_session, storage_uri, trained):
    from train.recipe import Recipe
    from train.tune import search

    recipe = Recipe.model_validate(tiny_recipe(storage_uri, scaling={"num_workers": 1, "resources_per_worker": {"CPU": 0.5}}))
    manifest, results = search(recipe, storage_uri=storage_uri)
    assert len(results) == 2 and not results.errors
    best = max(r.metrics["accuracy"] for r in results)
    assert manifest.metrics["accuracy"] == pytest.approx(best)
    assert manifest.extra["search"]["trials"] == 2
    assert manifest.recipe["training"]["learning_rate"] == pytest.approx(manifest.extra["search"]["best_config"]["learning_rate"])


def test_fine_tune_entry_point_runs_as_a_ray_job(ray_session, storage_uri, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(storage_uri, name="tiny-job", training={"epochs": 1, "batch_size": 8, "max_length": 16})))
    before = len(ModelRegistry(Storage(storage_uri)).list_models())
    client = JobSubmissionClient(ray_session.dashboard_url)
    job = submit_when_ready(
        client,
        entrypoint=f"python -m train.finetune --config {recipe}",
        runtime_env={"working_dir": str(REPO), "excludes": [".venv", ".git", ".baton", "__pycache__"]},
    )
    deadline = time.monotonic() + 400
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, client.get_job_logs(job)[-3000:]
        time.sleep(2)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job)[-3000:]
    assert "registered tiny-job:v1" in client.get_job_logs(job)
    assert len(ModelRegistry(Storage(storage_uri)).list_models()) == before + 1


def submit_when_ready(client, timeout_s: float = 120, **job) -> str:
    """The dashboard's job agent comes up a little after Ray itself; retry until it answers."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as error:
            if "No available agent" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(3)


def test_broken_recipe_fails_before_training_naming_the_field(storage_uri, tmp_path):
    from cluster.errors import ConfigError
    from train.finetune import finetune
    from train.recipe import Recipe, load_recipe

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny_recipe(storage_uri, training={"epochs": 0})))
    with pytest.raises(ConfigError, match=r"training.epochs = 0"):
        load_recipe(bad)
    missing_column = Recipe.model_validate(tiny_recipe(storage_uri, data={"train": str(TINY_DATA), "text_field": "review"}))
    with pytest.raises(ConfigError, match="review"):
        finetune(missing_column, storage_uri=storage_uri)


def import_checkpoint_by_cli(storage_uri: str, directory: Path, evaluation: Path) -> str:
    """``baton models import`` of a checkpoint trained elsewhere; the version it registered."""
    import json

    import typer
    from typer.testing import CliRunner

    import train.cli as train_cli

    root = typer.Typer()
    train_cli.register(root)
    args = ["models", "import", str(directory), "--name", "outside-reviews", "--task", "text-classification", "--eval", str(evaluation), "--storage", storage_uri]
    result = CliRunner().invoke(root, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])["after"]


def test_promoted_and_imported_models_serve_through_route(trained, client, test_config, storage_uri, baton_url, tmp_path):
    from ray import serve

    from actors.classifier_io import TextClassifier
    from serve.builder import APP_NAME, build_application
    from tests.unit.classifier_doubles import LABELS, NEGATIVE, POSITIVE, build_tiny_classifier

    registry = ModelRegistry(Storage(storage_uri))
    registry.promote("tiny-sentiment", trained[0].version, metric="accuracy", margin=0.0, force=True)
    # A checkpoint trained elsewhere (a test double), imported with its metrics on an evaluation file.
    checkpoint = build_tiny_classifier(tmp_path / "checkpoint")
    evaluation = tmp_path / "eval.jsonl"
    evaluation.write_text("".join(f'{{"text": "{t}", "label": "{label}"}}\n' for label, texts in (("POSITIVE", POSITIVE), ("NEGATIVE", NEGATIVE)) for t in texts))
    imported = import_checkpoint_by_cli(storage_uri, checkpoint, evaluation)
    assert registry.manifest(*imported.split(":")).metrics["accuracy"] == 1.0
    agents = [a.model_dump() for a in test_config.agents] + [
        {
            "name": "outside", "kind": "classify", "description": "A review classifier trained elsewhere and imported.", "routable": False,
            "versions": [{"version": "v1", "weight": 100, "model": f"registry://{imported}", "resources": {"num_cpus": 0.05},
                          "autoscaling": {"min_replicas": 1, "max_replicas": 1}}],
        },
        {
            "name": "tiny",
            "kind": "classify",
            "description": "Movie review sentiment from the tiny fine-tuned model",
            "examples": ["a wonderful film", "a dull mess"],
            "versions": [{"version": "v1", "weight": 100, "model": "registry://tiny-sentiment@champion",
                          "params": {"output": "sentiment", "neutral_threshold": 0.0}, "resources": {"num_cpus": 0.1},
                          "autoscaling": {"min_replicas": 1, "max_replicas": 1}}],
        }
    ]
    config = test_config.model_validate({**test_config.model_dump(), "agents": agents})
    serve.run(build_application(config, storage_uri), name=APP_NAME, route_prefix="/")
    response = client.post("/v1/route", json={"text": "a wonderful , moving film", "agent": "tiny"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["agent"] == "tiny" and body["version"] == "v1"
    texts = ["a wonderful film , truly", "boring , far too long"]
    expected = [LABELS[i] for i in TextClassifier(checkpoint, 128)(texts).argmax(axis=1)]
    for text, label in zip(texts, expected):
        answer = client.post("/v1/agents/outside/invoke", json={"text": text})
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"]["label"] == label
    assert body["result"]["label"] in {"POSITIVE", "NEGATIVE"}
    assert set(body["result"]["scores"]) == {"POSITIVE", "NEGATIVE", "NEUTRAL", "MIXED"}
    models = client.get("/v1/admin/models").json()["models"]
    assert "tiny-sentiment" in {m["name"] for m in models}
    shown = client.get("/v1/admin/models/tiny-sentiment").json()
    assert shown["aliases"]["champion"] == trained[0].version
    assert client.get("/v1/admin/models/ghost").status_code == 404
    assert client.get("/v1/admin/models/..%2Fetc").status_code in (404, 422)
