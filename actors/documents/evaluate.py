"""Scoring extracted fields against gold labels for ``baton documents eval``: exact match after
normalisation, and character F1 over the longest common subsequence."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rapidfuzz.distance import LCSseq

from actors.documents.values import parse_amount, parse_date, parse_integer


def normalise(field_kind: str, value: Any) -> Any:
    """The value as compared: dates to ISO, amounts to numbers, text with its whitespace
    collapsed and case folded; None for a missing value."""
    if value is None:
        return None
    if field_kind == "date":
        return parse_date(str(value))
    if field_kind == "number":
        amount = parse_amount(value)
        return None if amount is None else round(amount, 2)
    if field_kind == "integer":
        return parse_integer(value)
    return " ".join(str(value).split()).casefold() or None


def exact(pred: Any, gold: Any, kind: str = "string") -> bool:
    """Whether prediction and gold are the same after normalisation (both missing counts)."""
    return normalise(kind, pred) == normalise(kind, gold)


def char_f1(pred: Any, gold: Any) -> float:
    """Character F1 with matches counted as the longest common subsequence (order matters)."""
    pred_text = "" if pred is None else " ".join(str(pred).split()).casefold()
    gold_text = "" if gold is None else " ".join(str(gold).split()).casefold()
    if not pred_text and not gold_text:
        return 1.0
    common = LCSseq.similarity(pred_text, gold_text)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_text), common / len(gold_text)
    return 2 * precision * recall / (precision + recall)


def _as_text(kind: str, value: Any) -> Any:
    normal = normalise(kind, value)
    if normal is None:
        return value if kind == "string" else None
    return f"{normal:.2f}" if kind == "number" else normal


def score(pairs: Iterable[tuple[dict[str, Any], dict[str, Any]]], kinds: dict[str, str] | None = None) -> dict[str, Any]:
    """Mean exact match and character F1 per gold field over (predicted, gold) pairs.

    ``kinds`` maps a field to ``date``/``number``/``integer``/``string`` (default ``string``);
    char F1 compares the normalised forms, so ``25/12/2018`` and ``2018-12-25`` score 1.
    """
    kinds = kinds or {}
    totals: dict[str, dict[str, float]] = {}
    n = 0
    for predicted, gold in pairs:
        n += 1
        for name, gold_value in gold.items():
            kind = kinds.get(name, "string")
            pred_value = (predicted or {}).get(name)
            cell = totals.setdefault(name, {"exact": 0.0, "char_f1": 0.0})
            cell["exact"] += exact(pred_value, gold_value, kind)
            cell["char_f1"] += char_f1(_as_text(kind, pred_value), _as_text(kind, gold_value))
    fields = {name: {metric: round(total / n, 4) for metric, total in cell.items()} for name, cell in totals.items()}
    return {"fields": fields, "n": n}
