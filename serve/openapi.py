"""The served OpenAPI document: FastAPI's, generated from the routes and the request models of
serve.schemas, plus the rules that come from the loaded orchestra rather than from the code (its
agent and pipeline names, its limits). With them the document states every rule the API holds a
request to, so a request it calls valid is accepted (tests/integration/test_openapi.py)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI

from cluster.config import OrchestraConfig

# The schema that no value matches: what a list of names is, where the orchestra has none.
NOTHING: dict[str, Any] = {"not": {}}


def orchestra_rules(config: OrchestraConfig, year: int) -> dict[tuple[str, str], dict[str, Any]]:
    """(request model, property) -> what the property's schema must also say, for this orchestra
    in this ``year``."""
    text = {"maxLength": config.limits.max_text_chars}
    return {
        ("InvokeBody", "text"): text,
        ("RouteBody", "text"): text,
        ("KeyBody", "agents"): {"items": names_schema(config.agent_names())},
        ("KeyBody", "pipelines"): {"items": names_schema([p.name for p in config.pipelines])},
        # "In the future" has no JSON Schema: the document states the narrower "from next year on".
        ("KeyBody", "expires_at"): {"pattern": years_from(year + 1)},
    }


def names_schema(names: list[str]) -> dict[str, Any]:
    return {"type": "string", "enum": sorted(names)} if names else NOTHING


def years_from(first: int) -> str:
    """A pattern for the RFC 3339 date-times whose four-digit year is ``first`` or later."""
    digits = f"{first:04d}"
    if len(digits) > 4:
        return "^$"
    # Same leading digits, then a greater digit at position i, then anything.
    branches = [digits]
    for i in range(3, -1, -1):
        if digits[i] != "9":
            branches.append(f"{digits[:i]}[{int(digits[i]) + 1}-9]" + r"\d" * (3 - i))
    return f"^(?:{'|'.join(branches)})-"


def install(app: FastAPI, config: OrchestraConfig) -> None:
    """Serve FastAPI's document with the orchestra's rules written in: built once a year, since
    one rule depends on the year."""
    generate: Callable[[], dict[str, Any]] = app.openapi
    served: dict[int, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        year = datetime.now(timezone.utc).year
        if year not in served:
            document = copy.deepcopy(generate())
            state_rules(document, orchestra_rules(config, year))
            served.clear()
            served[year] = document
        return served[year]

    app.openapi = openapi  # type: ignore[method-assign]


def state_rules(document: dict[str, Any], rules: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Add each rule to its property wherever the model's schema appears: in components, and
    inline in the request bodies that routes read by hand (request_body_doc)."""
    for schema in _model_schemas(document):
        for (model, name), rule in rules.items():
            if schema.get("title") == model and name in schema.get("properties", {}):
                value_branch(schema["properties"][name]).update(rule)


def value_branch(schema: dict[str, Any]) -> dict[str, Any]:
    """The branch of an optional property's schema (anyOf [X, null]) that is not null; the
    schema itself when it has no such branch."""
    branches = [b for b in schema.get("anyOf", ()) if b.get("type") != "null"]
    return branches[0] if len(branches) == 1 else schema


def _model_schemas(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "properties" in node and "title" in node:
            yield node
        for value in node.values():
            yield from _model_schemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from _model_schemas(value)
