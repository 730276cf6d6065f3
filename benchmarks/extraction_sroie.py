"""Field extraction accuracy on the SROIE dev receipts from cached OCR: per-field exact match and
character F1, then each miss classed as an OCR miss (the gold value is nowhere in the OCR text)
or an extraction miss (it is there but was not chosen). Print-only.

``nospace`` is exact match with all whitespace ignored: how much of the gap is OCR spacing
("27,JALAN" for "27, JALAN"). Receipts are selected by ``--half`` (even or odd numbers) and
``--stems A:B`` (numbers A..B-1).

Run: ``python -m benchmarks.extraction_sroie [--ocr /tmp/sroie_ocr] [--gold /work/shared/datasets/sroie-dev]
[--half all|even|odd] [--stems 0:100] [--misses]``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

from actors.documents.evaluate import normalise, score
from actors.documents.fields import extract_fields
from actors.documents.model import Page
from actors.documents.schema import compile_query
from actors.documents.values import find_amounts, find_dates

QUERY = {"company": "str", "date": "date", "address": "str", "total": 0.0}
KINDS = {"company": "string", "date": "date", "address": "string", "total": "number"}


def load(ocr_dir: Path, gold_dir: Path, half: str = "all", stems: range = range(10**6)) -> list[tuple[str, Page, dict[str, Any]]]:
    receipts = []
    for path in sorted(ocr_dir.glob("[0-9]*.json")):
        number = int(path.stem)
        if number not in stems or (half != "all" and number % 2 != (0 if half == "even" else 1)):
            continue
        gold_path = gold_dir / path.name
        if gold_path.exists():
            receipts.append((path.stem, Page.from_dict(json.loads(path.read_text())), json.loads(gold_path.read_text())))
    return receipts


def in_ocr(kind: str, gold: Any, page: Page) -> bool:
    """Whether the gold value occurs in the page's OCR text at all."""
    wanted = normalise(kind, gold)
    if kind == "date":
        return any(iso == wanted for line in page.lines for iso, _, _ in find_dates(line.text))
    if kind == "number":
        return any(round(value, 2) == wanted for line in page.lines for value, _, _ in find_amounts(line.text))
    return wanted in normalise("string", " ".join(line.text for line in page.lines))


def same_ignoring_spaces(kind: str, pred: Any, gold: Any) -> bool:
    if kind != "string":
        return normalise(kind, pred) == normalise(kind, gold)
    return re.sub(r"\s", "", normalise(kind, pred) or "") == re.sub(r"\s", "", normalise(kind, gold) or "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ocr", type=Path, default=Path("/tmp/sroie_ocr"))
    parser.add_argument("--gold", type=Path, default=Path("/work/shared/datasets/sroie-dev"))
    parser.add_argument("--half", choices=["all", "even", "odd"], default="all")
    parser.add_argument("--stems", default="0:1000000", help="receipt numbers A:B (A..B-1)")
    parser.add_argument("--misses", action="store_true", help="print every miss")
    args = parser.parse_args()

    start, stop = (int(part) for part in args.stems.split(":"))
    receipts = load(args.ocr, args.gold, args.half, range(start, stop))
    query = compile_query(QUERY)
    started = time.perf_counter()
    predictions = [extract_fields([page], query)[0]["fields"] for _, page, _ in receipts]
    elapsed = time.perf_counter() - started
    result = score(zip(predictions, (gold for _, _, gold in receipts)), KINDS)

    print(f"SROIE dev, {result['n']} receipts, {elapsed / max(len(receipts), 1) * 1000:.1f} ms/receipt (extraction only)")
    print(f"{'field':<10}{'exact':>8}{'char_f1':>9}{'nospace':>9}{'ocr miss':>10}{'extr miss':>11}")
    for name in QUERY:
        misses = [
            (stem, page, gold, pred)
            for (stem, page, gold), pred in zip(receipts, predictions)
            if normalise(KINDS[name], pred[name]) != normalise(KINDS[name], gold[name])
        ]
        ocr_misses = [m for m in misses if not in_ocr(KINDS[name], m[2][name], m[1])]
        cell = result["fields"][name]
        nospace = sum(same_ignoring_spaces(KINDS[name], pred[name], gold[name]) for (_, _, gold), pred in zip(receipts, predictions)) / len(receipts)
        print(f"{name:<10}{cell['exact']:>8.3f}{cell['char_f1']:>9.3f}{nospace:>9.3f}{len(ocr_misses):>10}{len(misses) - len(ocr_misses):>11}")
        if args.misses:
            for stem, page, gold, pred in misses:
                kind = "ocr " if any(m[0] == stem for m in ocr_misses) else "extr"
                print(f"    {kind} {stem}: pred={pred[name]!r} gold={gold[name]!r}")


if __name__ == "__main__":
    main()
