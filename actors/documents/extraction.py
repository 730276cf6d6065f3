"""Structured extraction from OCR'd pages: one entry point for the fields, text and table modes,
page-type classification by embedding similarity, and the checks around an LLM's answer."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from jsonschema import Draft202012Validator

from actors.documents.fields import extract_fields
from actors.documents.model import Page
from actors.documents.schema import FieldSpec, Query, compile_query, validate
from actors.documents.tables import find_tables
from actors.documents.values import find_amounts, find_dates, parse_value
from cluster.errors import ValidationFailed

MODES = ("fields", "text", "table")
OPTIONS_SCHEMA = {
    "type": "object",
    "properties": {
        "page_type": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 100}, "minItems": 1, "maxItems": 20},
        "dayfirst": {"type": "boolean"},
    },
    "additionalProperties": False,
}
# What each common page type holds, so the embedding compares content, not a bare word.
PAGE_TYPE_DESCRIPTIONS = {
    "invoice": "invoice: bill from a seller with invoice number, invoice date, bill to, line items, due date and amount due",
    "receipt": "receipt: till receipt from a shop or restaurant with items, total, cash paid, change, cashier and thank you",
    "bank statement": "bank statement: account number, statement period, opening balance, deposits, withdrawals and closing balance",
    "purchase order": "purchase order: PO number, buyer, supplier, ordered items, quantities, delivery date",
    "contract": "contract: agreement between parties, terms and conditions, clauses, signatures",
    "letter": "letter: dear sir or madam, body paragraphs, yours sincerely, signature",
    "form": "form: fields to fill in with name, address, date of birth, signature",
}
PAGE_TEXT_CHARS = 2000
Embed = Callable[[Sequence[str]], np.ndarray]


def _check_options(options: dict[str, Any] | None) -> dict[str, Any]:
    options = options or {}
    error = next(iter(Draft202012Validator(OPTIONS_SCHEMA).iter_errors(options)), None)
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path)
        raise ValidationFailed(f"options{'.' + where if where else ''}: {error.message}")
    return options


def text_lines(pages: list[Page]) -> list[dict[str, Any]]:
    """The OCR lines of each page with their boxes and scores."""
    return [
        {
            "page": page.number,
            "lines": [{"text": line.text, "box": [round(v, 1) for v in line.box], "score": round(line.score, 4)} for line in page.lines],
        }
        for page in pages
    ]


def run_mode(
    pages: list[Page], query: Any, mode: str = "fields", options: dict[str, Any] | None = None, embed: Embed | None = None
) -> list[dict[str, Any]]:
    """One result per page for ``mode``: ``fields`` (the query's fields, validated), ``text`` (the
    OCR lines) or ``table`` (rebuilt tables). With ``options.page_type`` each result also gets
    ``page_type: {"label", "score"}`` (``embed`` defaults to the shared MiniLM Embedder)."""
    options = _check_options(options)
    if mode not in MODES:
        raise ValidationFailed(f"mode: {mode!r} is not one of {', '.join(MODES)}")
    if mode == "fields":
        compiled = query if isinstance(query, Query) else compile_query(query)
        results = extract_fields(pages, compiled, dayfirst=options.get("dayfirst", True))
    elif mode == "text":
        results = text_lines(pages)
    else:
        results = [{"page": page.number, "tables": [table.to_dict() for table in find_tables(page)]} for page in pages]
    if options.get("page_type"):
        if embed is None:
            from actors.embedding import Embedder

            embed = Embedder()
        for result, page_type in zip(results, classify_pages(pages, options["page_type"], embed)):
            result["page_type"] = page_type
    return results


def classify_pages(pages: list[Page], page_types: list[str], embed: Embed) -> list[dict[str, Any]]:
    """The most similar page type for each page (cosine similarity of the page text's embedding
    and the type's description)."""
    descriptions = [PAGE_TYPE_DESCRIPTIONS.get(name.strip().casefold(), name) for name in page_types]
    texts = [" ".join(page.text.split())[:PAGE_TEXT_CHARS] for page in pages]
    vectors = embed(descriptions + texts)
    type_vectors, page_vectors = vectors[: len(descriptions)], vectors[len(descriptions) :]
    similarity = page_vectors @ type_vectors.T
    return [{"label": page_types[int(row.argmax())], "score": round(float(row.max()), 4)} for row in similarity]


SYSTEM_PROMPT = (
    "You extract data from the OCR text of a scanned document. Reply with exactly one JSON object "
    "that matches the JSON Schema you are given, and nothing else. Copy values as printed; use null "
    "for anything the text does not contain and never guess. Dates as YYYY-MM-DD, amounts as plain "
    "numbers without currency."
)
WILDCARD_INSTRUCTION = "Return every label and value printed in the text as one JSON object, keys in snake_case."


def llm_messages(page: Page, query: Query) -> list[dict[str, str]]:
    """Chat messages asking an LLM for the query's fields from the page's OCR text."""
    ask = WILDCARD_INSTRUCTION if query.wildcard else f"JSON Schema:\n{json.dumps(query.schema, indent=1)}"
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"{ask}\n\nOCR text of page {page.number}:\n{page.text}\n\nJSON object:"},
    ]


def first_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in a reply (code fences and chatter around it are ignored)."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text or ""):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _compact(text: str) -> str:
    return re.sub(r"\s+", "", text.casefold())


class _Evidence:
    """What the OCR text holds, normalised, to check an answer's values against."""

    def __init__(self, page: Page):
        self.text = _compact(page.text)
        self.dates = {iso for line in page.lines for dayfirst in (True, False) for iso, _, _ in find_dates(line.text, dayfirst)}
        self.amounts = {round(value, 2) for line in page.lines for value, _, _ in find_amounts(line.text)}

    def holds(self, kind: str, value: Any) -> bool:
        if kind == "date":
            return value in self.dates
        if kind in ("number", "integer"):
            return round(float(value), 2) in self.amounts
        if kind == "boolean":
            return True  # a yes/no is read from a mark or a word, not copied
        return _compact(str(value)) in self.text


class _Checker:
    def __init__(self, page: Page):
        self.evidence = _Evidence(page)
        self.errors: list[str] = []
        self.unverified: list[str] = []

    def scalar(self, kind: str, value: Any, path: str) -> Any:
        if value is None:
            return None
        parsed = parse_value(kind, value)
        if parsed is None:
            self.errors.append(f"$.{path}: {value!r} is not a {kind}")
            return None
        if not self.evidence.holds(kind, parsed):
            self.unverified.append(path)
        return parsed

    def object(self, specs: tuple[FieldSpec, ...], data: Any, prefix: str) -> dict[str, Any]:
        data = data if isinstance(data, dict) else {}
        return {spec.name: self.field(spec, data.get(spec.name), f"{prefix}{spec.name}") for spec in specs}

    def field(self, spec: FieldSpec, value: Any, path: str) -> Any:
        if spec.kind == "object":
            return None if value is None else self.object(spec.fields, value, f"{path}.")
        if spec.kind == "array":
            if value is None:
                return None
            values = value if isinstance(value, list) else [value]
            return [self.field(spec.item, item, f"{path}.{index}") for index, item in enumerate(values)]
        return self.scalar(spec.kind, value, path)

    def wildcard(self, data: dict[str, Any]) -> dict[str, Any]:
        fields = {}
        for key, value in data.items():
            name = "_".join(re.sub(r"[^\w]+", " ", str(key).casefold()).split())
            kind = "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else "string"
            if name and not isinstance(value, (dict, list)):
                fields[name] = self.scalar(kind, value, name)
        return fields


def _nulls(query: Query) -> dict[str, Any]:
    return {spec.name: None for spec in query.fields}


def check_llm_answer(reply_text: str, page: Page, query: Query) -> dict[str, Any]:
    """An LLM's reply made safe: the first JSON object, coerced with the extraction parsers and
    validated; ``unverified`` lists every field (dotted path) whose value the OCR text does not
    hold. A reply with no JSON object gives all fields null and an error, never an exception."""
    data = first_json_object(reply_text)
    if data is None:
        return {"page": page.number, "fields": _nulls(query), "valid": False, "errors": ["reply: no JSON object found"], "unverified": []}
    checker = _Checker(page)
    fields = checker.wildcard(data) if query.wildcard else checker.object(query.fields, data, "")
    errors = checker.errors + validate(fields, query)
    return {"page": page.number, "fields": fields, "valid": not errors, "errors": errors, "unverified": checker.unverified}
