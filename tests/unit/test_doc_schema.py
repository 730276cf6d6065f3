"""Extraction queries in actors.documents.schema: schema by example, JSON Schema, "*", bad queries."""

from __future__ import annotations

import pytest

from actors.documents.schema import MAX_FIELDS, FieldSpec, compile_query, validate
from cluster.errors import ValidationFailed

EXAMPLE = {
    "invoice_number": "str",
    "date": "date",
    "total": 0.0,
    "count": 0,
    "paid": True,
    "vendor": {"name": "str"},
    "items": [{"description": "str", "amount": 0.0}],
}


def test_example_becomes_a_nullable_json_schema() -> None:
    query = compile_query(EXAMPLE)
    schema = query.schema
    assert schema["type"] == "object"
    assert schema["required"] == list(EXAMPLE)
    assert schema["additionalProperties"] is False
    properties = schema["properties"]
    assert properties["invoice_number"] == {"type": ["string", "null"]}
    assert properties["date"] == {"type": ["string", "null"], "format": "date"}
    assert properties["total"] == {"type": ["number", "null"]}
    assert properties["count"] == {"type": ["integer", "null"]}
    assert properties["paid"] == {"type": ["boolean", "null"]}
    assert properties["vendor"]["type"] == ["object", "null"]
    assert properties["vendor"]["properties"]["name"] == {"type": ["string", "null"]}
    assert properties["items"]["type"] == ["array", "null"]
    assert properties["items"]["items"]["properties"]["amount"] == {"type": ["number", "null"]}


def test_example_field_specs() -> None:
    kinds = {spec.name: spec.kind for spec in compile_query(EXAMPLE).fields}
    assert kinds == {
        "invoice_number": "string",
        "date": "date",
        "total": "number",
        "count": "integer",
        "paid": "boolean",
        "vendor": "object",
        "items": "array",
    }
    items = next(spec for spec in compile_query(EXAMPLE).fields if spec.name == "items")
    assert items.item == FieldSpec("items", "object", fields=(FieldSpec("description", "string"), FieldSpec("amount", "number")))


def test_all_null_is_valid_and_wrong_types_name_their_path() -> None:
    query = compile_query(EXAMPLE)
    nulls = {name: None for name in EXAMPLE}
    assert validate(nulls, query) == []
    errors = validate({**nulls, "date": "25/12/2018", "total": "9.00", "items": [{"description": 3, "amount": None}]}, query)
    assert any(error.startswith("$.date:") for error in errors)
    assert any(error.startswith("$.total:") for error in errors)
    assert any(error.startswith("$.items[0].description:") for error in errors)
    assert validate({**nulls, "extra": 1}, query)  # only the asked fields


def test_json_schema_passes_through_and_becomes_nullable() -> None:
    query = compile_query(
        {
            "type": "object",
            "properties": {
                "total": {"type": "number"},
                "date": {"type": "string", "format": "date"},
                "lines": {"type": "array", "items": {"type": "object", "properties": {"qty": {"type": "integer"}}}},
            },
        }
    )
    assert {spec.name: spec.kind for spec in query.fields} == {"total": "number", "date": "date", "lines": "array"}
    assert query.schema["properties"]["total"] == {"type": ["number", "null"]}
    assert validate({"total": None, "date": None, "lines": [{"qty": 2}]}, query) == []


def test_wildcard() -> None:
    query = compile_query("*")
    assert query.wildcard and query.fields == ()
    assert validate({"invoice_no": "123", "total": 9.0}, query) == []
    assert validate({"Bad Key": "x"}, query)


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ({"total": "number", "date": "dayte"}, "query.date"),
        ({"total": "money"}, "query.total"),
        ({}, "query"),
        ({"vendor": {}}, "query.vendor"),
        ({"a": {"b": {"c": {"d": {"e": "str"}}}}}, "query.a.b.c.d"),
        ({f"f{i}": "str" for i in range(MAX_FIELDS + 1)}, f"query.f{MAX_FIELDS}"),
        ({"items": ["str", "date"]}, "query.items"),
        ({"total": None}, "query.total"),
        ({"": "str"}, "query."),
        ({"type": "object", "properties": {"a": {"type": "nope"}}}, "query.properties.a.type"),
        ({"type": "object", "properties": {}}, "query.properties"),
        ("total", "query"),
    ],
)
def test_bad_queries_name_the_field(query: object, named: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        compile_query(query)
    assert raised.value.status == 422
    assert str(raised.value).startswith(named)
