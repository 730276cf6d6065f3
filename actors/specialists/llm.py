"""The ``llm`` specialist: a chat model on Amazon Bedrock, an OpenAI-compatible server or in-process
transformers; it streams Chunks of text and ends with a Result that carries the token usage."""

from __future__ import annotations

import base64
import binascii
import time
from typing import Annotated, Any, ClassVar, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from actors.invocation import Invocation, Result, StreamItem, content_text, drain
from actors.llm.chat import IMAGE_MEDIA_TYPES, ChatRequest, Finish, ImagePart, Provider, with_retries
from actors.specialists.base import Specialist
from cluster.errors import PayloadTooLarge, ValidationFailed
from cluster.registry import REF_SCHEME

MAX_TOKENS_LIMIT = 32_768
ROLES = ("system", "user", "assistant")
MAX_IMAGES, MAX_IMAGE_BYTES = 4, 10 * 1024 * 1024
# The first bytes of each image format: a part whose bytes are not what its media type says is refused
# here, naming the field, rather than by the provider in its own words.
IMAGE_SIGNATURES = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}
# The fields that only one provider reads; setting one for another provider is a config mistake.
PROVIDER_FIELDS = {
    "region": "bedrock",
    "guardrail_id": "bedrock",
    "guardrail_version": "bedrock",
    "base_url": "openai",
    "api_key_env": "openai",
    "device": "local",
    "torch_threads": "local",
}


class LlmParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: Literal["bedrock", "openai", "local"] = Field(
        ..., description="Where the model runs: Amazon Bedrock, an OpenAI-compatible server, or in-process transformers."
    )
    model: str = Field(
        ..., min_length=1, max_length=2048,
        description="Bedrock model id or inference profile; the server's model name; for local, a model directory or registry://name:version.",
    )
    storage: str | None = Field(None, description="Storage URI of the registry (local registry:// models); set by the deployment builder.")
    system_prompt: str | None = Field(None, max_length=100_000, description="System text put before every conversation.")
    max_tokens: int = Field(512, ge=1, le=MAX_TOKENS_LIMIT, description="Tokens generated at most when a request does not say.")
    temperature: float | None = Field(
        None, ge=0, le=2, description="Sampling temperature when a request does not say; 0 is greedy; None leaves it to the model."
    )
    timeout_s: float = Field(
        60.0, gt=0, le=600, description="Seconds one call may take in all, retries included; a request's own deadline can cut it shorter."
    )
    max_retries: int = Field(2, ge=0, le=10, description="Retries after throttling or a transient failure, within the time limit.")
    backoff_s: float = Field(0.5, ge=0, le=30, description="First wait before a retry; doubles each retry (a server's Retry-After wins).")
    region: str | None = Field(
        None, pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]$", description="bedrock: AWS region, e.g. us-east-1; None takes the AWS default chain."
    )
    guardrail_id: str | None = Field(None, min_length=1, max_length=2048, description="bedrock: guardrail id or ARN applied to every call.")
    guardrail_version: str | None = Field(
        None, pattern=r"^(DRAFT|[1-9][0-9]{0,7})$", description="bedrock: version of the guardrail, a number or DRAFT."
    )
    base_url: str | None = Field(
        None, pattern=r"^https?://\S+$", description="openai: the API root, ending like the OpenAI one in /v1 (chat/completions is added)."
    )
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="openai: name of the environment variable holding the API key; unset or None sends no key (local servers).",
    )
    device: Literal["cpu", "cuda", "auto"] = Field("auto", description="local: where the model runs; auto takes CUDA when present.")
    torch_threads: int | None = Field(None, ge=1, le=256, description="local: torch CPU threads; None keeps torch's default.")
    max_images: int = Field(
        MAX_IMAGES, ge=0, le=20,
        description="Images (image_url parts with data: URLs) the last user message may carry; 0 refuses images; local models drop them.",
    )
    max_image_bytes: int = Field(
        MAX_IMAGE_BYTES, ge=1, le=100 * 1024 * 1024, description="Decoded bytes of those images in all (413 above)."
    )

    @model_validator(mode="after")
    def _fits_provider(self) -> LlmParams:
        misplaced = sorted(name for name in self.model_fields_set if PROVIDER_FIELDS.get(name, self.provider) != self.provider)
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)}: not a setting of provider {self.provider!r}")
        if self.provider == "openai" and self.base_url is None:
            raise ValueError("base_url: provider 'openai' needs the server's URL, e.g. http://127.0.0.1:8080/v1")
        if (self.guardrail_id is None) != (self.guardrail_version is None):
            raise ValueError("guardrail_id and guardrail_version: give both or neither")
        if self.model.startswith(REF_SCHEME) and self.provider != "local":
            raise ValueError(f"model: registry references are served by provider 'local', not {self.provider!r}")
        return self


StopSequence = Annotated[str, Field(min_length=1, max_length=100)]


class LlmOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT, description="Tokens generated at most (default: params.max_tokens).")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature; 0 is greedy (default: params.temperature).")
    stop: list[StopSequence] | None = Field(None, max_length=4, description="Up to 4 texts that end the answer; they are not part of it.")


def conversation(
    invocation: Invocation, system_prompt: str | None, max_images: int = MAX_IMAGES, max_image_bytes: int = MAX_IMAGE_BYTES
) -> tuple[str | None, tuple[dict, ...], tuple[ImagePart, ...]]:
    """(system text, user/assistant turns, images) of an invocation: the earlier turns of its session,
    then its chat messages or its text as one user message. System messages join the system text.

    The images are the image_url parts of the last user message of ``messages``; they go with that
    turn. Image parts anywhere else (earlier messages, the session's history) are ignored: the model
    is asked about the picture just sent, and stored turns keep text only."""
    if invocation.document is not None:
        raise ValidationFailed("an llm agent reads text or chat messages, not documents")
    latest = invocation.messages if invocation.messages is not None else ({"role": "user", "content": invocation.text},)
    last_user = max((index for index, message in enumerate(latest) if isinstance(message, dict) and message.get("role") == "user"), default=None)
    images = () if last_user is None else message_images(latest[last_user], last_user, max_images, max_image_bytes)
    systems = [system_prompt] if system_prompt else []
    turns = []
    for source, messages in (("history", invocation.history), ("messages", latest)):
        for index, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if role not in ROLES:
                raise ValidationFailed(f"{source}[{index}].role: must be one of {', '.join(ROLES)}, got {role!r}")
            text = content_text(message.get("content"))
            # An empty turn (a stored answer cut to nothing) says nothing, and Bedrock rejects blank text;
            # a user message of images alone still asks something.
            if not text.strip():
                if not (images and source == "messages" and index == last_user):
                    continue
                text = ""
            if role == "system":
                systems.append(text)
            else:
                turns.append({"role": role, "content": text})
    if not turns:
        raise ValidationFailed("messages: needs at least one user or assistant message with text or images")
    return "\n\n".join(systems) or None, tuple(turns), images


def message_images(message: dict, index: int, max_images: int, max_image_bytes: int) -> tuple[ImagePart, ...]:
    """The images of one chat message's OpenAI image_url parts, decoded; counted before any is decoded."""
    content = message.get("content")
    content = content if isinstance(content, list) else []
    parts = [(number, part) for number, part in enumerate(content) if isinstance(part, dict) and part.get("type") == "image_url"]
    if len(parts) > max_images:
        raise ValidationFailed(f"messages[{index}].content: {len(parts)} images; this agent takes at most {max_images} (params.max_images)")
    images, size = [], 0
    for number, part in parts:
        image = decode_data_url(part.get("image_url"), f"messages[{index}].content[{number}].image_url.url")
        size += len(image.data)
        if size > max_image_bytes:
            raise PayloadTooLarge(f"messages[{index}].content: images over {max_image_bytes} bytes decoded in all (params.max_image_bytes)")
        images.append(image)
    return tuple(images)


def decode_data_url(image_url: Any, field: str) -> ImagePart:
    """An image from ``{"url": "data:<media type>;base64,<data>"}``. Only inline data is taken:
    fetching a URL on a caller's behalf would let callers make baton's replicas reach any host."""
    url = image_url.get("url") if isinstance(image_url, dict) else None
    if not isinstance(url, str) or not url.startswith("data:"):
        raise ValidationFailed(f"{field}: only data: URLs; baton fetches nothing")
    header, comma, payload = url.removeprefix("data:").partition(",")
    media_type, *attributes = (piece.strip().lower() for piece in header.split(";"))
    if not comma or "base64" not in attributes:
        raise ValidationFailed(f"{field}: must be a base64 data: URL (data:image/png;base64,...)")
    if media_type not in IMAGE_MEDIA_TYPES:
        raise ValidationFailed(f"{field}: media type {media_type!r} is not one of {', '.join(IMAGE_MEDIA_TYPES)}")
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error:
        raise ValidationFailed(f"{field}: the data is not valid base64") from None
    if not data.startswith(IMAGE_SIGNATURES[media_type]) or (media_type == "image/webp" and data[8:12] != b"WEBP"):
        raise ValidationFailed(f"{field}: the data is not a {media_type.removeprefix('image/').upper()} image")
    return ImagePart(data, media_type)


def open_provider(params: LlmParams) -> Provider:
    """The provider the params name, ready to call. Imports are local so that an agent loads only its own client."""
    if params.provider == "bedrock":
        from actors.llm.bedrock import BedrockProvider

        guardrail = (params.guardrail_id, params.guardrail_version) if params.guardrail_id else None
        return BedrockProvider(params.model, params.region, guardrail, params.timeout_s)
    if params.provider == "openai":
        from actors.llm.openai_compatible import OpenAICompatibleProvider

        return OpenAICompatibleProvider(params.model, params.base_url, params.api_key_env)
    from actors.llm.local import LocalProvider, model_directory

    return LocalProvider(model_directory(params.model, params.storage), params.device, params.torch_threads)


class LlmSpecialist(Specialist):
    kind: ClassVar[str] = "llm"
    Params: ClassVar[type[BaseModel]] = LlmParams
    Options: ClassVar[type[BaseModel]] = LlmOptions
    batchable: ClassVar[bool] = False
    streams: ClassVar[bool] = True

    def _model_name(self) -> str:
        return self.params.model

    def _extras(self) -> dict:
        return {"provider": self.params.provider}

    def _load(self) -> None:
        self.provider = open_provider(self.params)

    def stream(self, invocation: Invocation) -> Iterator[StreamItem]:
        """Chunks of text as the model writes them, then the Result. Without ``invocation.stream``,
        Bedrock and OpenAI servers are asked for the whole answer, which comes as one Chunk."""
        invocation.check_deadline()
        request = self._request(invocation, self.validate_options(invocation.options))
        self.load()
        yield from self._generate(request, invocation.stream)

    def _predict(self, texts: list[str], options: list[Any]) -> list[dict]:
        outputs = []
        for text, option in zip(texts, options):
            # Each text gets its own time budget, counted from when its turn comes.
            request = self._request(Invocation(text=text), option)
            outputs.append(drain(self._generate(request, stream=False)).output)
        return outputs

    def _request(self, invocation: Invocation, options: LlmOptions) -> ChatRequest:
        system, turns, images = conversation(invocation, self.params.system_prompt, self.params.max_images, self.params.max_image_bytes)
        remaining = invocation.remaining_s()
        budget = self.params.timeout_s if remaining is None else min(remaining, self.params.timeout_s)
        return ChatRequest(
            system=system,
            turns=turns,
            max_tokens=options.max_tokens or self.params.max_tokens,
            temperature=self.params.temperature if options.temperature is None else options.temperature,
            stop=tuple(options.stop or ()),
            deadline=time.monotonic() + budget,
            images=images,
        )

    def _generate(self, request: ChatRequest, stream: bool) -> Iterator[StreamItem]:
        """Retries apply until the provider has started; once text is out, a failure propagates."""
        events = with_retries(lambda: self.provider.start(request, stream), self.params.max_retries, self.params.backoff_s, request.deadline)
        texts: list[str] = []
        for event in events:
            if isinstance(event, Finish):
                yield self._result("".join(texts), event)
            elif event.text:
                texts.append(event.text)
                yield event

    def _result(self, text: str, finish: Finish) -> Result:
        usage = {"input_tokens": finish.input_tokens, "output_tokens": finish.output_tokens}
        output = {"text": text, "model": self.params.model, "provider": self.params.provider, "usage": usage, "stop_reason": finish.stop_reason}
        return Result(output=output, usage=usage)
