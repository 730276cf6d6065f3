"""PII redaction: the entities detector (spaCy NER + validated patterns), spans replaced by "[TYPE]"."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from actors.pii import DEFAULT_PII_TYPES, redact
from actors.specialists.entities import DetectorSpecialist, EntitiesOptions, EntityType


class PiiParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    types: list[EntityType] = Field(
        default_factory=lambda: list(DEFAULT_PII_TYPES), min_length=1, description="Entity types to redact."
    )
    min_score: float = Field(default=0.0, ge=0.0, le=1.0, description="Leave entities scoring below this in place.")


class PiiSpecialist(DetectorSpecialist):
    kind: ClassVar[str] = "pii"
    Params: ClassVar[type[BaseModel]] = PiiParams
    Options: ClassVar[type[BaseModel]] = EntitiesOptions

    def _predict(self, texts: list[str], options: list[Any]) -> list[dict]:
        return [
            {"redacted_text": redact(text, entities), "entities": entities}
            for text, entities in zip(texts, self._detect(texts, options))
        ]
