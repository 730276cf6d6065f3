"""A causal language model from a directory, run in-process by transformers: ``generate`` on a
thread, its text streamed back through ``TextIteratorStreamer``."""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from actors.invocation import Chunk
from actors.llm.chat import END_TURN, MAX_TOKENS, STOP_SEQUENCE, ChatRequest, Event, Finish
from cluster.errors import BatonError, ConfigError, PayloadTooLarge, Unavailable
from cluster.registry import REF_SCHEME, ModelRegistry
from cluster.storage import Storage


class LocalProvider:
    """A text-only model: ``request.images`` are dropped without an error, and the turn they came
    with is prompted by its text alone (so callers can send one chat to any provider)."""

    name = "local"
    takes_images = False

    def __init__(self, directory: str | Path, device: str, torch_threads: int | None):
        if not Path(directory).is_dir():
            raise ConfigError(f"local model directory {str(directory)!r} does not exist")
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = _torch_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.model = AutoModelForCausalLM.from_pretrained(directory, dtype="auto").to(self.device).eval()
        self.context_tokens = getattr(self.model.config, "max_position_embeddings", None)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])

    def start(self, request: ChatRequest, stream: bool) -> Iterator[Event]:
        """Generation always streams here; a unary caller drains the same events."""
        templated = bool(self.tokenizer.chat_template)
        # A chat template writes its own special tokens; a plain prompt gets the tokenizer's.
        inputs = self.tokenizer(self.prompt(request), return_tensors="pt", add_special_tokens=not templated).to(self.device)
        input_tokens = inputs["input_ids"].shape[1]
        max_new = self._room(input_tokens, request.max_tokens)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=request.remaining_s())
        generation = BackgroundGeneration(self.model, {**inputs, **self._settings(request, max_new), "streamer": streamer})
        return self._events(generation, streamer, request, input_tokens, max_new)

    def prompt(self, request: ChatRequest) -> str:
        """The chat as the model was trained to read it: its chat template, else "role: content" lines."""
        # request.images are not read: causal LMs loaded by AutoModelForCausalLM take token ids only.
        messages = ([{"role": "system", "content": request.system}] if request.system else []) + list(request.turns)
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "".join(f"{message['role']}: {message['content']}\n" for message in messages) + "assistant:"

    def _room(self, input_tokens: int, max_tokens: int) -> int:
        """New tokens allowed: max_tokens, cut to what the context window has left."""
        if self.context_tokens is None:
            return max_tokens
        if input_tokens >= self.context_tokens:
            raise PayloadTooLarge(f"the prompt is {input_tokens} tokens; the model reads at most {self.context_tokens}")
        return min(max_tokens, self.context_tokens - input_tokens)

    def _settings(self, request: ChatRequest, max_new: int) -> dict[str, Any]:
        settings: dict[str, Any] = {"max_new_tokens": max_new, "max_time": request.remaining_s()}
        # None leaves sampling to the model's generation_config; 0 means greedy.
        if request.temperature == 0:
            settings["do_sample"] = False
        elif request.temperature is not None:
            settings.update(do_sample=True, temperature=request.temperature)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        if pad is not None:
            settings["pad_token_id"] = pad
        return settings

    def _events(self, generation: BackgroundGeneration, streamer: TextIteratorStreamer, request: ChatRequest, input_tokens: int, max_new: int) -> Iterator[Event]:
        stops = StopSequences(request.stop)
        try:
            for text in streamer:
                if piece := stops.feed(text):
                    yield Chunk(piece)
                if stops.found:
                    break
        except queue.Empty:
            raise Unavailable("local generation produced nothing before the deadline", retry_after_s=1) from None
        finally:
            # Stops generate() when the caller went away, the deadline passed or a stop sequence came.
            generation.cancel()
        if tail := stops.flush():
            yield Chunk(tail)
        output_ids = generation.result(timeout=request.remaining_s() + 1)[0, input_tokens:]
        yield Finish(self._stop_reason(output_ids, stops.found, max_new), input_tokens, len(output_ids))

    def _stop_reason(self, output_ids: torch.Tensor, stop_found: bool, max_new: int) -> str:
        if stop_found:
            return STOP_SEQUENCE
        if len(output_ids) >= max_new:
            return MAX_TOKENS
        if len(output_ids) and int(output_ids[-1]) in self.eos_ids:
            return END_TURN
        # generate() also ends at max_time, which is the deadline.
        raise Unavailable("local generation ran past the deadline", retry_after_s=1)


class BackgroundGeneration:
    """``model.generate`` on a daemon thread; keeps its token ids, or its error for the consumer."""

    def __init__(self, model: Any, settings: dict[str, Any]):
        self._cancelled = threading.Event()
        self._output: torch.Tensor | None = None
        self._error: BaseException | None = None
        settings["stopping_criteria"] = StoppingCriteriaList([UntilCancelled(self._cancelled)])
        self._thread = threading.Thread(target=self._run, args=(model, settings), daemon=True)
        self._thread.start()

    def _run(self, model: Any, settings: dict[str, Any]) -> None:
        try:
            with torch.inference_mode():
                self._output = model.generate(**settings)
        except Exception as error:  # raised typed on the consuming thread by result()
            self._error = error
            settings["streamer"].end()

    def cancel(self) -> None:
        self._cancelled.set()

    def result(self, timeout: float) -> torch.Tensor:
        """The prompt and generated token ids (batch of one); a failure of generate() raised typed."""
        self._thread.join(timeout)
        if isinstance(self._error, torch.OutOfMemoryError):
            raise Unavailable(f"local generation ran out of memory: {self._error}", retry_after_s=1)
        if self._error is not None:
            raise BatonError(f"local generation failed: {type(self._error).__name__}: {self._error}")
        if self._output is None:
            raise Unavailable("local generation did not finish in time", retry_after_s=1)
        return self._output


class UntilCancelled(StoppingCriteria):
    """Ends generation at the next token once the event is set."""

    def __init__(self, cancelled: threading.Event):
        self.cancelled = cancelled

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.cancelled.is_set(), dtype=torch.bool, device=input_ids.device)


class StopSequences:
    """Cuts streamed text at the first stop sequence, holding back a tail that may begin one."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.pending = ""
        self.found = False

    def feed(self, text: str) -> str:
        """The part of the text so far that is safe to send."""
        self.pending += text
        cuts = [at for at in (self.pending.find(stop) for stop in self.stops) if at >= 0]
        if cuts:
            self.found = True
            safe, self.pending = self.pending[: min(cuts)], ""
            return safe
        held = self._partial_stop_length()
        safe, self.pending = self.pending[: len(self.pending) - held], self.pending[len(self.pending) - held :]
        return safe

    def flush(self) -> str:
        rest, self.pending = self.pending, ""
        return rest

    def _partial_stop_length(self) -> int:
        return max((n for stop in self.stops for n in range(1, len(stop)) if self.pending.endswith(stop[:n])), default=0)


def _torch_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("params.device is 'cuda' but torch sees no CUDA device")
    return device


def model_directory(model: str, storage_uri: str | None) -> Path:
    """The directory of a local model: the path itself, or a registered model fetched (checksums
    verified) from the registry at ``storage_uri``."""
    if not model.startswith(REF_SCHEME):
        return Path(model)
    registry = ModelRegistry(Storage(storage_uri or os.environ.get("BATON_STORAGE", ".baton")))
    return registry.fetch(model)
