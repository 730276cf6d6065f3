"""Amazon Bedrock through boto3's Converse API: ``converse`` for a unary call, ``converse_stream``
for a streamed one; AWS errors become baton's typed errors."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, NoRegionError, ParamValidationError
from botocore.exceptions import ConnectionError as BotoConnectionError

from actors.invocation import Chunk
from actors.llm.chat import (
    CONFIG_RETRY_AFTER_S,
    CONTEXT_TOO_LONG,
    END_TURN,
    ChatRequest,
    Event,
    Finish,
    ImagePart,
    Transient,
    final_error,
    parse_retry_after,
)
from cluster.errors import ConfigError, PayloadTooLarge, RateLimited, Unavailable, ValidationFailed

THROTTLED = {"ThrottlingException", "TooManyRequestsException", "ServiceQuotaExceededException"}
TRANSIENT = {
    "ServiceUnavailableException",
    "InternalServerException",
    "ModelNotReadyException",
    "ModelTimeoutException",
    "ModelStreamErrorException",
}
DENIED = {
    "AccessDeniedException",
    "UnrecognizedClientException",
    "ExpiredTokenException",
    "InvalidSignatureException",
    "IncompleteSignature",
    "MissingAuthenticationToken",
}


class BedrockProvider:
    name = "bedrock"
    # As Converse image blocks; a model that reads no images answers ValidationException (ValidationFailed).
    takes_images = True

    def __init__(self, model: str, region: str | None, guardrail: tuple[str, str] | None, timeout_s: float):
        self.model = model
        self.guardrail = guardrail
        config = Config(
            connect_timeout=min(timeout_s, 10.0),
            read_timeout=timeout_s,
            # baton retries within the request's deadline; botocore's own retries would not know it.
            retries={"total_max_attempts": 1, "mode": "standard"},
        )
        try:
            # A session of its own: boto3's default one caches the credentials it found first, for every client.
            self.client = boto3.session.Session().client("bedrock-runtime", region_name=region, config=config)
        except NoRegionError:
            raise ConfigError("bedrock: no AWS region; set params.region or AWS_REGION") from None

    def start(self, request: ChatRequest, stream: bool) -> Iterator[Event]:
        try:
            if stream:
                return self._events(self.client.converse_stream(**self._body(request))["stream"], request)
            return iter(self._whole(self.client.converse(**self._body(request))))
        except (BotoCoreError, ClientError) as error:
            raise aws_error(error) from None

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        inference: dict[str, Any] = {"maxTokens": request.max_tokens}
        if request.temperature is not None:
            inference["temperature"] = request.temperature
        if request.stop:
            inference["stopSequences"] = list(request.stop)
        body = {"modelId": self.model, "messages": with_images(alternating(request.turns), request.images), "inferenceConfig": inference}
        if request.system:
            body["system"] = [{"text": request.system}]
        if self.guardrail:
            body["guardrailConfig"] = {"guardrailIdentifier": self.guardrail[0], "guardrailVersion": self.guardrail[1]}
        return body

    @staticmethod
    def _whole(response: dict) -> list[Event]:
        text = "".join(block.get("text", "") for block in response["output"]["message"]["content"])
        usage = response.get("usage") or {}
        return [Chunk(text), Finish(response.get("stopReason", END_TURN), usage.get("inputTokens", 0), usage.get("outputTokens", 0))]

    @staticmethod
    def _events(stream: Any, request: ChatRequest) -> Iterator[Event]:
        """Text deltas as Chunks; the stop reason and usage arrive in later events (messageStop, metadata)."""
        stop_reason, usage = END_TURN, {}
        try:
            for event in stream:
                request.check_deadline()
                if "contentBlockDelta" in event:
                    text = event["contentBlockDelta"]["delta"].get("text")
                    if text:
                        yield Chunk(text)
                elif "messageStop" in event:
                    stop_reason = event["messageStop"].get("stopReason", END_TURN)
                elif "metadata" in event:
                    usage = event["metadata"].get("usage") or {}
        except (BotoCoreError, ClientError) as error:
            raise final_error(aws_error(error)) from None
        finally:
            stream.close()
        yield Finish(stop_reason, usage.get("inputTokens", 0), usage.get("outputTokens", 0))


def alternating(turns: Iterable[dict]) -> list[dict]:
    """Converse messages; consecutive turns of one role are joined, since Converse wants them to alternate."""
    messages: list[dict] = []
    for turn in turns:
        if messages and messages[-1]["role"] == turn["role"]:
            block = messages[-1]["content"][0]
            # A turn of images alone has no text to join.
            block["text"] = "\n\n".join(text for text in (block["text"], turn["content"]) if text)
        else:
            messages.append({"role": turn["role"], "content": [{"text": turn["content"]}]})
    return messages


def with_images(messages: list[dict], images: tuple[ImagePart, ...]) -> list[dict]:
    """The Converse messages with image blocks after the last user message's text; that text block
    goes when it is empty (a message of images alone), since Converse rejects blank text."""
    if not images:
        return messages
    last = next(message for message in reversed(messages) if message["role"] == "user")
    blocks = [{"image": {"format": image.media_type.removeprefix("image/"), "source": {"bytes": image.data}}} for image in images]
    last["content"] = [block for block in last["content"] if block["text"]] + blocks
    return messages


def aws_error(error: Exception) -> Exception:
    """The typed error (or ``Transient`` wrapping one) for a boto3 failure."""
    if isinstance(error, ClientError):
        return _service_error(error.response)
    if isinstance(error, (BotoConnectionError, HTTPClientError)):
        return Transient(Unavailable(f"bedrock unreachable: {error}", retry_after_s=1))
    if isinstance(error, ParamValidationError):
        return ValidationFailed(f"bedrock rejected the request: {error}")
    # What is left are credential, token and configuration failures of the AWS chain.
    return Unavailable(f"bedrock: {type(error).__name__}: {error}", retry_after_s=CONFIG_RETRY_AFTER_S)


def _service_error(response: dict) -> Exception:
    details = response.get("Error") or {}
    # Exceptions inside an event stream are named in lowerCamelCase (throttlingException).
    code = details.get("Code", "")
    code = code[:1].upper() + code[1:]
    message = details.get("Message", "")
    metadata = response.get("ResponseMetadata") or {}
    status = metadata.get("HTTPStatusCode") or 0
    wait = parse_retry_after((metadata.get("HTTPHeaders") or {}).get("retry-after"))
    described = f"bedrock {code or status}: {message}"
    if code in THROTTLED or status == 429:
        return Transient(RateLimited(described, retry_after_s=wait or 1), wait)
    if code in TRANSIENT or status >= 500:
        return Transient(Unavailable(described, retry_after_s=wait or 1), wait)
    if code in DENIED or status in (401, 403):
        return Unavailable(f"bedrock refused the agent's AWS credentials ({code}): {message}", retry_after_s=CONFIG_RETRY_AFTER_S)
    if code == "ValidationException":
        return PayloadTooLarge(described) if CONTEXT_TOO_LONG.search(message) else ValidationFailed(described)
    return Unavailable(described, retry_after_s=CONFIG_RETRY_AFTER_S)
