"""Any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama...) over httpx: POST
``{base_url}/chat/completions``, streamed as server-sent ``data:`` lines up to ``data: [DONE]``."""

from __future__ import annotations

import base64
import json
import os
from typing import Any, Iterator

import httpx

from actors.invocation import Chunk
from actors.llm.chat import (
    CONFIG_RETRY_AFTER_S,
    CONTENT_FILTERED,
    CONTEXT_TOO_LONG,
    END_TURN,
    MAX_TOKENS,
    ChatRequest,
    Event,
    Finish,
    ImagePart,
    Transient,
    approximate_tokens,
    parse_retry_after,
)
from cluster.errors import PayloadTooLarge, RateLimited, Unavailable, UnsupportedMediaType, ValidationFailed

STOP_REASONS = {"stop": END_TURN, "length": MAX_TOKENS, "content_filter": CONTENT_FILTERED}


class OpenAICompatibleProvider:
    name = "openai"
    # Sent as image_url parts; a server whose model reads no images answers 400 (ValidationFailed).
    takes_images = True

    def __init__(self, model: str, base_url: str, api_key_env: str | None):
        self.model = model
        self.base_url = base_url.rstrip("/")
        api_key = os.environ.get(api_key_env) if api_key_env else None
        # Named but unset is allowed (a local server needs no key); a 401 then says why.
        self._key_note = f" (environment variable {api_key_env} is not set)" if api_key_env and not api_key else ""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.base_url + "/", headers=headers)

    def start(self, request: ChatRequest, stream: bool) -> Iterator[Event]:
        timeout = httpx.Timeout(request.remaining_s(), connect=min(request.remaining_s(), 10.0))
        post = self.client.build_request("POST", "chat/completions", json=self._body(request, stream), timeout=timeout)
        try:
            response = self.client.send(post, stream=stream)
        except httpx.TransportError as error:
            raise Transient(Unavailable(f"{self.base_url} unreachable: {error!r}", retry_after_s=1)) from None
        if response.status_code >= 400:
            response.read()
            response.close()
            raise self._http_error(response)
        return self._sse_events(response, request) if stream else iter(self._whole(response, request))

    def _body(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        system = [{"role": "system", "content": request.system}] if request.system else []
        messages = with_images([*system, *request.turns], request.images)
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": request.max_tokens, "stream": stream}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop"] = list(request.stop)
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _whole(self, response: httpx.Response, request: ChatRequest) -> list[Event]:
        try:
            answer = response.json()
            choice = answer["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, LookupError, TypeError, AttributeError):
            raise Unavailable(f"{self.base_url} answered outside the OpenAI chat shape: {response.text[:200]!r}", retry_after_s=1) from None
        return [Chunk(text), _finish(choice.get("finish_reason"), answer.get("usage"), request, text)]

    def _sse_events(self, response: httpx.Response, request: ChatRequest) -> Iterator[Event]:
        """One Chunk per content delta; the last data line before [DONE] carries the usage."""
        texts: list[str] = []
        finish_reason, usage = None, None
        try:
            for line in response.iter_lines():
                request.check_deadline()
                if not line.startswith("data:"):
                    continue
                payload = line.removeprefix("data:").strip()
                if payload == "[DONE]":
                    break
                event = self._parse_event(payload)
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        texts.append(text)
                        yield Chunk(text)
                    finish_reason = choice.get("finish_reason") or finish_reason
        except httpx.TransportError as error:
            raise Unavailable(f"{self.base_url} broke off the stream: {error!r}", retry_after_s=1) from None
        finally:
            response.close()
        yield _finish(finish_reason, usage, request, "".join(texts))

    def _parse_event(self, payload: str) -> dict:
        try:
            event = json.loads(payload)
        except ValueError:
            raise Unavailable(f"{self.base_url} sent a stream event that is not JSON: {payload[:200]!r}", retry_after_s=1) from None
        if not isinstance(event, dict):
            raise Unavailable(f"{self.base_url} sent a stream event that is not an object: {payload[:200]!r}", retry_after_s=1)
        if "error" in event:
            raise Unavailable(f"{self.base_url} failed mid-stream: {_error_text(event['error'])}", retry_after_s=1)
        return event

    def _http_error(self, response: httpx.Response) -> Exception:
        status = response.status_code
        message = _error_text(_json_or_text(response))
        wait = parse_retry_after(response.headers.get("retry-after"))
        described = f"{self.base_url} answered {status}: {message}"
        if status == 429:
            return Transient(RateLimited(described, retry_after_s=wait or 1), wait)
        if status == 408 or status >= 500:
            return Transient(Unavailable(described, retry_after_s=wait or 1), wait)
        if status in (401, 403):
            return Unavailable(f"{self.base_url} refused the agent's API key ({status}): {message}{self._key_note}", retry_after_s=CONFIG_RETRY_AFTER_S)
        if status == 413 or CONTEXT_TOO_LONG.search(message):
            return PayloadTooLarge(described)
        if status == 415:
            return UnsupportedMediaType(described)
        if status in (400, 422):
            return ValidationFailed(described)
        return Unavailable(described, retry_after_s=CONFIG_RETRY_AFTER_S)


def with_images(messages: list[dict], images: tuple[ImagePart, ...]) -> list[dict]:
    """The messages with the last user one's content as OpenAI parts, its text then the images as
    data: URLs. A copy: ``request.turns`` stay strings, which the token estimate of ``_finish`` reads."""
    if not images:
        return messages
    last = max(index for index, message in enumerate(messages) if message["role"] == "user")
    text = messages[last]["content"]
    parts = [{"type": "text", "text": text}] if text else []
    parts += [{"type": "image_url", "image_url": {"url": data_url(image)}} for image in images]
    return [*messages[:last], {"role": "user", "content": parts}, *messages[last + 1 :]]


def data_url(image: ImagePart) -> str:
    return f"data:{image.media_type};base64,{base64.b64encode(image.data).decode('ascii')}"


def _finish(finish_reason: str | None, usage: dict | None, request: ChatRequest, text: str) -> Finish:
    stop_reason = STOP_REASONS.get(finish_reason, finish_reason or END_TURN)
    if usage and "prompt_tokens" in usage and "completion_tokens" in usage:
        return Finish(stop_reason, usage["prompt_tokens"], usage["completion_tokens"])
    # Some servers ignore stream_options.include_usage; an estimate beats no usage for monitoring.
    prompt = "".join(turn["content"] for turn in request.turns) + (request.system or "")
    return Finish(stop_reason, approximate_tokens(prompt), approximate_tokens(text))


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:300]


def _error_text(error: Any) -> str:
    """The message of an OpenAI error body ({"error": {"message", "code"}}), or the body as text."""
    if isinstance(error, dict) and "error" in error:
        error = error["error"]
    if isinstance(error, dict):
        return " ".join(str(error[key]) for key in ("message", "code") if error.get(key))
    return str(error)
