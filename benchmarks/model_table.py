"""The default models' table from their manifests: honest validation with its spread, and p50 CPU
latency at batch 1 and 32 for float32 beside int8 (measured side by side by `baton optimize quantize`).

    python -m benchmarks.model_table --storage .baton clinc-intents:v2 sst2-sentiment:v1
"""

from __future__ import annotations

import argparse
import math
import sys

from cluster.errors import exit_code
from cluster.registry import Manifest, ModelRegistry
from cluster.storage import Storage

INT8 = "dynamic-int8"
Z_95 = 1.96


def int8_child(registry: ModelRegistry, manifest: Manifest) -> Manifest | None:
    """The latest int8 version quantised from ``manifest``, if any."""
    children = [
        m for m in registry.versions(manifest.name)
        if m.parent_version == manifest.version and m.extra.get("optimization") == INT8
    ]
    return children[-1] if children else None


def quality(manifest: Manifest) -> str:
    """Headline validation figures with their spread: the cross-fit's mean ± std for an
    out-of-scope rule, else accuracy with a 95% normal interval over the validation rows."""
    metrics = manifest.metrics
    if "in_scope_accuracy_std" in metrics:
        return (
            f"in-scope {100 * metrics['in_scope_accuracy']:.2f}% ± {100 * metrics['in_scope_accuracy_std']:.2f}, "
            f"out-of-scope recall {100 * metrics['oos_recall']:.1f}% ± {100 * metrics['oos_recall_std']:.1f} (cross-fit mean ± std)"
        )
    if "in_scope_accuracy" in metrics:
        return f"in-scope {100 * metrics['in_scope_accuracy']:.2f}%, out-of-scope recall {100 * metrics['oos_recall']:.1f}% (class alone)"
    rows = validation_rows(manifest)
    accuracy = metrics["accuracy"]
    half_width = Z_95 * math.sqrt(accuracy * (1 - accuracy) / rows) if rows else float("nan")
    return f"accuracy {100 * accuracy:.2f}% ± {100 * half_width:.2f} (95% interval, {rows} rows)"


def validation_rows(manifest: Manifest) -> int:
    """Rows the metrics were measured on: recorded by training, else the validation file's."""
    recorded = manifest.metrics.get("validation_rows")
    if isinstance(recorded, (int, float)):
        return int(recorded)
    return manifest.dataset.validation.rows if manifest.dataset.validation is not None else 0


def latency(child: Manifest | None) -> list[str]:
    if child is None:
        return ["-"] * 4
    measured = child.extra["latency_ms"]
    return [f"{measured[kind][batch]:.1f}" for batch in ("batch_1", "batch_32") for kind in ("float32", "int8")]


def int8_change(manifest: Manifest, child: Manifest | None) -> str:
    if child is None:
        return "not quantised"
    return f"agrees on {100 * child.extra['agreement']:.1f}% of validation rows"


def table(registry: ModelRegistry, refs: list[str]) -> str:
    lines = [
        "| model | validation (honest) | p50 ms batch 1, float32 | int8 | p50 ms batch 32, float32 | int8 | int8 against float32 |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for ref in refs:
        manifest = registry.manifest(*registry.resolve(ref))
        child = int8_child(registry, manifest)
        cells = [f"`{manifest.name}:{manifest.version}`", quality(manifest), *latency(child), int8_change(manifest, child)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("refs", nargs="+", help="NAME:VERSION or NAME@ALIAS of each float32 model")
    parser.add_argument("--storage", default=".baton", help="registry storage URI")
    args = parser.parse_args(argv)
    return exit_code(lambda: print(table(ModelRegistry(Storage(args.storage)), args.refs)))


if __name__ == "__main__":
    sys.exit(main())
