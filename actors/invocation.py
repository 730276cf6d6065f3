"""The invocation contract: what every agent call takes (``Invocation``) and gives back
(a stream of ``Chunk``s that ends with one ``Result`` or one ``Failure``).

Plain dataclasses, so they pickle across a Serve handle and test without Ray.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Union

from cluster.errors import BatonError, Unavailable, ValidationFailed


@dataclass(frozen=True)
class Document:
    """A document input: the raw bytes and their media type (``application/pdf``, ``image/png``...)."""

    data: bytes
    media_type: str
    filename: str | None = None


@dataclass(frozen=True)
class Invocation:
    """One call of one agent. Per-call context travels here, never on the agent object.

    Exactly one of ``text``, ``document`` or ``messages`` is the input. ``deadline`` is an
    absolute ``time.time()``; each hop recomputes what remains with :meth:`remaining_s`.
    """

    text: str | None = None
    document: Document | None = None
    messages: tuple[dict, ...] | None = None
    options: dict = field(default_factory=dict)
    session_id: str | None = None
    user_id: str | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    deadline: float | None = None
    metadata: dict = field(default_factory=dict)
    # Earlier turns of this session with this agent, filled in by the caller from the session store.
    history: tuple[dict, ...] = ()
    stream: bool = False

    def __post_init__(self) -> None:
        given = sum(x is not None for x in (self.text, self.document, self.messages))
        if given != 1:
            raise ValueError(f"an Invocation needs exactly one of text, document, messages; got {given}")

    @property
    def sticky_key(self) -> str | None:
        """The key that pins a caller to one version: the session, else the user."""
        return self.session_id or self.user_id

    @property
    def input_text(self) -> str:
        """The text an agent that reads text works on: ``text``, or the last user message."""
        if self.text is not None:
            return self.text
        if self.messages:
            for message in reversed(self.messages):
                if message.get("role") == "user":
                    return content_text(message.get("content"))
            return content_text(self.messages[-1].get("content"))
        raise ValidationFailed("this agent reads text; the request carries a document")

    def remaining_s(self, clock=time.time) -> float | None:
        """Seconds left before the deadline (never negative); None when there is none."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - clock())

    def check_deadline(self, clock=time.time) -> None:
        remaining = self.remaining_s(clock)
        if remaining is not None and remaining <= 0:
            raise Unavailable("the request's deadline passed before the agent could run", retry_after_s=1)

    def derive(self, **changes: Any) -> Invocation:
        """The same call with some fields changed (a pipeline step's input, a team member's options)."""
        if {"text", "document", "messages"} & changes.keys():
            changes = {"text": None, "document": None, "messages": None, **changes}
        return replace(self, **changes)


def content_text(content: Any) -> str:
    """A chat message's content as text (OpenAI allows a list of typed parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


@dataclass(frozen=True)
class Chunk:
    """A piece of a streamed answer (generated text)."""

    text: str


@dataclass
class Result:
    """An agent's whole answer, plus what it declares for monitoring."""

    output: Any
    label: str | None = None
    score: float | None = None
    usage: dict | None = None  # {"input_tokens": n, "output_tokens": n}
    cost: float | None = None
    trace: list[dict] | None = None  # the steps of a supervisor or pipeline
    # The input's position in the model's reference projection (drift detection), if it has one.
    features: tuple[float, ...] | None = None


@dataclass
class Failure:
    """The last item of a stream that failed: the typed error, carried as data."""

    error: BatonError


StreamItem = Union[Chunk, Result, Failure]


def single(result: Result) -> Iterator[StreamItem]:
    """The stream of an agent that does not stream: its Result alone."""
    yield result


def drain(items: Iterable[StreamItem]) -> Result:
    """What a unary caller makes of a stream: the final Result, or the Failure's error raised."""
    final: StreamItem | None = None
    for item in items:
        final = item
    return finish(final)


def finish(final: StreamItem | None) -> Result:
    if isinstance(final, Result):
        return final
    if isinstance(final, Failure):
        raise final.error
    raise Unavailable("the agent's stream ended without a result", retry_after_s=1)
