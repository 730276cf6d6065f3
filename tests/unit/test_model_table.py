"""benchmarks/model_table.py: the README's model table from manifests: the cross-fit's mean ± std
for an out-of-scope rule, a 95% interval for plain accuracy, and the int8 child's latencies."""

from __future__ import annotations

from benchmarks.model_table import table
from cluster.registry import ModelRegistry
from cluster.storage import Storage


def register(registry: ModelRegistry, model_dir, name: str, metrics: dict, parent: str | None = None, extra: dict | None = None) -> None:
    registry.register(
        name, model_dir, task="sequence-classification", base_model="minilm", labels=["a", "b"], metrics=metrics,
        dataset={"uri": "x", "sha256": "0" * 64, "rows": 1}, recipe={}, parent_version=parent, extra=extra or {},
    )


def test_table_rows_from_manifests(tmp_path):
    registry = ModelRegistry(Storage(str(tmp_path / "store")))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    register(registry, model_dir, "intents", {"accuracy": 0.9, "in_scope_accuracy": 0.9651, "in_scope_accuracy_std": 0.0032, "oos_recall": 0.8133, "oos_recall_std": 0.041})
    register(registry, model_dir, "sentiment", {"accuracy": 0.9, "validation_rows": 900})
    latency = {"float32": {"batch_1": 12.34, "batch_32": 300.0}, "int8": {"batch_1": 7.0, "batch_32": 150.55}}
    register(registry, model_dir, "sentiment", {"accuracy": 0.89}, parent="v1", extra={"optimization": "dynamic-int8", "latency_ms": latency, "agreement": 0.987})

    rows = table(registry, ["intents:v1", "sentiment:v1"]).splitlines()
    assert rows[2] == (
        "| `intents:v1` | in-scope 96.51% ± 0.32, out-of-scope recall 81.3% ± 4.1 (cross-fit mean ± std) | - | - | - | - | not quantised |"
    )
    # 1.96 * sqrt(0.9 * 0.1 / 900) = 1.96 points.
    assert rows[3] == (
        "| `sentiment:v1` | accuracy 90.00% ± 1.96 (95% interval, 900 rows) | 12.3 | 7.0 | 300.0 | 150.6 | agrees on 98.7% of validation rows |"
    )
