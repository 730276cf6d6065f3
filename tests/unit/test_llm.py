"""The ``llm`` specialist without Ray: params and options, the chat it builds, and each provider
(Bedrock, an OpenAI-compatible server, local transformers) against a test double."""

from __future__ import annotations

import base64
import pickle
import socket
import threading
import time
from pathlib import Path

import pytest
from botocore.stub import Stubber
from pydantic import ValidationError

from actors.invocation import Chunk, Invocation, Result
from actors.llm.bedrock import BedrockProvider
from actors.llm.chat import ImagePart, Transient, with_retries
from actors.llm.local import LocalProvider, StopSequences
from actors.llm.openai_compatible import OpenAICompatibleProvider
from actors.specialists.llm import LlmSpecialist, conversation
from cluster.errors import PayloadTooLarge, RateLimited, Unavailable, ValidationFailed
from tests.unit.llm_doubles import (
    OpenAIServerDouble,
    build_tiny_gpt2,
    converse_event,
    converse_exception,
    serve_converse_stream,
)

CHAT_TEMPLATE = "{% for m in messages %}{{ m.role }} : {{ m.content }} . {% endfor %}{% if add_generation_prompt %}assistant :{% endif %}"
# The smallest bytes that pass the format checks (the signature); no provider here decodes them.
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 8


def image_part(data: bytes = PNG, media_type: str = "image/png") -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{base64.b64encode(data).decode()}"}}


def user_message(text: str | None, *images: dict) -> dict:
    return {"role": "user", "content": [*([{"type": "text", "text": text}] if text else []), *images]}


def run(specialist: LlmSpecialist, invocation: Invocation) -> tuple[list[str], Result]:
    """The texts of the Chunks and the final Result of one invocation."""
    *chunks, result = specialist.stream(invocation)
    assert all(isinstance(chunk, Chunk) for chunk in chunks) and isinstance(result, Result)
    return [chunk.text for chunk in chunks], result


def assert_pickles(error: Exception) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.message, copy.retry_after_s, copy.status) == (type(error), error.message, error.retry_after_s, error.status)


# --- params, options and the chat --------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"provider": "openai", "model": "m", "base_url": "http://h/v1", "region": "us-east-1"}, "region: not a setting of provider 'openai'"),
        ({"provider": "openai", "model": "m"}, "base_url: provider 'openai' needs"),
        ({"provider": "bedrock", "model": "m", "guardrail_id": "g"}, "give both or neither"),
        ({"provider": "bedrock", "model": "registry://llm:v1"}, "registry references are served by provider 'local'"),
        ({"provider": "local", "model": "/m", "device": "tpu"}, "device"),
        ({"provider": "local", "model": "/m", "max_tokens": 0}, "max_tokens"),
        ({"provider": "local", "model": "/m", "top_p": 0.9}, "top_p"),
        ({"provider": "openai", "model": "m", "base_url": "ftp://h"}, "base_url"),
    ],
)
def test_params_are_checked_per_provider(params: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LlmSpecialist(params)


def test_params_have_descriptions_and_the_class_declares_streaming() -> None:
    assert all(field.description for field in LlmSpecialist.Params.model_fields.values())
    assert LlmSpecialist.streams and not LlmSpecialist.batchable and LlmSpecialist.kind == "llm"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_tokens": 0}, "options.max_tokens"),
        ({"temperature": 3.0}, "options.temperature"),
        ({"temperature": "0.5"}, "options.temperature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "options.stop"),
        ({"top_p": 0.9}, "unknown option; allowed: max_tokens, temperature, stop"),
    ],
)
def test_options_are_bounded_and_name_the_field(options: dict, message: str) -> None:
    specialist = LlmSpecialist({"provider": "local", "model": "/unused"})
    with pytest.raises(ValidationFailed, match=message):
        specialist.validate_options(options)


def test_conversation_is_system_prompt_then_history_then_messages() -> None:
    invocation = Invocation(
        messages=(
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": [{"type": "text", "text": "And "}, {"type": "text", "text": "now?"}]},
        ),
        history=({"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}, {"role": "assistant", "content": "Hello"}),
    )
    system, turns, images = conversation(invocation, "Be brief.")
    assert images == ()
    assert system == "Be brief.\n\nAnswer in French."
    # The empty stored answer is dropped; the rest keeps its order.
    assert turns == ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "And now?"})
    assert conversation(Invocation(text="Hi"), None) == (None, ({"role": "user", "content": "Hi"},), ())


def test_conversation_takes_the_images_of_the_last_user_message_only() -> None:
    invocation = Invocation(
        messages=(
            user_message("Earlier", image_part(JPEG, "image/jpeg")),
            {"role": "assistant", "content": "Seen"},
            user_message("What is this?", image_part(), image_part(JPEG, "image/jpeg")),
        ),
        history=(user_message("Stored", image_part()),),
    )
    _, turns, images = conversation(invocation, None)
    assert images == (ImagePart(PNG, "image/png"), ImagePart(JPEG, "image/jpeg"))
    assert [turn["content"] for turn in turns] == ["Stored", "Earlier", "Seen", "What is this?"]


def test_a_user_message_of_images_alone_is_a_turn() -> None:
    _, turns, images = conversation(Invocation(messages=({"role": "system", "content": "x"}, user_message(None, image_part()))), None)
    assert turns == ({"role": "user", "content": ""},) and images == (ImagePart(PNG, "image/png"),)
    # Without images an empty message still says nothing; an empty earlier one with an image too.
    with pytest.raises(ValidationFailed, match="at least one user or assistant message"):
        conversation(Invocation(messages=(user_message(None, image_part()), {"role": "assistant", "content": ""}, user_message(None))), None)


@pytest.mark.parametrize(
    ("part", "error", "message"),
    [
        (
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ValidationFailed,
            r"messages\[0\]\.content\[1\]\.image_url\.url: only data: URLs; baton fetches nothing",
        ),
        ({"type": "image_url", "image_url": "data:image/png;base64,AAAA"}, ValidationFailed, "only data: URLs"),
        ({"type": "image_url", "image_url": {"url": "data:image/png,%89PNG"}}, ValidationFailed, "must be a base64 data: URL"),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,not base64!"}}, ValidationFailed, "not valid base64"),
        (image_part(PNG, "image/bmp"), ValidationFailed, "media type 'image/bmp' is not one of image/png, image/jpeg, image/gif, image/webp"),
        (image_part(JPEG, "image/png"), ValidationFailed, "the data is not a PNG image"),
        (image_part(b"RIFF\x00\x00\x00\x00WAVE", "image/webp"), ValidationFailed, "the data is not a WEBP image"),
    ],
)
def test_image_parts_are_checked_and_name_the_field(part: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message) as raised:
        conversation(Invocation(messages=(user_message("Look", part),)), None)
    assert raised.value.status == 422


def test_images_are_limited_in_number_and_decoded_bytes() -> None:
    with pytest.raises(ValidationFailed, match=r"messages\[0\]\.content: 5 images; this agent takes at most 4 \(params.max_images\)") as raised:
        conversation(Invocation(messages=(user_message("Look", *[image_part()] * 5),)), None)
    assert raised.value.status == 422
    with pytest.raises(PayloadTooLarge, match=r"params.max_image_bytes") as raised:
        conversation(Invocation(messages=(user_message("Look", image_part(), image_part()),)), None, max_image_bytes=len(PNG) * 2 - 1)
    assert raised.value.status == 413
    assert len(conversation(Invocation(messages=(user_message("Look", image_part(), image_part()),)), None, max_image_bytes=len(PNG) * 2)[2]) == 2


def test_providers_say_whether_they_take_images() -> None:
    assert BedrockProvider.takes_images and OpenAICompatibleProvider.takes_images and not LocalProvider.takes_images


def test_conversation_rejects_documents_unknown_roles_and_empty_chats() -> None:
    from actors.invocation import Document

    with pytest.raises(ValidationFailed, match="not documents"):
        conversation(Invocation(document=Document(b"%PDF", "application/pdf")), None)
    with pytest.raises(ValidationFailed, match=r"messages\[1\].role: must be one of system, user, assistant, got 'tool'"):
        conversation(Invocation(messages=({"role": "user", "content": "x"}, {"role": "tool", "content": "y"})), None)
    with pytest.raises(ValidationFailed, match="at least one user or assistant message"):
        conversation(Invocation(messages=({"role": "system", "content": "x"},)), None)


def test_retries_back_off_exponentially_and_stop_before_the_deadline() -> None:
    waits: list[float] = []

    def throttled() -> None:
        raise Transient(RateLimited("slow down", retry_after_s=1))

    with pytest.raises(RateLimited):
        with_retries(throttled, max_retries=3, backoff_s=0.1, deadline=time.monotonic() + 60, sleep=waits.append)
    assert len(waits) == 3
    assert all(0.1 * 2**n * 0.5 <= wait <= 0.1 * 2**n for n, wait in enumerate(waits))

    def asks_for_a_minute() -> None:
        raise Transient(RateLimited("come back later", retry_after_s=60), wait_s=60)

    waits.clear()
    with pytest.raises(RateLimited) as raised:
        with_retries(asks_for_a_minute, max_retries=3, backoff_s=0.1, deadline=time.monotonic() + 5, sleep=waits.append)
    assert waits == [] and raised.value.retry_after_s == 60


def test_stop_sequences_hold_back_a_possible_start_and_cut_at_the_first() -> None:
    stops = StopSequences(("END", "##"))
    assert stops.feed("one E") == "one "
    assert stops.feed("XIT? no, EN") == "EXIT? no, "
    assert stops.feed("D here") == "" and stops.found
    assert StopSequences(()).feed("free text") == "free text"


# --- Bedrock -----------------------------------------------------------------------------------


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake static credentials, and no profile, config file or instance metadata to find others."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTDOUBLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-double-secret")


def bedrock(**params: object) -> LlmSpecialist:
    """A loaded Bedrock agent on a real boto3 client for us-east-1 (the tests stub its answers)."""
    specialist = LlmSpecialist({"provider": "bedrock", "model": "anthropic.claude-test", "region": "us-east-1", "backoff_s": 0, **params})
    specialist.load()
    return specialist


CONVERSE_ANSWER = {
    "output": {"message": {"role": "assistant", "content": [{"text": "Bonjour !"}]}},
    "stopReason": "end_turn",
    "usage": {"inputTokens": 12, "outputTokens": 4, "totalTokens": 16},
    "metrics": {"latencyMs": 120},
}


def test_bedrock_converse_answers_text_usage_and_stop_reason(aws_credentials: None) -> None:
    specialist = bedrock(system_prompt="Be brief.", guardrail_id="gr-1", guardrail_version="2", temperature=0.2)
    invocation = Invocation(
        text="Say hello in French",
        history=({"role": "user", "content": "Hi"}, {"role": "user", "content": "Are you there?"}),
        options={"max_tokens": 50, "stop": ["\n\n"]},
    )
    expected = {
        "modelId": "anthropic.claude-test",
        # Converse wants alternating roles: two user turns in a row become one.
        "messages": [{"role": "user", "content": [{"text": "Hi\n\nAre you there?\n\nSay hello in French"}]}],
        "inferenceConfig": {"maxTokens": 50, "temperature": 0.2, "stopSequences": ["\n\n"]},
        "system": [{"text": "Be brief."}],
        "guardrailConfig": {"guardrailIdentifier": "gr-1", "guardrailVersion": "2"},
    }
    with Stubber(specialist.provider.client) as stubber:
        stubber.add_response("converse", CONVERSE_ANSWER, expected)
        chunks, result = run(specialist, invocation)
        stubber.assert_no_pending_responses()
    assert chunks == ["Bonjour !"]
    assert result.output == {
        "text": "Bonjour !",
        "model": "anthropic.claude-test",
        "provider": "bedrock",
        "usage": {"input_tokens": 12, "output_tokens": 4},
        "stop_reason": "end_turn",
    }
    assert result.usage == {"input_tokens": 12, "output_tokens": 4} and result.label is None and result.score is None


def test_bedrock_retries_throttling_then_answers(aws_credentials: None) -> None:
    specialist = bedrock()
    with Stubber(specialist.provider.client) as stubber:
        stubber.add_client_error("converse", "ThrottlingException", "Too many requests", 429)
        stubber.add_client_error("converse", "ServiceUnavailableException", "Try again", 503)
        stubber.add_response("converse", CONVERSE_ANSWER)
        assert specialist.predict(["hello"])[0]["text"] == "Bonjour !"
        stubber.assert_no_pending_responses()


def test_bedrock_persistent_throttling_is_rate_limited_with_retry_after(aws_credentials: None) -> None:
    specialist = bedrock(max_retries=2)
    with Stubber(specialist.provider.client) as stubber:
        for _ in range(3):
            stubber.add_client_error("converse", "ThrottlingException", "Too many requests", 429, response_meta={"HTTPHeaders": {"retry-after": "0"}})
        with pytest.raises(RateLimited, match="ThrottlingException: Too many requests") as raised:
            specialist.predict(["hello"])
        stubber.assert_no_pending_responses()
    assert raised.value.status == 429 and raised.value.retry_after_s >= 1
    assert_pickles(raised.value)


@pytest.mark.parametrize(
    ("code", "message", "status", "error", "text"),
    [
        ("AccessDeniedException", "not authorized to perform bedrock:InvokeModel", 403, Unavailable, "refused the agent's AWS credentials"),
        ("UnrecognizedClientException", "The security token included in the request is invalid", 403, Unavailable, "security token"),
        ("ValidationException", "temperature: must be at most 1", 400, ValidationFailed, "temperature"),
        ("ValidationException", "Input is too long for requested model.", 400, PayloadTooLarge, "too long"),
        ("ResourceNotFoundException", "Model not found", 404, Unavailable, "Model not found"),
    ],
)
def test_bedrock_errors_map_to_typed_errors_without_retries(aws_credentials: None, code: str, message: str, status: int, error: type, text: str) -> None:
    specialist = bedrock(max_retries=3)
    with Stubber(specialist.provider.client) as stubber:
        # One answer queued: a retry would meet an empty stubber and fail the test.
        stubber.add_client_error("converse", code, message, status)
        with pytest.raises(error, match=text) as raised:
            specialist.predict(["hello"])
    assert raised.value.status == error.status
    if error is Unavailable:
        assert raised.value.status == 503 and raised.value.retry_after_s
    assert_pickles(raised.value)


STREAM_EVENTS = [
    converse_event("messageStart", {"role": "assistant"}),
    converse_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Bon"}}),
    converse_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "jour"}}),
    converse_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " !"}}),
    converse_event("contentBlockStop", {"contentBlockIndex": 0}),
    converse_event("messageStop", {"stopReason": "max_tokens"}),
    converse_event("metadata", {"usage": {"inputTokens": 9, "outputTokens": 3, "totalTokens": 12}, "metrics": {"latencyMs": 80}}),
]


def test_bedrock_converse_stream_yields_chunks_then_the_result(aws_credentials: None) -> None:
    specialist = bedrock(system_prompt="Be brief.")
    seen = serve_converse_stream(specialist.provider.client, STREAM_EVENTS)
    chunks, result = run(specialist, Invocation(text="Say hello", stream=True, options={"max_tokens": 3}))
    assert chunks == ["Bon", "jour", " !"] and result.output["text"] == "".join(chunks)
    assert result.output["usage"] == {"input_tokens": 9, "output_tokens": 3} and result.output["stop_reason"] == "max_tokens"
    assert seen == [{"messages": [{"role": "user", "content": [{"text": "Say hello"}]}], "inferenceConfig": {"maxTokens": 3}, "system": [{"text": "Be brief."}]}]


def test_bedrock_sends_the_images_as_blocks_after_the_last_user_text(aws_credentials: None) -> None:
    specialist = bedrock()
    invocation = Invocation(
        messages=({"role": "user", "content": "Hi"}, user_message("What is this?", image_part(), image_part(JPEG, "image/jpeg"))),
    )
    expected = {
        "modelId": "anthropic.claude-test",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"text": "Hi\n\nWhat is this?"},
                    {"image": {"format": "png", "source": {"bytes": PNG}}},
                    {"image": {"format": "jpeg", "source": {"bytes": JPEG}}},
                ],
            }
        ],
        "inferenceConfig": {"maxTokens": 512},
    }
    with Stubber(specialist.provider.client) as stubber:
        stubber.add_response("converse", CONVERSE_ANSWER, expected)
        assert run(specialist, invocation)[1].output["text"] == "Bonjour !"
        stubber.assert_no_pending_responses()


def test_bedrock_user_message_of_images_alone_has_no_blank_text_block(aws_credentials: None) -> None:
    specialist = bedrock()
    seen = serve_converse_stream(specialist.provider.client, STREAM_EVENTS)
    history = ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"})
    run(specialist, Invocation(messages=(user_message(None, image_part()),), history=history, stream=True))
    # Converse's JSON carries blobs as base64.
    assert seen[0]["messages"][-1] == {"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": base64.b64encode(PNG).decode()}}}]}


def test_bedrock_error_inside_the_stream_propagates_after_the_first_chunk(aws_credentials: None) -> None:
    specialist = bedrock()
    serve_converse_stream(specialist.provider.client, [STREAM_EVENTS[1], converse_exception("throttlingException", "Too many tokens")])
    items = specialist.stream(Invocation(text="Say hello", stream=True))
    assert next(items) == Chunk("Bon")
    with pytest.raises(RateLimited, match="ThrottlingException: Too many tokens") as raised:
        next(items)
    assert_pickles(raised.value)


def test_bedrock_without_credentials_is_unavailable_with_the_reason(aws_credentials: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    specialist = bedrock()
    serve_converse_stream(specialist.provider.client, STREAM_EVENTS)
    with pytest.raises(Unavailable, match="NoCredentialsError") as raised:
        run(specialist, Invocation(text="hello", stream=True))
    assert raised.value.status == 503


# --- OpenAI-compatible server ------------------------------------------------------------------


@pytest.fixture
def server() -> OpenAIServerDouble:
    with OpenAIServerDouble() as double:
        yield double


def openai_agent(server: OpenAIServerDouble, **params: object) -> LlmSpecialist:
    return LlmSpecialist({"provider": "openai", "model": "served-model", "base_url": server.base_url, "backoff_s": 0, **params})


def test_openai_streams_chunks_as_the_server_sends_them(server: OpenAIServerDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test-double")
    specialist = openai_agent(server, api_key_env="TEST_LLM_KEY", system_prompt="Be brief.")
    server.gate = threading.Event()
    items = specialist.stream(Invocation(text="Greet me", stream=True, options={"temperature": 0.5, "stop": ["END"]}))
    # The server holds the rest of its answer until the gate opens: this chunk was streamed.
    assert next(items) == Chunk("Hello")
    server.gate.set()
    *rest, result = items
    chunks = ["Hello", *(chunk.text for chunk in rest)]
    assert len(chunks) == 6 and result.output["text"] == "".join(chunks) == "Hello from the loopback server."
    assert result.output["usage"] == {"input_tokens": 4, "output_tokens": 6} and result.output["stop_reason"] == "end_turn"
    request = server.requests[0]
    assert request["headers"]["Authorization"] == "Bearer sk-test-double"
    assert request["body"] == {
        "model": "served-model",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Greet me"}],
        "max_tokens": 512,
        "stream": True,
        "temperature": 0.5,
        "stop": ["END"],
        "stream_options": {"include_usage": True},
    }


def test_openai_sends_the_images_as_data_url_parts_of_the_last_user_message(server: OpenAIServerDouble) -> None:
    invocation = Invocation(messages=(user_message("What is this?", image_part(JPEG, "image/jpeg")), {"role": "assistant", "content": "It is"}))
    _, result = run(openai_agent(server), invocation)
    assert server.requests[0]["body"]["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, image_part(JPEG, "image/jpeg")]},
        {"role": "assistant", "content": "It is"},
    ]
    assert result.output["text"] == "Hello from the loopback server."


def test_openai_user_message_of_images_alone_is_sent_without_a_text_part() -> None:
    with OpenAIServerDouble(send_usage=False) as server:
        _, result = run(openai_agent(server, system_prompt="Describe images."), Invocation(messages=(user_message(None, image_part()),)))
    assert server.requests[0]["body"]["messages"] == [{"role": "system", "content": "Describe images."}, {"role": "user", "content": [image_part()]}]
    # The token estimate reads the text turns only.
    assert result.usage["input_tokens"] == 4


@pytest.mark.parametrize(
    ("message", "status"),
    [(user_message("Look", {"type": "image_url", "image_url": {"url": "http://10.0.0.1/cat.png"}}), 422), (user_message("Look", *[image_part()] * 3), 422)],
)
def test_openai_refused_images_never_reach_the_server(server: OpenAIServerDouble, message: dict, status: int) -> None:
    with pytest.raises(ValidationFailed) as raised:
        run(openai_agent(server, max_images=2), Invocation(messages=(message,)))
    assert raised.value.status == status and server.requests == []


def test_openai_unary_call_and_max_tokens(server: OpenAIServerDouble) -> None:
    output = openai_agent(server).predict(["Greet me"], [{"max_tokens": 3}])[0]
    assert output == {
        "text": "Hello from the",
        "model": "served-model",
        "provider": "openai",
        "usage": {"input_tokens": 2, "output_tokens": 3},
        "stop_reason": "max_tokens",
    }
    assert server.requests[0]["body"]["stream"] is False and "Authorization" not in server.requests[0]["headers"]


def test_openai_usage_is_estimated_when_the_server_sends_none() -> None:
    with OpenAIServerDouble(send_usage=False) as server:
        _, result = run(openai_agent(server), Invocation(text="Greet me please", stream=True))
    # About four characters a token: 15 characters in, 31 out.
    assert result.usage == {"input_tokens": 4, "output_tokens": 8}


def test_openai_429_is_retried_then_answers(server: OpenAIServerDouble) -> None:
    server.fail(429, times=2, headers={"Retry-After": "0"})
    assert openai_agent(server, max_retries=2).predict(["hi"])[0]["text"] == "Hello from the loopback server."
    assert len(server.requests) == 3


def test_openai_persistent_429_is_rate_limited_after_the_retries(server: OpenAIServerDouble) -> None:
    server.fail(429, times=5)
    with pytest.raises(RateLimited, match="answered 429") as raised:
        run(openai_agent(server, max_retries=2), Invocation(text="hi", stream=True))
    assert len(server.requests) == 3 and raised.value.retry_after_s
    assert_pickles(raised.value)


def test_openai_retry_after_beyond_the_deadline_gives_up_at_once(server: OpenAIServerDouble) -> None:
    server.fail(429, times=5, headers={"Retry-After": "30"})
    started = time.monotonic()
    with pytest.raises(RateLimited) as raised:
        openai_agent(server, max_retries=3, timeout_s=5).predict(["hi"])
    assert raised.value.retry_after_s == 30 and len(server.requests) == 1 and time.monotonic() - started < 2


def test_openai_401_is_unavailable_and_names_the_missing_key(server: OpenAIServerDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_LLM_KEY", raising=False)
    server.fail(401, body={"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}})
    with pytest.raises(Unavailable, match="refused the agent's API key .401.: Incorrect API key provided invalid_api_key .environment variable TEST_LLM_KEY is not set") as raised:
        openai_agent(server, api_key_env="TEST_LLM_KEY", max_retries=3).predict(["hi"])
    assert raised.value.status == 503 and len(server.requests) == 1
    assert_pickles(raised.value)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, {"error": {"message": "'temperature' must be at most 2", "code": None}}, ValidationFailed),
        (400, {"error": {"message": "This model's maximum context length is 4096 tokens", "code": "context_length_exceeded"}}, PayloadTooLarge),
        (404, {"error": {"message": "The model 'served-model' does not exist", "code": "model_not_found"}}, Unavailable),
    ],
)
def test_openai_client_errors_map_to_typed_errors(server: OpenAIServerDouble, status: int, body: dict, error: type) -> None:
    server.fail(status, body=body)
    with pytest.raises(error, match=body["error"]["message"]):
        openai_agent(server, max_retries=3).predict(["hi"])
    assert len(server.requests) == 1


def test_openai_server_errors_are_retried_then_unavailable(server: OpenAIServerDouble) -> None:
    server.fail(503, times=3, headers={"Retry-After": "0"})
    with pytest.raises(Unavailable, match="answered 503") as raised:
        openai_agent(server, max_retries=2).predict(["hi"])
    assert len(server.requests) == 3 and raised.value.retry_after_s


def test_openai_connection_refused_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    specialist = LlmSpecialist({"provider": "openai", "model": "m", "base_url": f"http://127.0.0.1:{port}/v1", "max_retries": 1, "backoff_s": 0})
    with pytest.raises(Unavailable, match="unreachable"):
        specialist.predict(["hi"])


def test_openai_honours_the_request_deadline(server: OpenAIServerDouble) -> None:
    server.delay_s = 3
    started = time.monotonic()
    with pytest.raises(Unavailable):
        run(openai_agent(server, timeout_s=60), Invocation(text="hi", deadline=time.time() + 0.5))
    assert time.monotonic() - started < 2


def test_openai_error_event_mid_stream_propagates_after_the_first_chunk(server: OpenAIServerDouble) -> None:
    server.error_mid_stream = {"message": "the model crashed", "type": "server_error"}
    items = openai_agent(server).stream(Invocation(text="hi", stream=True))
    assert next(items) == Chunk("Hello")
    with pytest.raises(Unavailable, match="failed mid-stream: the model crashed"):
        next(items)


def test_an_expired_deadline_fails_before_calling_the_provider(server: OpenAIServerDouble) -> None:
    with pytest.raises(Unavailable, match="deadline"):
        run(openai_agent(server), Invocation(text="hi", deadline=time.time() - 1))
    assert server.requests == []


# --- local transformers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


def local_agent(directory: Path, **params: object) -> LlmSpecialist:
    specialist = LlmSpecialist({"provider": "local", "model": str(directory), "device": "cpu", "torch_threads": 1, **params})
    specialist.load()
    return specialist


def test_local_streams_chunks_and_counts_tokens(tiny_gpt2: Path) -> None:
    specialist = local_agent(tiny_gpt2)
    chunks, result = run(specialist, Invocation(text="the quick brown fox", stream=True, options={"max_tokens": 6, "temperature": 0.0}))
    assert len(chunks) >= 2 and result.output["text"] == "".join(chunks)
    prompt_tokens = len(specialist.provider.tokenizer("user: the quick brown fox\nassistant:")["input_ids"])
    assert result.usage == result.output["usage"] == {"input_tokens": prompt_tokens, "output_tokens": 6}
    assert result.output["stop_reason"] == "max_tokens" and result.output["provider"] == "local"


def test_local_unary_predict_drains_the_same_stream(tiny_gpt2: Path) -> None:
    outputs = local_agent(tiny_gpt2, max_tokens=3, temperature=0).predict(["the fox", "a dog"])
    assert [output["usage"]["output_tokens"] for output in outputs] == [3, 3]
    assert all(len(output["text"].split()) == 3 for output in outputs)


def test_local_prompt_uses_the_chat_template_when_there_is_one(tmp_path: Path, tiny_gpt2: Path) -> None:
    templated = local_agent(build_tiny_gpt2(tmp_path / "chat", chat_template=CHAT_TEMPLATE), system_prompt="be short")
    plain = local_agent(tiny_gpt2, system_prompt="be short")
    invocation = Invocation(text="the fox", history=({"role": "user", "content": "hi"}, {"role": "assistant", "content": "a dog"}))
    request = templated._request(invocation, templated.validate_options({}))
    assert templated.provider.prompt(request) == "system : be short . user : hi . assistant : a dog . user : the fox . assistant :"
    assert plain.provider.prompt(request) == "system: be short\nuser: hi\nassistant: a dog\nuser: the fox\nassistant:"
    _, result = run(templated, invocation.derive(options={"max_tokens": 2}))
    assert result.usage["output_tokens"] == 2


def test_local_drops_images_and_prompts_the_text(tiny_gpt2: Path) -> None:
    specialist = local_agent(tiny_gpt2)
    invocation = Invocation(messages=(user_message("the fox", image_part()),), options={"max_tokens": 2})
    request = specialist._request(invocation, specialist.validate_options(invocation.options))
    assert request.images == (ImagePart(PNG, "image/png"),)
    assert specialist.provider.prompt(request) == "user: the fox\nassistant:"
    assert run(specialist, invocation)[1].usage["output_tokens"] == 2


def test_local_stop_sequence_ends_the_answer(tiny_gpt2: Path) -> None:
    import torch

    specialist = local_agent(tiny_gpt2)
    stops = ["fox", "dog", "lazy", "brown"]
    # Sampling is seeded: with seed 0 this model writes "fox" as its fourth word, before any end token.
    torch.manual_seed(0)
    _, result = run(specialist, Invocation(text="the", options={"max_tokens": 60, "temperature": 1.0, "stop": stops}))
    assert result.output["stop_reason"] == "stop_sequence"
    assert not any(stop in result.output["text"] for stop in stops) and result.usage["output_tokens"] < 60


def test_local_prompt_longer_than_the_context_is_payload_too_large(tiny_gpt2: Path) -> None:
    specialist = local_agent(tiny_gpt2)
    with pytest.raises(PayloadTooLarge, match="the model reads at most 64"):
        run(specialist, Invocation(text="the fox " * 40))
    # A prompt that fits gets what room the context has left, not max_tokens.
    _, result = run(specialist, Invocation(text="the fox " * 28, options={"max_tokens": 100, "temperature": 0.0}))
    assert result.usage["input_tokens"] + result.usage["output_tokens"] == 64 and result.output["stop_reason"] == "max_tokens"


def test_local_serves_a_registered_model(tiny_gpt2: Path, tmp_path: Path) -> None:
    from cluster.registry import ModelRegistry
    from cluster.storage import Storage

    storage = str(tmp_path / "store")
    ModelRegistry(Storage(storage)).register(
        "tiny-llm", tiny_gpt2, task="text-generation", base_model="gpt2", labels=[], metrics={},
        dataset={"uri": "/none", "sha256": "0" * 64, "rows": 0}, recipe={},
    )
    specialist = LlmSpecialist({"provider": "local", "model": "registry://tiny-llm:v1", "storage": storage, "device": "cpu"})
    assert specialist.predict(["the fox"], [{"max_tokens": 2}])[0]["usage"]["output_tokens"] == 2


def test_local_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    from cluster.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        LlmSpecialist({"provider": "local", "model": str(tmp_path / "absent")}).load()


@pytest.mark.gpu
def test_local_generates_on_cuda(tiny_gpt2: Path) -> None:
    specialist = local_agent(tiny_gpt2, device="cuda")
    chunks, result = run(specialist, Invocation(text="the fox", stream=True, options={"max_tokens": 4, "temperature": 0.0}))
    assert specialist.provider.device == "cuda" and result.usage["output_tokens"] == 4 and result.output["text"] == "".join(chunks)
