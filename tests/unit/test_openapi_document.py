"""The served OpenAPI document states the rules the API holds requests to (serve.openapi,
serve.schemas): the orchestra's names and limits are written in, and the types whose rules the
models check by hand take exactly what their JSON Schema admits, as a JSON Schema validator
(jsonschema_rs, which schemathesis uses) reads it. tests/integration/test_openapi.py runs
schemathesis over the whole document."""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
from datetime import datetime, timezone
from types import SimpleNamespace

import jsonschema_rs
import pytest
from pydantic import ValidationError

from cluster.config import OrchestraConfig, RolloutPlan
from serve.app import create_app
from serve.openapi import NOTHING, years_from
from serve.review import FeedbackBody
from serve.schemas import BASE64_PATTERN, EPOCH_S_MAX, EPOCH_S_MIN, INSTANT_SCHEMA, ChatBody, KeyBody, TrafficBody, instant

CONFIG = {
    "storage": "unused",
    "limits": {"max_text_chars": 500, "audit_query_max": 70},
    "agents": [
        {"name": "weather", "kind": "echo", "description": "weather forecasts"},
        {"name": "banking", "kind": "echo", "description": "bank accounts",
         "versions": [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}]},
    ],
    "pipelines": [{"name": "chain", "description": "weather then banking", "steps": [
        {"name": "first", "agent": "weather"}, {"name": "second", "agent": "banking"}]}],
}


@pytest.fixture(scope="module")
def document() -> dict:
    # Building the document needs the gateway's configuration only, not a running one.
    config = OrchestraConfig.model_validate(CONFIG)
    return create_app(SimpleNamespace(config=config, body_limit=lambda path: 1)).openapi()


def parameter(document: dict, path: str, name: str) -> dict:
    [operation] = document["paths"][path].values()
    return next(p["schema"] for p in operation["parameters"] if p["name"] == name)


def value_branch(schema: dict) -> dict:
    return next(b for b in schema["anyOf"] if b.get("type") != "null")


def admits(schema: dict, value) -> bool:
    return jsonschema_rs.validator_for(schema, validate_formats=True).is_valid(value)


def test_the_orchestras_names_and_limits_are_written_in(document):
    key = document["components"]["schemas"]["KeyBody"]["properties"]
    assert value_branch(key["agents"])["items"] == {"type": "string", "enum": ["banking", "weather"]}
    assert value_branch(key["pipelines"])["items"] == {"type": "string", "enum": ["chain"]}
    assert document["components"]["schemas"]["RouteBody"]["properties"]["text"]["maxLength"] == 500
    # The invoke body is written inline (the route reads it by hand): the limit is there too.
    invoke = document["paths"]["/v1/agents/{name}/invoke"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert next(s for s in invoke["oneOf"] if s["title"] == "InvokeBody")["properties"]["text"]["maxLength"] == 500
    limit = parameter(document, "/v1/admin/audit", "limit")
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 70, 70)


def test_the_rules_checked_by_hand_are_stated(document):
    schemas = document["components"]["schemas"]
    assert value_branch(parameter(document, "/v1/admin/audit", "since")) == INSTANT_SCHEMA["anyOf"][0]
    assert parameter(document, "/v1/admin/models/{name}", "name")["pattern"] == "^[a-z][a-z0-9_-]{0,62}$"
    assert value_branch(schemas["KeyBody"]["properties"]["expires_at"])["pattern"] == years_from(datetime.now(timezone.utc).year + 1)
    assert schemas["FeedbackBody"]["anyOf"]
    steps = schemas["RolloutBody"]["properties"]["steps"]
    assert (steps["uniqueItems"], steps["contains"], steps["items"]["minimum"], steps["items"]["maximum"]) == (True, {"const": 100}, 1, 100)
    extract = document["paths"]["/v1/extract"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert extract["properties"]["document_b64"]["contentEncoding"] == "base64"


def test_no_schema_keeps_a_pydantic_only_keyword(document):
    # pydantic writes a constraint of an optional Annotated type as "ge"/"le" if it sits outside.
    def keys(node):
        if isinstance(node, dict):
            for key, value in node.items():
                yield key
                if key != "properties":
                    yield from keys(value)
                else:
                    for schema in value.values():
                        yield from keys(schema)
        elif isinstance(node, list):
            for value in node:
                yield from keys(value)

    assert not {"ge", "le", "gt", "lt", "min_length", "max_length"} & set(keys(document))


@pytest.mark.parametrize(
    "text",
    [
        "0.5", "-1", "1e3", "1e+16", "-0.0", "05", "+5", str(EPOCH_S_MIN), str(EPOCH_S_MAX), str(EPOCH_S_MAX + 1),
        "2024-05-01", "2024-02-30", "0000-02-29", "2024-05-01T12:00", "2024-05-01T12:00:00", "2024-05-01 12:00:00Z",
        "2024-05-01T12:00:00Z", "2024-05-01t12:00:00.123456789z", "2024-05-01T12:00:00+05:30", "2024-05-01T12:00:00+24:00",
        "2016-12-31T23:59:60Z", "2024-05-01T12:00:60Z", "2024-05-31T12:00", "2024-04-31T12:00", "2024-02-29T00:00:00.5",
        "2024-13-01T00:00", "2024-05-01T24:00", "2024-05-01T12:00:60", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "now", "",
    ],
)
def test_since_takes_exactly_what_its_schema_admits(text):
    # In a query every value is text: a string as itself, a JSON number as its JSON text.
    try:
        number = json.loads(text)
    except ValueError:
        number = None
    as_schema = admits(INSTANT_SCHEMA, text) or (isinstance(number, (int, float)) and admits(INSTANT_SCHEMA, number))
    try:
        moment = instant(text)
    except ValueError:
        assert not as_schema
    else:
        assert as_schema and moment.tzinfo is not None


def test_since_reads_an_instant_as_utc():
    assert instant("2024-05-01T12:00:00+02:00") == datetime(2024, 5, 1, 10, tzinfo=timezone.utc)
    assert instant("2024-05-01") == datetime(2024, 5, 1, tzinfo=timezone.utc)
    # API.md: since=<ISO 8601>; without an offset it is UTC.
    assert instant("2024-05-01T12:00:00") == instant("2024-05-01T12:00") == datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    assert instant("1714564800") == datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    assert instant("2016-12-31T23:59:60Z") == datetime(2017, 1, 1, tzinfo=timezone.utc)
    # Beyond datetime's range, a bound means the same as its edge.
    assert instant("0001-01-01T00:00:00+01:00") == datetime.min.replace(tzinfo=timezone.utc)


def test_an_integer_is_what_json_schema_calls_one():
    assert TrafficBody.model_validate_json('{"weights": {"v1": 100.0}}').weights == {"v1": 100}
    assert ChatBody.model_validate_json('{"model": "m", "messages": [{"role": "user"}], "max_tokens": 5.0}').max_tokens == 5
    for refused in ('"100"', "true", "99.5"):
        with pytest.raises(ValidationError):
            TrafficBody.model_validate_json(f'{{"weights": {{"v1": {refused}}}}}')


def test_feedback_needs_one_answer_in_the_schema_as_in_the_model():
    schema = FeedbackBody.model_json_schema()
    for body in ({"request_id": "r"}, {"request_id": "r", "label": None, "reward": None}, {"request_id": "r", "correct": False}, {"request_id": "r", "reward": 0}):
        try:
            FeedbackBody.model_validate(body)
            taken = True
        except ValidationError:
            taken = False
        assert admits(schema, body) == taken, body


def test_a_key_expiry_is_an_rfc_3339_date_time_in_the_future():
    assert KeyBody.model_validate({"role": "invoke", "name": "k", "expires_at": "2999-01-01T00:00:00+01:00"}).expires_at.year == 2998
    for refused in ("2000-01-01T00:00:00Z", "2999-01-01T00:00:00", "2999-01-01", 32503680000):
        with pytest.raises(ValidationError):
            KeyBody.model_validate({"role": "invoke", "name": "k", "expires_at": refused})


def test_years_from_matches_exactly_the_years_from_its_first():
    for first in (1, 2027, 2099, 9999):
        pattern = re.compile(years_from(first))
        assert all(bool(pattern.match(f"{year:04d}-01-01T00:00:00Z")) == (year >= first) for year in range(10_000))
    assert NOTHING == {"not": {}}


def test_rollout_steps_are_a_set_taken_rising():
    assert RolloutPlan(steps=[50, 5, 100]).steps == [5, 50, 100]
    schema = RolloutPlan.model_json_schema()["properties"]["steps"]
    for steps in ([50, 40], [5, 5, 100], [0, 100], [101], []):
        assert not admits(schema, steps)
        with pytest.raises(ValidationError):
            RolloutPlan(steps=steps)


def decodes(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
        return True
    except (binascii.Error, ValueError):
        return False


def test_what_the_base64_pattern_admits_decodes():
    pattern = re.compile(BASE64_PATTERN)
    for text in map("".join, itertools.chain.from_iterable(itertools.product("Ab/=", repeat=n) for n in range(10))):
        if pattern.match(text):
            assert decodes(text), text
        else:
            # Python's decoder also takes surplus padding after whole groups; the pattern does not.
            assert not decodes(text) or re.fullmatch(r"(?:[A-Za-z0-9+/]{4})+=+", text), text
