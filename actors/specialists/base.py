"""The Specialist interface: validated params, lazy load, batched predict, the declared
monitoring signals of a result, a stream for one invocation, describe."""

from __future__ import annotations

import abc
import threading
from importlib.metadata import version
from typing import Any, ClassVar, Iterator

from pydantic import BaseModel, ConfigDict, ValidationError

from actors.invocation import Invocation, Result, StreamItem
from cluster.errors import ValidationFailed


class NoParams(BaseModel):
    """Params of a specialist that takes none."""

    model_config = ConfigDict(extra="forbid")


class NoOptions(BaseModel):
    """Per-item options of a specialist that takes none."""

    model_config = ConfigDict(extra="forbid", strict=True)


def package_version(name: str) -> str:
    """'name version' of an installed distribution, for describe()."""
    return f"{name} {version(name)}"


def _error_message(error: Any, allowed: list[str]) -> str:
    path = "options" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{path}: unknown option; allowed: {', '.join(allowed) or 'none'}"
    message = error["msg"][:1].lower() + error["msg"][1:]
    return f"{path}: {message}, got {error['input']!r}"


class Specialist(abc.ABC):
    """One model behind a uniform interface; construction is cheap, load() does the heavy work."""

    kind: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    Options: ClassVar[type[BaseModel]] = NoOptions
    batchable: ClassVar[bool] = False
    # True for agents whose stream() yields Chunks before the Result (LLMs).
    streams: ClassVar[bool] = False
    # Orchestra settings the deployment builder passes in as params: the storage URI
    # (param ``storage``) and the document limits (param ``limits``).
    uses_storage: ClassVar[bool] = False
    reads_documents: ClassVar[bool] = False

    def __init__(self, params: dict | None = None):
        self.params = self.Params.model_validate(params or {})
        # The agents this one may call (its config's ``uses``), set by the serving replica.
        self.peers = None
        self._loaded = False
        # Serve may run predict on several threads; the first calls must not load twice.
        self._load_lock = threading.Lock()

    def connect(self, peers) -> None:
        """Reach other agents through ``peers`` (an ``actors.peers.Peers``) instead of in-process."""
        self.peers = peers

    def load(self) -> None:
        """Load the model once; later calls return at once."""
        with self._load_lock:
            if not self._loaded:
                self._load()
                self._loaded = True

    def validate_options(self, options: dict | None) -> BaseModel:
        """Parse one item's options; raise ValidationFailed naming the bad option."""
        if options is not None and not isinstance(options, dict):
            raise ValidationFailed(f"options: must be an object, got {type(options).__name__}")
        try:
            return self.Options.model_validate(options or {})
        except ValidationError as exc:
            allowed = list(self.Options.model_fields)
            raise ValidationFailed("; ".join(_error_message(e, allowed) for e in exc.errors())) from None

    def predict(self, texts: list[str], options: list[dict | None] | None = None) -> list[dict]:
        """One result per text, in order; `options` holds one dict (or None) per text."""
        if options is not None and len(options) != len(texts):
            raise ValueError(f"got {len(options)} options for {len(texts)} texts")
        parsed = [self.validate_options(item) for item in options or [None] * len(texts)]
        self.load()
        return self._predict(texts, parsed) if texts else []

    def signals(self, output: dict) -> tuple[str | None, float | None]:
        """(label, score) this output declares for monitoring; None where it has none."""
        return None, None

    def result(self, output: dict) -> Result:
        """An output wrapped with its declared signals."""
        label, score = self.signals(output)
        return Result(output=output, label=label, score=score)

    def stream(self, invocation: Invocation) -> Iterator[StreamItem]:
        """Run one invocation. A specialist that streams yields Chunks first; every stream
        ends with one Result (a BatonError raised here becomes the caller's Failure)."""
        output = self.predict([invocation.input_text], [invocation.options])[0]
        yield self.result(output)

    def describe(self) -> dict:
        """What this specialist runs: kind, model (package and version), params, and extras."""
        return {"kind": self.kind, "model": self._model_name(), "params": self.params.model_dump(), **self._extras()}

    def _extras(self) -> dict:
        return {}

    @abc.abstractmethod
    def _model_name(self) -> str: ...

    @abc.abstractmethod
    def _load(self) -> None: ...

    @abc.abstractmethod
    def _predict(self, texts: list[str], options: list[Any]) -> list[dict]: ...
