"""Request bodies and parameters of the HTTP API (API.md): strict pydantic models and types whose
constraints and descriptions are what the served OpenAPI document shows. Each takes exactly what
its JSON Schema admits, so a client can trust the document (tests/integration/test_openapi.py)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)

from cluster.config import NAME_PATTERN


def _integral(value: Any) -> Any:
    # JSON does not tell 5 from 5.0 and JSON Schema's "integer" admits both; a string or a
    # bool stays refused (StrictInt), as the schema says.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[StrictInt, BeforeValidator(_integral)]
Scalar = StrictStr | StrictInt | StrictFloat | StrictBool
# RFC 4648 base64 with its padding: what the "base64" content encoding of JSON Schema means.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


# -- an instant in a query: RFC 3339 date-time, date, or Unix epoch seconds -------------------

_UTC_MIN, _UTC_MAX = datetime.min.replace(tzinfo=timezone.utc), datetime.max.replace(tzinfo=timezone.utc)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
EPOCH_S_MIN = (_UTC_MIN - _EPOCH) // timedelta(seconds=1)
EPOCH_S_MAX = (_UTC_MAX - _EPOCH) // timedelta(seconds=1)
_DATE = r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})"
_DATE_ONLY = re.compile(_DATE)
_DATE_TIME = re.compile(
    _DATE + r"[Tt](?P<hour>\d{2}):(?P<minute>\d{2}):(?P<second>\d{2})(?:\.(?P<fraction>\d+))?"
    r"(?:[Zz]|(?P<sign>[+-])(?P<offset_h>[01]\d|2[0-3]):(?P<offset_m>[0-5]\d))"
)
# ISO 8601 without an offset (API.md: `since=<ISO 8601>`), read as UTC.
_NAIVE = re.compile(_DATE + r"[Tt](?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?")
NAIVE_PATTERN = (
    r"^\d{4}-((0[13578]|1[02])-(0[1-9]|[12]\d|3[01])|(0[469]|11)-(0[1-9]|[12]\d|30)|02-(0[1-9]|1\d|2\d))"
    r"[Tt]([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d+)?)?$"
)
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
INSTANT_SCHEMA = {
    "anyOf": [
        {"type": "string", "format": "date-time"},
        {"type": "string", "format": "date"},
        # February 29 of a year that is not a leap year matches the pattern but is refused (422).
        {"type": "string", "pattern": NAIVE_PATTERN},
        {"type": "number", "minimum": EPOCH_S_MIN, "maximum": EPOCH_S_MAX},
    ]
}
INSTANT_RULE = (
    "an RFC 3339 date-time with an offset (2024-05-01T12:00:00Z), an ISO 8601 date-time without one (read as UTC),"
    " a date (2024-05-01, midnight UTC) or Unix epoch seconds"
)


def instant(value: Any) -> Any:
    """A query's text as an aware UTC datetime, taken exactly as INSTANT_SCHEMA describes it
    (RFC 3339 as JSON Schema validators read it). An instant that datetime cannot hold (year 0,
    or an offset that crosses year 1 or 9999) is clamped, as a bound of a query means the same."""
    if not isinstance(value, str):
        return value
    if _JSON_NUMBER.fullmatch(value):
        seconds = float(value)
        if not EPOCH_S_MIN <= seconds <= EPOCH_S_MAX:
            raise ValueError(f"epoch seconds must be within {EPOCH_S_MIN}..{EPOCH_S_MAX} (years 1 to 9999)")
        return _EPOCH + timedelta(seconds=seconds)
    match = _DATE_TIME.fullmatch(value) or _NAIVE.fullmatch(value) or _DATE_ONLY.fullmatch(value)
    if match is None:
        raise ValueError(f"give {INSTANT_RULE}")
    return _utc(match.groupdict())


def date_time(value: Any) -> Any:
    """A JSON string as an aware UTC datetime: an RFC 3339 date-time (the offset required), as
    JSON Schema's "date-time" format reads it; epoch numbers and dates are refused."""
    if isinstance(value, datetime):
        return value
    match = _DATE_TIME.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError("give an RFC 3339 date-time with an offset, e.g. 2030-05-01T12:00:00Z")
    return _utc(match.groupdict())


def _utc(parts: dict[str, str | None]) -> datetime:
    year, second = int(parts["year"]), int(parts.get("second") or 0)
    # Year 0 (valid RFC 3339, before datetime's range) is a leap year like 2000, checked there.
    local = datetime(
        year or 2000, int(parts["month"]), int(parts["day"]), int(parts.get("hour") or 0), int(parts.get("minute") or 0),
        59 if second == 60 else second, int((parts.get("fraction") or "0")[:6].ljust(6, "0")),
    )
    if year == 0:
        return _UTC_MIN
    offset = timedelta(hours=int(parts.get("offset_h") or 0), minutes=int(parts.get("offset_m") or 0))
    try:
        moment = local - (-offset if parts.get("sign") == "-" else offset)
    except OverflowError:
        return _UTC_MIN if parts.get("sign") == "+" else _UTC_MAX
    if second == 60:
        # A leap second is 23:59:60 UTC, the instant after 23:59:59.
        if (moment.hour, moment.minute) != (23, 59):
            raise ValueError("second 60 is a leap second: only at 23:59:60 UTC")
        return _UTC_MAX if moment.date() == _UTC_MAX.date() else (moment + timedelta(seconds=1)).replace(tzinfo=timezone.utc)
    return moment.replace(tzinfo=timezone.utc)


Instant = Annotated[datetime, BeforeValidator(instant), WithJsonSchema(INSTANT_SCHEMA)]
DateTime = Annotated[AwareDatetime, BeforeValidator(date_time), WithJsonSchema({"type": "string", "format": "date-time"})]


# -- bodies ------------------------------------------------------------------------------------


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InvokeBody(Body):
    text: StrictStr = Field(..., min_length=1, description="The request text (1 to limits.max_text_chars characters).")
    options: dict[str, Any] = Field(default_factory=dict, description="Agent-specific options.")
    session_id: StrictStr | None = Field(None, min_length=1, max_length=128, description="Conversation key for follow-ups and sticky versions.")
    user_id: StrictStr | None = Field(None, min_length=1, max_length=128, description="Caller's user; sticky version key when no session.")
    metadata: dict[str, Scalar] = Field(
        default_factory=dict, max_length=32, description="Scalar fields that routing rules match and the audit record keeps."
    )
    stream: StrictBool = Field(False, description="Answer with Server-Sent Events: text chunks, then the whole result.")


class RouteBody(InvokeBody):
    agent: StrictStr | None = Field(None, min_length=1, max_length=64, description="Name an agent directly and skip the router.")
    dry_run: StrictBool = Field(False, description="Return the routing decision without invoking the agent.")


class TrafficBody(Body):
    weights: dict[str, JsonInt] = Field(..., min_length=1, description="Version -> percent; non-negative, summing to 100.")
    sticky: StrictBool | None = Field(None, description="Pin session/user keys to one version; unchanged if omitted.")


class KeyRateLimit(Body):
    requests_per_s: StrictFloat = Field(..., gt=0, le=100_000, description="Sustained requests per second for this key.")
    burst: JsonInt = Field(..., ge=1, le=100_000, description="Requests this key may make at once.")


class KeyBody(Body):
    role: Literal["invoke", "review", "admin"] = Field(..., description="What the key may do: invoke agents, review answers, or everything.")
    name: StrictStr = Field(..., min_length=1, max_length=64, description="Who or what the key is for.")
    rate_limit: KeyRateLimit | None = Field(None, description="This key's own rate limit; default: auth.rate_limit.")
    expires_at: DateTime | None = Field(None, description="When the key stops working (RFC 3339 date-time with an offset); default: never.")
    agents: list[Annotated[StrictStr, StringConstraints(pattern=NAME_PATTERN)]] | None = Field(
        None, min_length=1, max_length=256, description="The only agents this key may use (routed to or named); default: all."
    )
    pipelines: list[Annotated[StrictStr, StringConstraints(pattern=NAME_PATTERN)]] | None = Field(
        None, min_length=1, max_length=256, description="The only pipelines this key may run; default: all."
    )

    @field_validator("expires_at")
    @classmethod
    def _in_the_future(cls, value: datetime | None) -> datetime | None:
        if value is not None and value <= datetime.now(timezone.utc):
            raise ValueError("must be in the future")
        return value


class ChatMessage(BaseModel):
    # OpenAI clients send fields baton does not use (name, tool_call_id...): accept and ignore them.
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"] = Field(..., description="Who said it.")
    content: StrictStr | list[dict[str, Any]] | None = Field(None, description="The text, or a list of typed parts.")


class ChatBody(BaseModel):
    # The OpenAI protocol has many optional fields; the unused ones are accepted and ignored.
    model_config = ConfigDict(extra="allow")

    model: StrictStr = Field(..., min_length=1, max_length=64, description="An agent or pipeline name (see GET /v1/models).")
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=256, description="The conversation, oldest first.")
    stream: StrictBool = Field(False, description="Answer with chat.completion.chunk events and data: [DONE].")
    # The bounds sit inside the Annotated: on the optional field, pydantic would write them into
    # the JSON Schema as "ge"/"le", which no validator or generator reads.
    max_tokens: Annotated[StrictInt, Field(ge=1, le=32_768), BeforeValidator(_integral)] | None = Field(
        None, description="Most tokens to generate (LLM agents)."
    )
    temperature: StrictFloat | None = Field(None, ge=0, le=2, description="Sampling temperature (LLM agents).")
    user: StrictStr | None = Field(None, max_length=128, description="The caller's user id.")


class DocumentFields(Body):
    """A document request's fields besides the document itself (multipart parts, or JSON keys)."""

    filename: StrictStr | None = Field(None, min_length=1, max_length=255, description="The document's file name, kept with its record.")
    options: dict[str, Any] = Field(default_factory=dict, description="Agent-specific options (documents: engine, pages, page_types).")
    session_id: StrictStr | None = Field(None, min_length=1, max_length=128, description="Conversation key; sticky version key.")
    user_id: StrictStr | None = Field(None, min_length=1, max_length=128, description="Caller's user; sticky version key when no session.")
    metadata: dict[str, Scalar] = Field(default_factory=dict, max_length=32, description="Scalar fields the audit record keeps.")


class ExtractFields(DocumentFields):
    query: dict[str, Any] | Literal["*"] = Field(
        "*", description="Fields wanted: a schema by example ({\"total\": 0.0, \"date\": \"date\"}), a JSON Schema, or '*' for every pair found."
    )
    mode: Literal["fields", "text", "table"] = Field("fields", description="fields: validated JSON; text: OCR lines with boxes; table: tables.")


class DocumentB64(BaseModel):
    document_b64: StrictStr = Field(
        ..., min_length=1, pattern=BASE64_PATTERN, json_schema_extra={"contentEncoding": "base64"},
        description="The document's bytes in base64 (RFC 4648, padded): a PNG, JPEG, TIFF or PDF file (415 for any other type).",
    )


class ExtractBody(ExtractFields, DocumentB64):
    """POST /v1/extract as JSON."""


class DocumentBody(DocumentFields, DocumentB64):
    """POST /v1/agents/{name}/invoke or /v1/pipelines/{name} with a document, as JSON."""
