"""The extraction query: a schema by example, a JSON Schema, or ``"*"``, compiled to a JSON
Schema in which every field may be null, and the per-field kinds the extractors parse to."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import SchemaError

from cluster.errors import ValidationFailed

MAX_DEPTH = 4
MAX_FIELDS = 100
MAX_NAME_LENGTH = 64

TYPE_WORDS = {
    "str": "string",
    "string": "string",
    "text": "string",
    "date": "date",
    "float": "number",
    "number": "number",
    "int": "integer",
    "integer": "integer",
    "bool": "boolean",
    "boolean": "boolean",
}
_SCALAR_SCHEMAS = {
    "string": {"type": ["string", "null"]},
    "date": {"type": ["string", "null"], "format": "date"},
    "number": {"type": ["number", "null"]},
    "integer": {"type": ["integer", "null"]},
    "boolean": {"type": ["boolean", "null"]},
}


@dataclass(frozen=True)
class FieldSpec:
    """One wanted field: a scalar ``kind``, or an object with ``fields``, or an array of ``item``."""

    name: str
    kind: str  # string | date | number | integer | boolean | object | array
    fields: tuple[FieldSpec, ...] = ()
    item: FieldSpec | None = None


@dataclass(frozen=True)
class Query:
    """A compiled query; ``wildcard`` asks for every label–value pair on the page."""

    schema: dict[str, Any]
    fields: tuple[FieldSpec, ...] = field(default_factory=tuple)
    wildcard: bool = False


class _Budget:
    """Counts fields across the whole query, so a wide or deep query fails early and by name."""

    def __init__(self) -> None:
        self.used = 0

    def take(self, path: str) -> None:
        self.used += 1
        if self.used > MAX_FIELDS:
            raise ValidationFailed(f"query.{path}: too many fields (at most {MAX_FIELDS})")


def _check_name(name: Any, path: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise ValidationFailed(f"{path}: field names must be non-empty strings of at most {MAX_NAME_LENGTH} characters")
    return name


def _check_depth(path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValidationFailed(f"query.{path}: nested too deep (at most {MAX_DEPTH} levels)")


def _spec_from_example(name: str, example: Any, path: str, depth: int, budget: _Budget) -> FieldSpec:
    budget.take(path)
    if isinstance(example, bool):
        return FieldSpec(name, "boolean")
    if isinstance(example, int):
        return FieldSpec(name, "integer")
    if isinstance(example, float):
        return FieldSpec(name, "number")
    if isinstance(example, str):
        kind = TYPE_WORDS.get(example.strip().casefold())
        if kind is None:
            raise ValidationFailed(f"query.{path}: unknown type {example!r} (use one of {', '.join(sorted(TYPE_WORDS))})")
        return FieldSpec(name, kind)
    if isinstance(example, dict):
        _check_depth(path, depth + 1)
        return FieldSpec(name, "object", fields=_specs_from_example(example, path, depth + 1, budget))
    if isinstance(example, list):
        if len(example) != 1:
            raise ValidationFailed(f"query.{path}: a list field gives exactly one example item")
        _check_depth(path, depth + 1)
        return FieldSpec(name, "array", item=_spec_from_example(name, example[0], f"{path}[0]", depth + 1, budget))
    raise ValidationFailed(f"query.{path}: unsupported example value {example!r}")


def _specs_from_example(example: dict[str, Any], path: str, depth: int, budget: _Budget) -> tuple[FieldSpec, ...]:
    if not example:
        raise ValidationFailed(f"{'query.' + path if path else 'query'}: an object needs at least one field")
    prefix = f"{path}." if path else ""
    return tuple(
        _spec_from_example(_check_name(name, f"query.{prefix}{name}"), value, f"{prefix}{name}", depth, budget) for name, value in example.items()
    )


def _spec_from_json_schema(name: str, schema: dict[str, Any], path: str, depth: int, budget: _Budget) -> FieldSpec:
    budget.take(path or name)
    types = schema.get("type", "object" if "properties" in schema else "string")
    types = [types] if isinstance(types, str) else [t for t in types if t != "null"]
    if len(types) != 1:
        raise ValidationFailed(f"query.{path}: give one type (besides null), got {schema.get('type')!r}")
    kind = types[0]
    if kind == "object":
        properties = schema.get("properties") or {}
        if not properties:
            raise ValidationFailed(f"query.{path or 'properties'}: an object needs at least one property")
        _check_depth(path, depth + 1)
        prefix = f"{path}." if path else ""
        children = tuple(
            _spec_from_json_schema(_check_name(key, f"query.{prefix}{key}"), sub, f"{prefix}{key}", depth + 1, budget)
            for key, sub in properties.items()
        )
        return FieldSpec(name, "object", fields=children)
    if kind == "array":
        _check_depth(path, depth + 1)
        return FieldSpec(name, "array", item=_spec_from_json_schema(name, schema.get("items") or {}, f"{path}[0]", depth + 1, budget))
    if kind == "string":
        return FieldSpec(name, "date" if schema.get("format") in ("date", "date-time") else "string")
    if kind in ("number", "integer", "boolean"):
        return FieldSpec(name, kind)
    raise ValidationFailed(f"query.{path}: unsupported type {kind!r}")


def _nullable_schema(spec: FieldSpec) -> dict[str, Any]:
    if spec.kind == "object":
        return _object_schema(spec.fields, nullable=True)
    if spec.kind == "array":
        return {"type": ["array", "null"], "items": _nullable_schema(spec.item)}
    return copy.deepcopy(_SCALAR_SCHEMAS[spec.kind])


def _object_schema(specs: tuple[FieldSpec, ...], nullable: bool) -> dict[str, Any]:
    return {
        "type": ["object", "null"] if nullable else "object",
        "properties": {spec.name: _nullable_schema(spec) for spec in specs},
        "required": [spec.name for spec in specs],
        "additionalProperties": False,
    }


def _is_json_schema(query: dict[str, Any]) -> bool:
    return query.get("type") == "object" or isinstance(query.get("properties"), dict)


WILDCARD_SCHEMA = {
    "type": "object",
    "additionalProperties": {"type": ["string", "number", "null"]},
    "propertyNames": {"pattern": "^[a-z0-9_]+$"},
}


def compile_query(query: Any) -> Query:
    """The query compiled; raises ValidationFailed naming the field for a bad one."""
    if query == "*":
        return Query(schema=copy.deepcopy(WILDCARD_SCHEMA), wildcard=True)
    if not isinstance(query, dict):
        raise ValidationFailed('query: give an object of wanted fields, a JSON Schema, or "*"')
    budget = _Budget()
    if _is_json_schema(query):
        try:
            Draft202012Validator.check_schema(query)
        except SchemaError as error:
            where = ".".join(str(p) for p in error.path)
            raise ValidationFailed(f"query{'.' + where if where else ''}: not a valid JSON Schema: {error.message}") from None
        specs = _spec_from_json_schema("", query, "", 0, budget).fields
    else:
        specs = _specs_from_example(query, "", 1, budget)
    return Query(schema=_object_schema(specs, nullable=False), fields=specs)


def validate(fields: dict[str, Any], query: Query) -> list[str]:
    """Every way the fields break the query's schema, each naming its JSON path."""
    validator = Draft202012Validator(query.schema, format_checker=FormatChecker())
    errors = sorted(validator.iter_errors(fields), key=lambda error: list(error.absolute_path))
    return [f"{error.json_path}: {error.message}" for error in errors]


def empty_result(specs: tuple[FieldSpec, ...]) -> dict[str, Any]:
    """Every field null: what a page with nothing found gives."""
    return {spec.name: None for spec in specs}
