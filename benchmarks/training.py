"""Training benchmarks, side by side in one run: Ray Train (1 and 2 workers) against a plain
PyTorch loop on the same model, data and epoch; ASHA against a grid on one search space;
int8 against float32 latency and accuracy. Writes the "## Training" section of docs/benchmarks.md.

    python -m benchmarks.training [--rows 3000] [--repeats 2] [--search-rows 1000] [--search-epochs 8]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from cluster.registry import ModelRegistry
from cluster.storage import Storage
from train.data import load_dataset
from train.finetune import (
    build_model,
    build_trainer,
    chunk_rows,
    label_array,
    loop_config,
    resolve_base_model,
    row_chunks,
    run_epoch,
    seed_everything,
    steps_per_epoch,
    training_batches,
    training_datasets,
)
from train.recipe import Recipe

REPO = Path(__file__).resolve().parent.parent
SST2 = REPO.parent / "shared" / "datasets" / "sst2" / "train.tsv"
DOC = REPO / "docs" / "benchmarks.md"
REDUCTION_FACTOR = 4
console = Console()


def recipe(rows: int, storage: str, validation_fraction: float = 0.2, **training) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "bench-sst2",
            "storage": storage,
            "data": {"train": str(SST2), "label_map": {"0": "NEGATIVE", "1": "POSITIVE"}, "max_rows": rows,
                     "validation_fraction": validation_fraction, "seed": 1},
            "training": {"epochs": 1, "learning_rate": 5e-5, "batch_size": 32, "max_length": 64, "seed": 1,
                         "early_stopping": None, **training},
        }
    )


# -- 1. Ray Train against a plain loop ---------------------------------------------------------


def plain_loop(base: Recipe, threads: int) -> float:
    """Samples per second of one epoch in this process, with the same model and batches."""
    import torch

    torch.set_num_threads(threads)
    seed_everything(base.training.seed)
    data = load_dataset(base.data)
    tokenizer, model = build_model(resolve_base_model(None, base.storage), data.labels)
    training = base.training
    chunks = row_chunks(data.train.texts, label_array(data.train.labels, data.labels), chunk_rows(training.batch_size), seed=training.seed)
    batches = training_batches(chunks, tokenizer, training.batch_size, training.max_length, training.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    _, rate, _ = run_epoch(model, batches, steps_per_epoch(len(data.train), training.batch_size), optimizer, scheduler, 0, 1, rank=1)
    return rate


def ray_train(base: Recipe, workers: int) -> tuple[float, float]:
    """(samples/s inside the epoch, wall seconds including start-up) for one epoch."""
    scaled = base.model_copy(update={"scaling": base.scaling.model_copy(update={"num_workers": workers, "resources_per_worker": {"CPU": 2 / workers}})})
    data = load_dataset(scaled.data)
    storage = Storage(scaled.storage)
    started = time.perf_counter()
    datasets = training_datasets(data, scaled.training.seed)
    result = build_trainer(scaled, loop_config(scaled, data, storage.uri), datasets, storage, f"bench-{workers}w-{int(time.time())}").fit()
    return float(result.metrics["samples_per_s"]), time.perf_counter() - started


# -- 2. ASHA against a grid ---------------------------------------------------------------------


def search(base: Recipe, learning_rates: list[float], epochs: int, asha: bool) -> tuple[float, int, float]:
    """(best accuracy, trial-epochs run, wall seconds) over a grid of learning rates."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from train.tune import TRIAL_DRIVER_RESOURCES, trial

    data = load_dataset(base.data)
    storage = Storage(base.storage)
    tuned = base.model_copy(update={"training": base.training.model_copy(update={"epochs": epochs}),
                                    "scaling": base.scaling.model_copy(update={"num_workers": 1, "resources_per_worker": {"CPU": 1}})})
    scheduler = ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=1, reduction_factor=REDUCTION_FACTOR) if asha else FIFOScheduler()
    run = f"bench-{'asha' if asha else 'grid'}-{int(time.time())}"
    trainable = tune.with_resources(
        tune.with_parameters(trial, recipe_json=tuned.model_dump(mode="json"), base=loop_config(tuned, data, storage.uri),
                             datasets=training_datasets(data, tuned.training.seed), storage_uri=storage.uri, run=run),
        TRIAL_DRIVER_RESOURCES,
    )
    started = time.perf_counter()
    results = tune.Tuner(
        trainable,
        param_space={"train_loop_config": {"learning_rate": tune.grid_search(learning_rates)}},
        tune_config=tune.TuneConfig(metric="accuracy", mode="max", scheduler=scheduler, max_concurrent_trials=2),
        run_config=tune.RunConfig(name=run, storage_path=storage.url("tune")),
    ).fit()
    best = max(float(r.metrics_dataframe["accuracy"].max()) for r in results)
    trial_epochs = sum(len(r.metrics_dataframe) for r in results)
    return best, trial_epochs, time.perf_counter() - started


# -- 3. int8 against float32 -----------------------------------------------------------------


def quantisation(base: Recipe) -> dict:
    """Fine-tune one epoch, register it, quantise it; latency and accuracy of both."""
    from train.finetune import finetune
    from train.optimize import quantize

    manifest = finetune(base, storage_uri=base.storage, fresh=True, echo=lambda _: None)
    quantised = quantize(ModelRegistry(Storage(base.storage)), f"registry://{manifest.name}:{manifest.version}", echo=lambda _: None)
    return {"float": manifest, "int8": quantised}


# -- report -------------------------------------------------------------------------------------


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    import ray
    import torch

    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, ray {ray.__version__}, torch {torch.__version__}"


def write_section(text: str) -> None:
    current = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^## Training\n.*?(?=^## |\Z)", re.S | re.M)
    current = pattern.sub("", current).rstrip() + "\n\n" + text.strip() + "\n"
    DOC.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3000, help="SST-2 rows for the throughput and quantisation runs")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds of the throughput runs (best one counts)")
    parser.add_argument("--search-rows", type=int, default=1000, help="SST-2 rows for ASHA against grid (60/40 split)")
    parser.add_argument("--search-epochs", type=int, default=8, help="epochs of a trial that is never stopped")
    args = parser.parse_args()
    import ray

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(num_cpus=2, log_to_driver=False)
    storage = tempfile.mkdtemp(prefix="baton-bench-")
    base = recipe(args.rows, storage)

    console.print(f"[bold]1/3 throughput[/bold]: plain loop, Ray Train 1 worker, Ray Train 2 workers; {args.repeats} rounds, interleaved")
    rounds = []
    for _ in range(args.repeats):
        rounds.append((plain_loop(base, threads=2), *ray_train(base, 1), *ray_train(base, 2)))
    # Best of the rounds: on a shared machine the slowest runs measure the neighbours.
    plain = max(r[0] for r in rounds)
    one, one_wall = max((r[1], r[2]) for r in rounds)
    two, two_wall = max((r[3], r[4]) for r in rounds)
    every = {name: ", ".join(f"{r[i]:.1f}" for r in rounds) for name, i in (("plain", 0), ("one", 1), ("two", 3))}

    console.print("[bold]2/3 search[/bold]: grid, then ASHA, same 8 learning rates")
    # Shuffled once: ASHA's savings depend on arrival order, and an ascending grid would show it
    # the weakest trials first. Grid and ASHA get the same order.
    rates = [float(x) for x in np.random.default_rng(7).permutation(np.geomspace(1e-5, 3e-4, 8))]
    small = recipe(args.search_rows, storage, validation_fraction=0.4)
    grid_best, grid_epochs, grid_wall = search(small, rates, args.search_epochs, asha=False)
    asha_best, asha_epochs, asha_wall = search(small, rates, args.search_epochs, asha=True)

    console.print("[bold]3/3 quantisation[/bold]: float32 against dynamic int8")
    q = quantisation(base)
    latency = q["int8"].extra["latency_ms"]

    command = "python -m benchmarks.training " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    lines = [
        "## Training",
        "",
        f"Command: `{command}` (run by `make bench-training`), {dt.date.today().isoformat()}, on {machine()}.",
        f"Data: {args.rows} SST-2 rows (80/20 split), MiniLM-L6, max_length 64, batch 32, one epoch; all in one run.",
        "",
        f"| training | samples/s in the epoch, best of {args.repeats} | every round | ratio to plain | wall s incl. start-up |",
        "| --- | --- | --- | --- | --- |",
        f"| plain PyTorch loop, 1 process, 2 threads | {plain:.1f} | {every['plain']} | 1.00 | - |",
        f"| Ray Train, 1 worker (2 CPUs) | {one:.1f} | {every['one']} | {one / plain:.2f} | {one_wall:.0f} |",
        f"| Ray Train, 2 workers (1 CPU each, gloo DDP) | {two:.1f} | {every['two']} | {two / plain:.2f} | {two_wall:.0f} |",
        "",
        f"Target: Ray Train at least 0.9x the plain loop: 1 worker {'met' if one / plain >= 0.9 else 'NOT met'} ({one / plain:.2f}x), "
        f"2 workers {'met' if two / plain >= 0.9 else 'NOT met'} ({two / plain:.2f}x).",
        "",
        f"| search ({len(rates)} learning rates 1e-5..3e-4 in shuffled order, {args.search_epochs} epochs max, {args.search_rows} rows split 60/40) | best accuracy | trial-epochs | wall s |",
        "| --- | --- | --- | --- |",
        f"| grid (every trial runs every epoch) | {grid_best:.4f} | {grid_epochs} | {grid_wall:.0f} |",
        f"| ASHA (grace 1 epoch, reduction factor {REDUCTION_FACTOR}) | {asha_best:.4f} | {asha_epochs} | {asha_wall:.0f} |",
        "",
        f"Target: same best accuracy within 0.5 point at 40% or less of the compute: accuracy gap {100 * (grid_best - asha_best):.2f} points, "
        f"compute {asha_epochs / grid_epochs:.0%} of the grid: {'met' if grid_best - asha_best <= 0.005 and asha_epochs <= 0.4 * grid_epochs else 'NOT met'}.",
        "",
        "| model | p50 ms, batch 1 | p50 ms, batch 32 | accuracy |",
        "| --- | --- | --- | --- |",
        f"| float32 | {latency['float32']['batch_1']:.1f} | {latency['float32']['batch_32']:.1f} | {q['float'].metrics['accuracy']:.4f} |",
        f"| dynamic int8 | {latency['int8']['batch_1']:.1f} | {latency['int8']['batch_32']:.1f} | {q['int8'].metrics['accuracy']:.4f} |",
        "",
        f"Target: int8 at least 1.5x faster with at most 1 point lost: speed-up {latency['float32']['batch_1'] / latency['int8']['batch_1']:.2f}x (batch 1), "
        f"{latency['float32']['batch_32'] / latency['int8']['batch_32']:.2f}x (batch 32), accuracy change {100 * (q['int8'].metrics['accuracy'] - q['float'].metrics['accuracy']):+.2f} points.",
    ]
    write_section("\n".join(lines))
    table = Table("what", "value")
    for name, value in [("plain samples/s", plain), ("ray 1w", one), ("ray 2w", two), ("grid best", grid_best), ("asha best", asha_best),
                        ("grid epochs", grid_epochs), ("asha epochs", asha_epochs)]:
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print(f"written to {DOC}")
    ray.shutdown()


if __name__ == "__main__":
    main()
