"""What every LLM provider takes (a ``ChatRequest``) and gives back (``Chunk``s, then one
``Finish``), the stop reasons they share, and the retry loop around one provider attempt."""

from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Callable, Iterator, Protocol, TypeVar, Union

from actors.invocation import Chunk
from cluster.errors import BatonError, Unavailable

# Bedrock's stop reasons, the most telling of the three providers'; the others map onto them so
# that versions of one agent on different providers answer alike.
END_TURN, MAX_TOKENS, STOP_SEQUENCE, CONTENT_FILTERED = "end_turn", "max_tokens", "stop_sequence", "content_filtered"

# How providers word "the input does not fit the model's context" (Bedrock, OpenAI, vLLM).
CONTEXT_TOO_LONG = re.compile(r"too long|context.length|context window|maximum context|too many (input )?tokens", re.IGNORECASE)

# A misconfigured agent (credentials, model name) will not heal in a second; callers should wait longer.
CONFIG_RETRY_AFTER_S = 60.0

T = TypeVar("T")


# The image formats every provider that takes images reads (Converse's four).
IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")


@dataclass(frozen=True)
class ImagePart:
    """An image sent with a user turn: the decoded bytes and their media type (one of ``IMAGE_MEDIA_TYPES``)."""

    data: bytes
    media_type: str


@dataclass(frozen=True)
class ChatRequest:
    """One generation: the system text, the turns ({"role": "user"|"assistant", "content": str}),
    the sampling settings, and the ``time.monotonic()`` by which everything must be done.
    ``images`` go with the last user turn; providers without ``takes_images`` drop them."""

    system: str | None
    turns: tuple[dict, ...]
    max_tokens: int
    temperature: float | None
    stop: tuple[str, ...]
    deadline: float
    images: tuple[ImagePart, ...] = ()

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def check_deadline(self) -> None:
        if self.remaining_s() <= 0:
            raise Unavailable("the LLM call ran out of time (the request's deadline or params.timeout_s)", retry_after_s=1)


@dataclass(frozen=True)
class Finish:
    """The end of a generation: why it stopped and the tokens it counted."""

    stop_reason: str
    input_tokens: int
    output_tokens: int


Event = Union[Chunk, Finish]


class Provider(Protocol):
    """One model behind one API. ``start`` makes one attempt: it raises ``Transient`` or a
    BatonError before anything is generated, else returns the events, which raise BatonErrors only.
    ``takes_images`` says whether the model sees ``request.images``; a text-only one drops them."""

    name: str
    takes_images: bool

    def start(self, request: ChatRequest, stream: bool) -> Iterator[Event]: ...


class Transient(Exception):
    """A provider failure worth another attempt; ``error`` is what the caller gets when none is left.
    ``wait_s`` is the server's own Retry-After, when it sent one."""

    def __init__(self, error: BatonError, wait_s: float | None = None):
        super().__init__(error, wait_s)
        self.error = error
        self.wait_s = wait_s


def final_error(failure: Exception) -> BatonError:
    """The typed error of a failure that can no longer be retried (once text has gone out)."""
    return failure.error if isinstance(failure, Transient) else failure


def with_retries(attempt: Callable[[], T], max_retries: int, backoff_s: float, deadline: float, sleep=time.sleep) -> T:
    """``attempt()``, again after exponential backoff (or the server's Retry-After) while it fails
    transiently, retries are left, and the wait ends before ``deadline`` (a ``time.monotonic()``)."""
    retry = 0
    while True:
        try:
            return attempt()
        except Transient as failure:
            # Jitter spreads out the retries of replicas that were throttled together.
            wait = failure.wait_s if failure.wait_s is not None else backoff_s * 2**retry * random.uniform(0.5, 1.0)
            if retry >= max_retries or time.monotonic() + wait >= deadline:
                raise failure.error from None
            sleep(wait)
            retry += 1


def approximate_tokens(text: str) -> int:
    """A token count for servers that report none: about four characters a token for English BPE
    vocabularies; good enough for usage monitoring, not for billing."""
    return math.ceil(len(text) / 4)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
