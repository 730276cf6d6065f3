"""``baton`` commands of the model lifecycle: train, tune, models list/show/alias/promote.
Registered on the root CLI through the ``baton.cli`` entry point.
"""

from __future__ import annotations

import getpass
import json
import uuid
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cluster import local
from cluster.errors import BatonError
from cluster.registry import ModelRegistry
from cluster.storage import Storage

console = Console(stderr=True)
StorageOption = typer.Option(".baton", "--storage", help="Storage URI holding the registry.")


def _registry(storage: str) -> ModelRegistry:
    return ModelRegistry(Storage(storage))


# -- train / tune -------------------------------------------------------------------------


def _submit(module: str, recipe: Path, storage: str, follow: bool) -> None:
    """Run ``python -m <module>`` as a Ray job on the running cluster and stream its logs."""
    local.run_job(f"python -m {module} --config {recipe.as_posix()}", {"BATON_STORAGE": str(Storage(storage).uri)}, follow)


def _run(module: str, recipe: Path, storage: str, follow: bool) -> None:
    if not recipe.is_file():
        raise BatonError(f"{recipe}: no such recipe")
    from train.recipe import load_recipe

    load_recipe(recipe)  # a broken recipe fails here, before any job is submitted
    if local.dashboard_up():
        _submit(module, recipe, storage, follow)
        return
    console.print("no running cluster: training in a local Ray instance")
    if module == "train.finetune":
        from train.finetune import finetune

        finetune(load_recipe(recipe), storage_uri=storage)
    else:
        from train.tune import search

        search(load_recipe(recipe), storage_uri=storage)


def train(
    recipe: Path = typer.Argument(..., help="Training recipe, e.g. configs/train/sst2_sentiment.yaml."),
    storage: str = StorageOption,
    follow: bool = typer.Option(True, help="Stream the job's logs until it ends."),
) -> None:
    """Fine-tune and register a model: a Ray job on the running cluster, or locally when none is up."""
    _run("train.finetune", recipe, storage, follow)


def tune(
    recipe: Path = typer.Argument(..., help="Recipe with a `search` section."),
    storage: str = StorageOption,
    follow: bool = typer.Option(True, help="Stream the job's logs until it ends."),
) -> None:
    """Search hyper-parameters with Ray Tune (ASHA) and register the best trial."""
    _run("train.tune", recipe, storage, follow)


# -- models -------------------------------------------------------------------------------

models_app = typer.Typer(help="The model registry: versions, manifests, aliases, promotion.", no_args_is_help=True)


@models_app.command("list")
def models_list(storage: str = StorageOption, as_json: bool = typer.Option(False, "--json")) -> None:
    """Every model with its versions and aliases."""
    models = _registry(storage).list_models()
    if as_json:
        print(json.dumps(models))
        return
    table = Table("model", "versions", "latest", "aliases")
    for model in models:
        aliases = ", ".join(f"{a}={v}" for a, v in sorted(model["aliases"].items()))
        table.add_row(model["name"], " ".join(model["versions"]), model["latest"], aliases)
    Console().print(table)


@models_app.command("show")
def models_show(ref: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."), storage: str = StorageOption) -> None:
    """A version's manifest (the latest when no version is given)."""
    registry = _registry(storage)
    name, version = registry.resolve(ref)
    print(json.dumps(registry.manifest(name, version).model_dump(mode="json"), indent=2))


@models_app.command("alias")
def models_alias(name: str, version: str, alias: str, storage: str = StorageOption) -> None:
    """Point ALIAS of NAME at VERSION (written atomically)."""
    change = _registry(storage).set_alias(name, version, alias)
    _audit(storage, "admin.models.alias", {"name": name, "alias": alias, "before": change["before"], "after": change["after"]}, 200)
    print(json.dumps(change))


@models_app.command("promote")
def models_promote(
    name: str,
    version: str,
    storage: str = StorageOption,
    force: bool = typer.Option(False, "--force", help="Promote even if the gate refuses (audited)."),
) -> None:
    """Make VERSION the champion if it beats the current one by the recipe's margin."""
    registry = _registry(storage)
    evaluation = registry.manifest(name, version).recipe.get("evaluation", {})
    metric, margin = evaluation.get("metric", "accuracy"), float(evaluation.get("promote_margin", 0.0))
    try:
        change = registry.promote(name, version, metric=metric, margin=margin, force=force)
    except BatonError as error:
        _audit(storage, "admin.models.promote", {"name": name, "candidate": version, "refused": error.message}, error.status)
        raise
    _audit(storage, "admin.models.promote", {"name": name, **change}, 200)
    print(json.dumps(change))


def _audit(storage: str, action: str, output: dict, status: int) -> None:
    """Operator actions from the CLI are audit records like those made over HTTP."""
    from actors.audit import AuditWriter

    writer = AuditWriter(Storage(storage), store_input_text=False)
    writer.write(
        [
            {
                "request_id": uuid.uuid4().hex,
                "principal": f"cli:{getpass.getuser()}",
                "endpoint": action,
                "status_code": status,
                "output": output,
            }
        ]
    )
    writer.close()


optimize_app = typer.Typer(help="Smaller and faster versions of registered models.", no_args_is_help=True)


@optimize_app.command("quantize")
def optimize_quantize(
    ref: str = typer.Argument(..., help="registry://NAME@ALIAS or NAME:VERSION"),
    storage: str = StorageOption,
) -> None:
    """Register a dynamic-int8 version, with its accuracy and latency against float32."""
    from train.optimize import quantize

    quantize(_registry(storage), ref)


@optimize_app.command("distill")
def optimize_distill(
    teacher: str = typer.Argument(..., help="registry://NAME@ALIAS or NAME:VERSION"),
    recipe: Path = typer.Option(..., "--config", help="Recipe whose data the student learns from."),
    layers: int = typer.Option(3, help="Encoder layers of the student."),
    storage: str = StorageOption,
) -> None:
    """Train and register a student with fewer layers on the teacher's soft labels."""
    from train.optimize import distill
    from train.recipe import load_recipe

    distill(_registry(storage), teacher, load_recipe(recipe), layers)


@optimize_app.command("calibrate")
def optimize_calibrate(
    ref: str = typer.Argument(..., help="registry://NAME@ALIAS or NAME:VERSION of a model with an out-of-scope label"),
    min_in_scope_accuracy: float = typer.Option(
        ..., "--min-in-scope-accuracy", help="In-scope accuracy to keep on the validation data, e.g. 0.96."
    ),
    storage: str = StorageOption,
) -> None:
    """Register a version that answers out-of-scope below a top-probability threshold, chosen on the
    recipe's validation data for the best out-of-scope recall at the in-scope accuracy floor."""
    from train.optimize import calibrate

    calibrate(_registry(storage), ref, min_in_scope_accuracy)


def register(root: typer.Typer) -> None:
    root.command()(train)
    root.command()(tune)
    root.add_typer(models_app, name="models")
    root.add_typer(optimize_app, name="optimize")

