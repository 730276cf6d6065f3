"""Request bodies of the HTTP API (API.md): strict pydantic models whose constraints and
descriptions are what the served OpenAPI document shows."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    field_validator,
)

from cluster.config import NAME_PATTERN

Scalar = StrictStr | StrictInt | StrictFloat | StrictBool


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
    weights: dict[str, StrictInt] = Field(..., min_length=1, description="Version -> percent; non-negative, summing to 100.")
    sticky: StrictBool | None = Field(None, description="Pin session/user keys to one version; unchanged if omitted.")


class KeyRateLimit(Body):
    requests_per_s: float = Field(..., gt=0, le=100_000, description="Sustained requests per second for this key.")
    burst: int = Field(..., ge=1, le=100_000, description="Requests this key may make at once.")


class KeyBody(Body):
    role: Literal["invoke", "review", "admin"] = Field(..., description="What the key may do: invoke agents, review answers, or everything.")
    name: StrictStr = Field(..., min_length=1, max_length=64, description="Who or what the key is for.")
    rate_limit: KeyRateLimit | None = Field(None, description="This key's own rate limit; default: auth.rate_limit.")
    expires_at: AwareDatetime | None = Field(None, description="When the key stops working (ISO 8601 with a zone); default: never.")
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
    max_tokens: StrictInt | None = Field(None, ge=1, le=32_768, description="Most tokens to generate (LLM agents).")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature (LLM agents).")
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
    document_b64: StrictStr = Field(..., min_length=1, description="The document's bytes in base64 (PNG, JPEG, TIFF or PDF).")


class ExtractBody(ExtractFields, DocumentB64):
    """POST /v1/extract as JSON."""


class DocumentBody(DocumentFields, DocumentB64):
    """POST /v1/agents/{name}/invoke or /v1/pipelines/{name} with a document, as JSON."""
