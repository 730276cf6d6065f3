"""Test double of a production classifier: a 4-layer, 32-wide BERT with the packaged MiniLM
tokenizer, trained a few steps on ten sentences so its answers are decisive. ``broken`` gives
the same model a classifier bias that makes it answer NEGATIVE to everything."""

from __future__ import annotations

from pathlib import Path

LABELS = ["NEGATIVE", "POSITIVE"]
POSITIVE = ["a wonderful film", "great acting and story", "i loved every minute", "superb and moving", "a joy to watch"]
NEGATIVE = ["a dreadful film", "boring and far too long", "i hated the ending", "awful dialogue", "a waste of time"]


def build_tiny_classifier(directory: Path, broken: bool = False) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from actors.embedding import default_embedding_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_embedding_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)},
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    inputs = tokenizer(POSITIVE + NEGATIVE, padding=True, return_tensors="pt")
    labels = torch.tensor([1] * len(POSITIVE) + [0] * len(NEGATIVE))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    if broken:
        with torch.no_grad():
            model.classifier.bias.copy_(torch.tensor([50.0, -50.0]))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def register_tiny_classifiers(storage_uri: str, workdir: Path) -> None:
    """``tiny:v1`` (champion) and ``tiny:v2``, the same good model; ``tiny:v3``, the broken one."""
    from cluster.registry import ModelRegistry
    from cluster.storage import Storage

    registry = ModelRegistry(Storage(storage_uri))
    good, broken = build_tiny_classifier(workdir / "good"), build_tiny_classifier(workdir / "broken", broken=True)
    for directory, accuracy in ((good, 1.0), (good, 1.0), (broken, 0.5)):
        registry.register(
            "tiny", directory, task="sequence-classification", base_model="random", labels=LABELS, metrics={"accuracy": accuracy},
            dataset={"uri": "tests/unit/classifier_doubles.py", "sha256": "0" * 64, "rows": 10}, recipe={"evaluation": {"metric": "accuracy"}},
        )
    registry.set_alias("tiny", "v1", "champion")
