"""Pick an agent's router examples from labelled data: per label, the medoid of each
sub-group (e.g. each intent of a domain), so a few examples cover every facet.

    python -m train.select_examples --data train.jsonl --label-field domain --group-field intent --per-label 20 --kind echo
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

import numpy as np
import yaml

from actors.embedding import Embedder


def medoid_order(vectors: np.ndarray) -> np.ndarray:
    """Indices from the most to the least central (cosine to the normalised mean)."""
    centre = vectors.mean(axis=0)
    centre /= np.linalg.norm(centre) or 1.0
    return np.argsort(-(vectors @ centre), kind="stable")


def select_examples(texts: list[str], groups: list[str], vectors: np.ndarray, per_label: int) -> list[str]:
    """Round-robin over the groups' medoid rankings until ``per_label`` examples are chosen."""
    by_group: dict[str, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        by_group[group].append(index)
    rankings = {g: [idx[i] for i in medoid_order(vectors[idx])] for g, idx in sorted(by_group.items())}
    chosen: list[str] = []
    depth = 0
    while len(chosen) < per_label and any(depth < len(r) for r in rankings.values()):
        for ranking in rankings.values():
            if depth < len(ranking) and len(chosen) < per_label and texts[ranking[depth]] not in chosen:
                chosen.append(texts[ranking[depth]])
        depth += 1
    return chosen


def describe(label: str, groups: list[str]) -> str:
    topics = ", ".join(sorted({g.replace("_", " ") for g in groups}))
    return f"{label.replace('_', ' ')}: {topics}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="JSON lines file with text, label and group fields")
    parser.add_argument("--label-field", required=True, help="field naming the agent, e.g. domain")
    parser.add_argument("--group-field", help="field naming a sub-group (e.g. intent); default: the label")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--per-label", type=int, default=20, help="examples per agent (default 20)")
    parser.add_argument("--kind", default="echo", help="specialist kind of the generated agents (default echo)")
    parser.add_argument("--skip-label", action="append", default=[], help="label to leave out, e.g. oos")
    args = parser.parse_args(argv)
    with open(args.data, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    rows = [r for r in rows if r[args.label_field] not in args.skip_label]
    group_field = args.group_field or args.label_field
    vectors = Embedder()([r[args.text_field] for r in rows])
    agents = []
    for label in sorted({r[args.label_field] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r[args.label_field] == label]
        groups = [rows[i][group_field] for i in idx]
        examples = select_examples([rows[i][args.text_field] for i in idx], groups, vectors[idx], args.per_label)
        agents.append(
            {
                "name": label,
                "kind": args.kind,
                "description": describe(label, groups),
                "examples": examples,
                "versions": [{"version": "v1", "weight": 100, "resources": {"num_cpus": 0.05}}],
            }
        )
    yaml.safe_dump({"agents": agents}, sys.stdout, sort_keys=False, allow_unicode=True, width=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
