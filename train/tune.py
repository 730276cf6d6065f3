"""Hyper-parameter search with Ray Tune over the fine-tuning function: the recipe's search
space, ASHA early stopping, a trial budget, concurrency sized to the cluster; the best
trial's best epoch is registered.

    python -m train.tune --config configs/train/sst2_sentiment.yaml
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Callable

from cluster.errors import BatonError, ConfigError, exit_code
from cluster.registry import Manifest
from cluster.storage import Storage
from train.data import load_dataset
from train.finetune import build_trainer, loop_config, register_result, run_name, training_datasets
from train.recipe import Recipe, SearchDimension, load_recipe


def sampler(dimension: SearchDimension):
    from ray import tune

    if dimension.loguniform is not None:
        return tune.loguniform(*dimension.loguniform)
    if dimension.uniform is not None:
        return tune.uniform(*dimension.uniform)
    return tune.choice(dimension.choice)


# A trial's driver only waits on its TorchTrainer, so it holds no CPU: with even 0.01 CPU, two
# 1-CPU trials would not fit on 2 cores. Tune refuses an empty bundle, hence the token memory.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 64 * 2**20}


def concurrency(recipe: Recipe, cluster_cpus: float) -> int:
    """Trials that fit at once: each needs its workers' CPUs (the trial driver needs none)."""
    if recipe.search.max_concurrent_trials is not None:
        return recipe.search.max_concurrent_trials
    per_trial = recipe.scaling.num_workers * recipe.scaling.cpus_per_worker()
    return max(1, min(recipe.search.num_samples, math.floor(cluster_cpus / per_trial + 1e-9)))


def trial(config: dict, recipe_json: dict, base: dict, datasets: dict, storage_uri: str, run: str) -> None:
    """One Tune trial: a TorchTrainer whose reports flow to Tune (the Train-in-Tune pattern)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    recipe = Recipe.model_validate(recipe_json)
    overrides = dict(config["train_loop_config"])
    trial_name = f"{run}-{ray.tune.get_context().get_trial_id()}"
    loop = base | {"overrides": overrides}
    trainer = build_trainer(recipe, loop, datasets, Storage(storage_uri), trial_name, callbacks=[TuneReportCallback()])
    trainer.fit()


def search(recipe: Recipe, *, storage_uri: str | None = None, echo: Callable[[str], None] = print) -> tuple[Manifest, Any]:
    """Run the search; returns the registered manifest of the best trial and the Tune results."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    if recipe.search is None:
        raise ConfigError("the recipe has no `search` section: add search.space (and num_samples) to tune it")
    storage = Storage(storage_uri or recipe.storage)
    data = load_dataset(recipe.data)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=True)
    run = f"{run_name(recipe, data)}-tune-{int(time.time())}"
    parallel = concurrency(recipe, ray.cluster_resources().get("CPU", 1))
    echo(f"search: {recipe.search.num_samples} trials, {parallel} at a time, ASHA on {recipe.evaluation.metric}")
    scheduler = ASHAScheduler(
        time_attr="epoch", max_t=recipe.training.epochs,
        grace_period=recipe.search.grace_period, reduction_factor=recipe.search.reduction_factor,
    )
    trainable = tune.with_resources(
        tune.with_parameters(
            trial, recipe_json=recipe.model_dump(mode="json"), base=loop_config(recipe, data, storage.uri),
            datasets=training_datasets(data, recipe.training.seed), storage_uri=storage.uri, run=run,
        ),
        TRIAL_DRIVER_RESOURCES,
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"train_loop_config": {name: sampler(dim) for name, dim in recipe.search.space.items()}},
        tune_config=tune.TuneConfig(
            metric=recipe.evaluation.metric, mode="max", num_samples=recipe.search.num_samples,
            scheduler=scheduler,
            # Seeded, so a rerun of the recipe samples the same trials; Tune ignores
            # max_concurrent_trials beside a generator, so the generator limits concurrency.
            search_alg=BasicVariantGenerator(random_state=recipe.training.seed, max_concurrent=parallel),
        ),
        run_config=tune.RunConfig(name=run, storage_path=storage.url("tune")),
    )
    started = time.perf_counter()
    results = tuner.fit()
    best = results.get_best_result(metric=recipe.evaluation.metric, mode="max", scope="all")
    checkpoint, metrics = best_epoch(best, recipe.evaluation.metric, storage)
    trial_epochs = sum(len(r.metrics_dataframe) for r in results if r.metrics_dataframe is not None)
    tuned = recipe.model_copy(update={"training": recipe.training.model_copy(update=best.config["train_loop_config"])})
    manifest = register_result(
        tuned, data, storage, checkpoint, metrics,
        extra={"search": {"run": run, "trials": len(results), "trial_epochs": trial_epochs, "best_config": best.config["train_loop_config"]},
               "tune_wall_s": round(time.perf_counter() - started, 1)},
    )
    echo(f"best trial {json.dumps(best.config['train_loop_config'])}: {recipe.evaluation.metric} {metrics[recipe.evaluation.metric]:.4f}")
    echo(f"registered {manifest.name}:{manifest.version} after {trial_epochs} trial-epochs in {time.perf_counter() - started:.0f}s")
    return manifest, results


def best_epoch(result, metric: str, storage: Storage):
    """The best reported epoch of a trial that has a checkpoint, as (Checkpoint, metrics)."""
    import pyarrow.fs
    import ray.train

    frame = result.metrics_dataframe
    if frame is None or "checkpoint_path" not in frame:
        raise BatonError("the best trial reported no checkpoint; see the trial logs")
    row = frame[frame["checkpoint_path"].notna()].sort_values(metric, ascending=False).iloc[0]
    filesystem = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(storage.fs))
    return ray.train.Checkpoint(row["checkpoint_path"], filesystem=filesystem), row.to_dict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="training recipe with a `search` section")
    parser.add_argument("--storage", help="storage URI overriding the recipe's")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return exit_code(lambda: search(load_recipe(args.config), storage_uri=args.storage or os.environ.get("BATON_STORAGE")))


if __name__ == "__main__":
    sys.exit(main())
