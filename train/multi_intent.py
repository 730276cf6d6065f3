"""Multi-intent requests for a supervisor's router policy: two or three in-scope requests of
different domains joined into one ("what's my balance and book a flight to paris"), labelled
with the sorted domains in ``agents``, plus a share of single requests (one agent).

    python -m train.multi_intent --data ../shared/datasets/clinc150/val.jsonl --out multi_val.jsonl --seed 0 --n 600
    python -m train.multi_intent --data ../shared/datasets/clinc150/train.jsonl \\
      --exclude-examples configs/examples/clinc_domains.yaml --out multi_test.jsonl --seed 1 --n 600

Deterministic by seed. ``--exclude-examples`` leaves out the rows whose text is one of the
router examples of a config, so a set built from the data the examples came from stays unseen.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import yaml

CONNECTORS = (" and ", ", also ", ". Then ", "; ", "? Also ")
_TRAILING = " ?.!;,"


def join_requests(parts: Sequence[str], connectors: Sequence[str]) -> str:
    """``parts`` joined by ``connectors`` (one fewer), each part's trailing punctuation dropped."""
    if len(connectors) != len(parts) - 1:
        raise ValueError("need one connector between each two parts")
    text = parts[0].strip().rstrip(_TRAILING)
    for connector, part in zip(connectors, parts[1:]):
        text += connector + part.strip().rstrip(_TRAILING)
    return text


def config_examples(path: Path) -> set[str]:
    """The router examples (and descriptions) of every agent in an orchestra config."""
    config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return {text for agent in config.get("agents") or [] for text in [agent.get("description", ""), *(agent.get("examples") or [])]}


def by_domain(rows: Iterable[dict], *, label_field: str = "domain", none_label: str = "oos", exclude: set[str] = frozenset()) -> dict[str, list[dict]]:
    """In-scope rows grouped by label (sorted within each), minus the excluded texts."""
    grouped: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        label = row.get(label_field)
        if label is None or label == none_label or row["text"] in exclude:
            continue
        grouped[str(label)].append(row)
    return {label: sorted(rows, key=lambda r: r["text"]) for label, rows in sorted(grouped.items())}


def build(
    grouped: dict[str, list[dict]],
    n: int,
    seed: int,
    *,
    single_share: float = 0.2,
    three_share: float = 0.35,
    connectors: Sequence[str] = CONNECTORS,
    label_field: str = "domain",
) -> list[dict]:
    """``n`` requests: a ``single_share`` of one request, the rest two (or, a ``three_share``
    of them, three) requests of different domains joined with random connectors."""
    if len(grouped) < 3:
        raise ValueError(f"need at least three labels to join, got {sorted(grouped)}")
    rng = random.Random(seed)
    domains = sorted(grouped)
    out = []
    for _ in range(n):
        size = 1 if rng.random() < single_share else (3 if rng.random() < three_share else 2)
        chosen = rng.sample(domains, size)
        rows = [rng.choice(grouped[domain]) for domain in chosen]
        joints = [rng.choice(connectors) for _ in range(size - 1)]
        out.append({
            "text": join_requests([r["text"] for r in rows], joints),
            "agents": sorted({str(r[label_field]) for r in rows}),
            "parts": [r["text"] for r in rows],
            "intents": [r.get("intent") for r in rows],
        })
    return out


def read_jsonl(path: Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="JSON lines with text and a label (domain)")
    parser.add_argument("--out", required=True, type=Path, help="JSON lines to write (text, agents, parts, intents)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=600, help="how many requests")
    parser.add_argument("--label-field", default="domain")
    parser.add_argument("--none-label", default="oos", help="label of out-of-scope rows, left out")
    parser.add_argument("--single-share", type=float, default=0.2, help="share of single (one-agent) requests")
    parser.add_argument("--three-share", type=float, default=0.35, help="share of the joined requests that join three")
    parser.add_argument("--exclude-examples", type=Path, action="append", default=[], help="config whose router examples to leave out; repeatable")
    args = parser.parse_args(argv)

    exclude = set().union(*(config_examples(path) for path in args.exclude_examples))
    grouped = by_domain(read_jsonl(args.data), label_field=args.label_field, none_label=args.none_label, exclude=exclude)
    rows = build(grouped, args.n, args.seed, single_share=args.single_share, three_share=args.three_share, label_field=args.label_field)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    sizes = defaultdict(int)
    for row in rows:
        sizes[len(row["agents"])] += 1
    print(f"{len(rows)} requests -> {args.out} (by number of agents: {dict(sorted(sizes.items()))})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
