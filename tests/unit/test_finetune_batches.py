"""Training batches drawn from streamed chunks of rows: as many steps as the schedule counts,
similar lengths per batch, and a loop config that stays small however large the dataset."""

from __future__ import annotations

import pickle
from functools import partial

import numpy as np
import pytest

from train.data import DataSpec, Examples, PreparedData
from train.finetune import chunk_rows, label_array, loop_config, row_chunks, steps_per_epoch, training_batches
from train.recipe import Recipe


class WordTokenizer:
    """Test double of a Hugging Face tokenizer: one token id per word, truncated."""

    pad_token_id = 0

    def __call__(self, texts, truncation, max_length):
        return {"input_ids": [[1 + len(word) for word in text.split()][:max_length] for text in texts]}


def examples(rows: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    texts = [" ".join(["w" * int(rng.integers(1, 5))] * int(rng.integers(1, 30))) for _ in range(rows)]
    return texts, rng.integers(0, 2, rows)


@pytest.mark.parametrize("rows,batch_size", [(1, 8), (399, 8), (400, 8), (401, 8), (2_345, 16), (10_000, 32)])
def test_batches_drawn_equal_the_steps_the_schedule_counts(rows, batch_size):
    texts, labels = examples(rows)
    batches = list(training_batches(row_chunks(texts, labels, chunk_rows(batch_size), seed=1), WordTokenizer(), batch_size, 64, seed=1))
    assert len(batches) == steps_per_epoch(rows, batch_size)
    assert sum(len(batch["labels"]) for batch in batches) == rows


def test_batches_group_similar_lengths_and_keep_every_label():
    texts, labels = examples(800)
    batches = list(training_batches(row_chunks(texts, labels, chunk_rows(8), seed=3), WordTokenizer(), 8, 64, seed=3))
    # Sorted within a chunk, a batch pads little: its rows are close to its longest.
    padding = sum(int((batch["attention_mask"] == 0).sum()) for batch in batches)
    tokens = sum(int(batch["attention_mask"].sum()) for batch in batches)
    assert padding < 0.1 * tokens
    assert sorted(np.concatenate([batch["labels"].numpy() for batch in batches]).tolist()) == sorted(labels.tolist())


def test_same_seed_same_batches_other_seed_other_order():
    texts, labels = examples(500)

    def first_labels(seed: int) -> list[int]:
        batches = training_batches(row_chunks(texts, labels, chunk_rows(8), seed=seed), WordTokenizer(), 8, 64, seed=seed)
        return next(iter(batches))["labels"].tolist()

    assert first_labels(5) == first_labels(5)
    assert any(first_labels(5) != first_labels(seed) for seed in range(6, 10))


def test_loop_config_carries_counts_not_examples():
    # 32 MB of text: shipped in the loop config before, streamed from Ray Data shards now.
    texts = ["lorem ipsum " * 1_300] * 2_000
    names = ["NEGATIVE", "POSITIVE"] * 1_000
    data = PreparedData(
        spec=DataSpec(train="unused.jsonl"), train=Examples(texts, names), validation=Examples(texts[:10], names[:10]),
        labels=["NEGATIVE", "POSITIVE"], fingerprint="0" * 64, file_sha256={"unused.jsonl": "0" * 64},
    )
    recipe = Recipe.model_validate({"name": "big", "data": {"train": "unused.jsonl"}})
    config = loop_config(recipe, data, "/tmp/storage")
    assert sum(len(t) for t in texts) > 30_000_000
    assert len(pickle.dumps(config)) < 8_192
    assert (config["train_rows"], config["validation_rows"]) == (2_000, 10)
    assert label_array(names[:4], data.labels).tolist() == [0, 1, 0, 1]


def test_loop_config_hands_workers_an_absolute_base_model_path(tmp_path, monkeypatch):
    """Ray Train workers do not start in the driver's directory: a recipe's relative base model
    path reaches them absolute, and a registry reference is left for them to fetch."""
    (tmp_path / "models" / "teacher").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    data = PreparedData(
        spec=DataSpec(train="unused.jsonl"), train=Examples(["a"], ["x"]), validation=Examples(["b"], ["x"]),
        labels=["x"], fingerprint="0" * 64, file_sha256={"unused.jsonl": "0" * 64},
    )

    def handed(base_model: str) -> str:
        recipe = Recipe.model_validate({"name": "r", "base_model": base_model, "data": {"train": "unused.jsonl"}})
        return loop_config(recipe, data, "/tmp/storage")["recipe"]["base_model"]

    assert handed("models/teacher") == str(tmp_path / "models" / "teacher")
    assert handed("registry://teacher@champion") == "registry://teacher@champion"


def test_label_smoothing_changes_the_loss_the_epoch_trains_on(tmp_path):
    """run_epoch's loss is the model's own cross-entropy without smoothing, and the smoothed
    cross-entropy with it (on the tiny classifier double; a zero learning rate keeps it unchanged)."""
    import torch

    from actors.classifier_io import load_classifier
    from tests.unit.classifier_doubles import NEGATIVE, POSITIVE, build_tiny_classifier
    from train.finetune import collate, run_epoch

    tokenizer, model, _ = load_classifier(build_tiny_classifier(tmp_path / "tiny"))
    ids = tokenizer(POSITIVE + NEGATIVE, truncation=True, max_length=16)["input_ids"]
    batch = collate(ids, np.array([1] * len(POSITIVE) + [0] * len(NEGATIVE)), tokenizer.pad_token_id)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model.train(False)  # no dropout: the two passes see the same logits
    with torch.no_grad():
        plain = model(**batch).loss.item()
    losses = {
        ls: run_epoch(model, [batch], 1, optimizer, scheduler, 0, 1, rank=1, loss_of=partial(torch.nn.functional.cross_entropy, label_smoothing=ls))[0]
        for ls in (0.0, 0.2)
    }
    assert losses[0.0] == pytest.approx(plain, rel=1e-5)
    # A confident, right model pays for smoothing: part of each target sits on the wrong label.
    assert losses[0.2] > losses[0.0] + 0.05
