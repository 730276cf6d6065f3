"""Test doubles for LLM providers, shared by unit and integration tests: a loopback OpenAI-compatible
server, Bedrock's event-stream wire format served through botocore, and a tiny random GPT-2."""

from __future__ import annotations

import binascii
import json
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DEFAULT_REPLY = ("Hello", " from", " the", " loopback", " server", ".")


class OpenAIServerDouble:
    """Test double: a real HTTP server on 127.0.0.1 speaking OpenAI's ``POST /v1/chat/completions``,
    unary JSON and streamed SSE (``data:`` lines, ``data: [DONE]``). It answers ``reply`` cut to
    ``max_tokens`` words (finish_reason ``length``), serves queued failures first, records every
    request. With ``gate`` set it holds the stream after the first delta until the gate opens; with
    ``error_mid_stream`` set it sends that error event after the first delta and ends the stream."""

    def __init__(self, reply: tuple[str, ...] = DEFAULT_REPLY, send_usage: bool = True):
        self.reply = reply
        self.send_usage = send_usage
        self.requests: list[dict[str, Any]] = []
        self.gate: threading.Event | None = None
        self.error_mid_stream: dict | None = None
        self.delay_s = 0.0
        self._failures: list[tuple[int, dict[str, str], dict]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        # A short poll keeps shutdown() (every test's teardown) from waiting the default half second.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def fail(self, status: int, times: int = 1, headers: dict[str, str] | None = None, body: dict | None = None) -> None:
        """Answer the next ``times`` requests with this status (and an OpenAI-shaped error body)."""
        error = body or {"error": {"message": f"simulated {status}", "type": "test_double", "code": None}}
        self._failures.extend([(status, headers or {}, error)] * times)

    def __enter__(self) -> OpenAIServerDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.gate is not None:
            self.gate.set()
        self._server.shutdown()
        self._server.server_close()

    def answer(self, handler: BaseHTTPRequestHandler, body: dict) -> None:
        self.requests.append({"path": handler.path, "headers": dict(handler.headers), "body": body})
        if self._failures:
            status, headers, error = self._failures.pop(0)
            return _send_json(handler, status, error, headers)
        if self.delay_s:
            threading.Event().wait(self.delay_s)
        words = self.reply[: body.get("max_tokens") or len(self.reply)]
        finish = "length" if len(words) < len(self.reply) else "stop"
        usage = {"prompt_tokens": _word_count(body["messages"]), "completion_tokens": len(words)}
        if body.get("stream"):
            return self._stream(handler, words, finish, usage if (body.get("stream_options") or {}).get("include_usage") else None)
        answer = {"object": "chat.completion", "model": body["model"], "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)}, "finish_reason": finish}]}
        _send_json(handler, 200, {**answer, **({"usage": usage} if self.send_usage else {})})

    def _stream(self, handler: BaseHTTPRequestHandler, words: tuple[str, ...], finish: str, usage: dict | None) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()
        for index, word in enumerate(words):
            _send_event(handler, {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]})
            if index == 0 and self.gate is not None:
                self.gate.wait(timeout=10)
            if index == 0 and self.error_mid_stream is not None:
                return _send_event(handler, {"error": self.error_mid_stream})
        _send_event(handler, {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if usage and self.send_usage:
            _send_event(handler, {"object": "chat.completion.chunk", "choices": [], "usage": usage})
        handler.wfile.write(b"data: [DONE]\n\n")
        handler.wfile.flush()


def _handler_for(double: OpenAIServerDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/v1/chat/completions":
                return _send_json(self, 404, {"error": {"message": f"no route {self.path}"}})
            double.answer(self, json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

        def log_message(self, *args: Any) -> None:
            """Quiet: pytest shows failures, not access logs."""

    return Handler


def _send_json(handler: BaseHTTPRequestHandler, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    for name, value in {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


def _send_event(handler: BaseHTTPRequestHandler, event: dict) -> None:
    handler.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
    handler.wfile.flush()


def _word_count(messages: list[dict]) -> int:
    return sum(len(str(message.get("content", "")).split()) for message in messages)


class _EventStreamBody:
    """The urllib3-like body botocore reads an event stream from; hands out small pieces so the
    decoder has to reassemble messages across reads."""

    def __init__(self, data: bytes):
        self.data = data
        self.closed = False

    def stream(self, **kwargs: Any):
        for start in range(0, len(self.data), 7):
            yield self.data[start : start + 7]

    def close(self) -> None:
        self.closed = True


def event_stream_message(headers: dict[str, str], payload: dict) -> bytes:
    """One message of the AWS event-stream binary format (prelude, CRCs, string headers, JSON payload)."""
    encoded_headers = b"".join(
        struct.pack("!B", len(name)) + name.encode() + struct.pack("!BH", 7, len(value)) + value.encode() for name, value in headers.items()
    )
    body = json.dumps(payload).encode()
    prelude = struct.pack("!II", 16 + len(encoded_headers) + len(body), len(encoded_headers))
    message = prelude + struct.pack("!I", binascii.crc32(prelude)) + encoded_headers + body
    return message + struct.pack("!I", binascii.crc32(message))


def converse_event(name: str, payload: dict) -> bytes:
    """A ConverseStream event such as ``contentBlockDelta`` or ``metadata``."""
    return event_stream_message({":event-type": name, ":content-type": "application/json", ":message-type": "event"}, payload)


def converse_exception(name: str, message: str) -> bytes:
    """An exception inside a ConverseStream, such as ``throttlingException``."""
    return event_stream_message({":exception-type": name, ":content-type": "application/json", ":message-type": "exception"}, {"message": message})


def serve_converse_stream(client: Any, messages: list[bytes]) -> list[dict]:
    """Test double of Bedrock's ConverseStream on the wire: the real botocore ``client`` sends nothing;
    its ``before-send`` hook answers 200 with these event-stream bytes, which botocore's own parser
    turns into the EventStream the code under test reads. Returns the request bodies it saw."""
    from botocore.awsrequest import AWSResponse

    seen: list[dict] = []

    def answer(request: Any, **kwargs: Any) -> AWSResponse:
        seen.append(json.loads(request.body))
        headers = {"content-type": "application/vnd.amazon.eventstream"}
        return AWSResponse(request.url, 200, headers, _EventStreamBody(b"".join(messages)))

    client.meta.events.register("before-send.bedrock-runtime.ConverseStream", answer)
    return seen


WORDS = "the quick brown fox jumps over lazy dog a small model writes short answers user assistant system : . ? ,"


def build_tiny_gpt2(directory: Path, chat_template: str | None = None, context_tokens: int = 64, seed: int = 0) -> Path:
    """Test double of a local LLM: a randomly initialised 2-layer GPT-2 (n_embd 32) with a word-level
    tokenizer built offline, saved with ``save_pretrained``. Its words are joined by spaces, so a
    streamer flushes it word by word; with a fixed seed, greedy output is repeatable."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocabulary = {word: index for index, word in enumerate(["<|endoftext|>", "[UNK]", *dict.fromkeys(WORDS.split())])}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="[UNK]")
    if chat_template:
        tokenizer.chat_template = chat_template
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(vocabulary), n_positions=context_tokens, n_layer=2, n_embd=32, n_head=2, bos_token_id=eos, eos_token_id=eos)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
