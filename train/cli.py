"""``baton`` commands of the model lifecycle: train, tune, models list/show/alias/promote/approve.
Registered on the root CLI through the ``baton.cli`` entry point.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from cluster import local
from cluster.config import ENVIRONMENT_VAR, OrchestraConfig, resolve_storage_uri
from cluster.errors import BatonError, ConfigError, Conflict, ValidationFailed
from cluster.registry import CHAMPION, ModelRegistry, parse_ref
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
    if local.given_address() or local.dashboard_up():
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
    """Fine-tune and register a model: a Ray job on the running cluster (the local head, or the one
    $RAY_ADDRESS names), or locally when none is up."""
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


@models_app.command("import")
def models_import(
    directory: Path = typer.Argument(..., help="Hugging Face checkpoint directory: config.json, tokenizer files, model.safetensors."),
    name: str = typer.Option(..., "--name", help="Registry model name; the checkpoint becomes its next version."),
    eval_data: str = typer.Option(
        ..., "--eval", help="Evaluation set its metrics are measured on: JSONL, CSV, TSV or Parquet, any fsspec URI."
    ),
    task: str = typer.Option("text-classification", "--task", help="What the checkpoint does (text-classification)."),
    text_field: str = typer.Option("text", "--text-field", help="Column of the evaluation set holding the text."),
    label_field: str = typer.Option("label", "--label-field", help="Column of the evaluation set holding the label."),
    label_map: list[str] = typer.Option(
        [], "--label-map", help="RAW=LABEL: an evaluation label -> the checkpoint's label name (repeatable; then every label must be mapped)."
    ),
    max_length: Optional[int] = typer.Option(None, "--max-length", min=8, max=512, help="Tokens kept per text when measured and served (default 128)."),
    oos_label: Optional[str] = typer.Option(None, "--oos-label", help="The checkpoint's out-of-scope label, if it has one: adds in-scope accuracy and out-of-scope recall."),
    storage: str = StorageOption,
) -> None:
    """Register a text classifier trained elsewhere as the next version of NAME, measured on --eval;
    serve it like any version (registry://NAME:vN) and promote it through the same gate."""
    from train.data import DataSpec
    from train.importer import import_checkpoint

    evaluation = DataSpec(train=eval_data, text_field=text_field, label_field=label_field, label_map=_label_map(label_map))

    def change() -> dict[str, Any]:
        manifest = import_checkpoint(
            _registry(storage), directory, name, evaluation, task=task, max_length=max_length, oos_label=oos_label,
            echo=console.print,
        )
        metrics = {key: value for key, value in manifest.metrics.items() if key != "per_class_f1"}
        return {"before": None, "after": f"{manifest.name}:{manifest.version}", "version": manifest.version, "metrics": metrics}

    print(json.dumps(_audited(storage, "admin.models.import", {"name": name, "source": str(directory)}, change)))


def _label_map(pairs: list[str]) -> dict[str, str] | None:
    if not pairs:
        return None
    malformed = [pair for pair in pairs if pair.count("=") != 1 or not all(pair.split("="))]
    if malformed:
        raise ConfigError(f"--label-map takes RAW=LABEL; got {malformed}")
    return dict(pair.split("=") for pair in pairs)


@models_app.command("alias")
def models_alias(name: str, version: str, alias: str, storage: str = StorageOption) -> None:
    """Point ALIAS of NAME at VERSION (written atomically, audited as admin.models.alias)."""
    change = _audited(storage, "admin.models.alias", {"name": name, "alias": alias}, lambda: _registry(storage).set_alias(name, version, alias))
    print(json.dumps(change))


@models_app.command("approve")
def models_approve(
    ref: str = typer.Argument(..., help="NAME:VERSION of the model version."),
    environment: str = typer.Option(..., "--env", envvar=ENVIRONMENT_VAR, help="Environment the approval is for, e.g. prod."),
    revoke: bool = typer.Option(False, "--revoke", help="Withdraw the approval instead."),
    storage: str = StorageOption,
) -> None:
    """Approve NAME:VERSION for an environment (audited); prints before/after.

    Like SageMaker's model approval status: an orchestra with require_approval
    (configs/environments/prod.yaml) serves and rolls out only versions approved for its
    environment. Audited as admin.models.approve, or admin.models.revoke with --revoke.
    """
    from actors.audit import cli_principal

    registry = _registry(storage)

    def change() -> dict[str, Any]:
        name, version, _ = parse_ref(ref)
        if version is None:
            raise ValidationFailed(f"give NAME:VERSION, not {ref!r}: an approval is for one version")
        if revoke:
            return registry.revoke_approval(name, version, environment)
        return registry.approve(name, version, environment, cli_principal())

    action = "admin.models.revoke" if revoke else "admin.models.approve"
    print(json.dumps(_audited(storage, action, {"ref": ref, "environment": environment}, change)))


@models_app.command("promote")
def models_promote(
    name: str,
    version: str,
    storage: str = StorageOption,
    force: bool = typer.Option(False, "--force", help="Promote even if the gate refuses (audited)."),
    deploy: bool = typer.Option(
        False, "--deploy",
        help="Then redeploy the running orchestra (--config, --env) so the new champion serves all its traffic at once "
        "(every replica restarts). The safe alternative is a guarded rollout: `baton rollout start`.",
    ),
    config_path: Path = typer.Option(Path("configs/orchestra.yaml"), "--config", "-c", help="--deploy: the orchestra to redeploy."),
    environment: Optional[str] = typer.Option(
        None, "--env", envvar=ENVIRONMENT_VAR, help="--deploy: the environment overlaid on the orchestra (dev, test, prod)."
    ),
    timeout_s: float = typer.Option(600, "--timeout", help="--deploy: seconds to wait for the new deploy."),
) -> None:
    """Make VERSION the champion if it beats the current one by the recipe's margin (audited).

    With --deploy, the running orchestra is redeployed at once so the new champion takes all
    of its traffic; a guarded rollout (`baton rollout start`) shifts traffic step by step and
    rolls back on failed guards instead, the safe alternative.
    """
    registry = _registry(storage)
    config = _deploy_target(config_path, environment, storage, name) if deploy else None

    def change() -> dict[str, Any]:
        if config is not None and config.require_approval and not registry.is_approved(name, version, config.environment):
            raise Conflict(
                f"{name}:{version} is not approved for environment {config.environment!r}, which serves only approved "
                f"versions: baton models approve {name}:{version} --env {config.environment}"
            )
        evaluation = registry.manifest(name, version).recipe.get("evaluation", {})
        metric, margin = evaluation.get("metric", "accuracy"), float(evaluation.get("promote_margin", 0.0))
        return registry.promote(name, version, metric=metric, margin=margin, force=force)

    promoted = _audited(storage, "admin.models.promote", {"name": name, "candidate": version}, change)
    print(json.dumps(promoted))
    if config is not None:
        from serve.cli import deploy_and_wait

        console.print(f"redeploying {config_path} (environment {config.environment}) to serve {name}:{version} ...")
        try:
            deploy_and_wait(config_path, environment, timeout_s)
        except BatonError as error:
            raise BatonError(
                f"{name}:{version} is the champion, but the redeploy failed: {error.message} "
                f"(to move the alias back: baton models alias {name} {promoted['before']} {CHAMPION})"
            ) from None
        console.print(f"{name}:{version} is served.")


def _deploy_target(config_path: Path, environment: str | None, storage: str, name: str) -> OrchestraConfig:
    """The orchestra promote --deploy redeploys, checked before the alias moves: a cluster
    runs it, it reads this registry, and it serves NAME's champion."""
    from serve.cli import _load

    config = _load(config_path, environment)
    if not local.dashboard_up():
        raise BatonError("--deploy needs the running cluster (start it with `baton up`), or promote without --deploy")
    served_from = Storage(resolve_storage_uri(config, Path.cwd())).uri
    if served_from != Storage(storage).uri:
        raise ConfigError(f"--deploy: {config_path} serves models from {served_from}, not --storage {Storage(storage).uri}")
    refs = [v.model for a in config.agents for v in a.versions if v.model] + ([config.router.classifier.model] if config.router.classifier else [])
    if not any(_names_champion(ref, name) for ref in refs):
        raise ConfigError(f"--deploy: no agent of {config_path} serves registry://{name}@{CHAMPION}, so a redeploy would change nothing")
    return config


def _names_champion(ref: str, name: str) -> bool:
    if not ref.startswith("registry://"):
        return False
    ref_name, _, alias = parse_ref(ref)
    return ref_name == name and alias == CHAMPION


def _audited(storage: str, action: str, extra: dict[str, Any], act: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run an operator action and write its audit record, done or refused, as the HTTP API does:
    ``act`` returns {before, after, ...}; the rest of its result joins ``extra`` in the record."""
    from actors.audit import cli_principal, write_operator_action

    try:
        change = act()
    except BatonError as error:
        write_operator_action(Storage(storage), cli_principal(), action, status=error.status, error=f"{error.code}: {error.message}", extra=extra)
        raise
    details = {key: value for key, value in change.items() if key not in ("before", "after")}
    write_operator_action(
        Storage(storage), cli_principal(), action, before=change["before"], after=change["after"], extra={**extra, **details}
    )
    return change


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
    recipe: Path = typer.Option(..., "--config", help="Recipe whose data, base model and training settings the student uses."),
    layers: Optional[int] = typer.Option(
        None, help="Student = the teacher cut to this many encoder layers; default: the recipe's base model with a new head."
    ),
    epochs: Optional[int] = typer.Option(None, help="Training epochs; default: the recipe's."),
    temperature: float = typer.Option(2.0, help="Softmax temperature of the teacher's soft targets."),
    alpha: float = typer.Option(0.5, help="Weight of the hard-label loss; 1 - alpha weighs the soft targets."),
    storage: str = StorageOption,
) -> None:
    """Train and register a smaller student on a teacher's soft targets (the teacher's logits on
    every training row, computed once with its own tokenizer, so it may be another architecture)."""
    from train.optimize import distill
    from train.recipe import load_recipe

    distill(_registry(storage), teacher, load_recipe(recipe), layers, epochs, temperature=temperature, alpha=alpha)


@optimize_app.command("calibrate")
def optimize_calibrate(
    ref: str = typer.Argument(..., help="registry://NAME@ALIAS or NAME:VERSION of a model with an out-of-scope label"),
    min_in_scope_accuracy: float | None = typer.Option(
        None, "--min-in-scope-accuracy", help="In-scope accuracy to keep, e.g. 0.96: the rule with the best out-of-scope recall under it."
    ),
    min_oos_recall: float | None = typer.Option(
        None, "--min-oos-recall", help="Out-of-scope recall to reach, e.g. 0.8: the rule with the best in-scope accuracy under it."
    ),
    score: list[str] = typer.Option(
        [], "--score", help="Out-of-scope score to try: probability, energy, mahalanobis, neighbours (repeatable; default: all)."
    ),
    storage: str = StorageOption,
) -> None:
    """Register a version with an out-of-scope rule (a score and a threshold), chosen on the recipe's
    validation data: each score's threshold is cross-fitted over halves of it, the best score wins,
    and its cross-fit mean and spread are the version's in-scope accuracy and out-of-scope recall."""
    from actors.out_of_scope import SCORES
    from train.optimize import calibrate, calibration_floor

    floor_metric, floor = calibration_floor(min_in_scope_accuracy, min_oos_recall)
    calibrate(_registry(storage), ref, floor, floor_metric=floor_metric, scores=score or SCORES)


def register(root: typer.Typer) -> None:
    root.command()(train)
    root.command()(tune)
    root.add_typer(models_app, name="models")
    root.add_typer(optimize_app, name="optimize")

