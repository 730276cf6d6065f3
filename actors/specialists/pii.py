"""PII redaction: the entities detector (spaCy NER + validated patterns), each span replaced by
its "[TYPE]" tag (default), a same-length "***" mask, or a salted "[TYPE:hash]" pseudonym."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from actors.pii import DEFAULT_PII_TYPES, RedactionStyle, redact
from actors.specialists.entities import DetectorSpecialist, EntitiesOptions, EntityType


class PiiParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    types: list[EntityType] = Field(
        default_factory=lambda: list(DEFAULT_PII_TYPES), min_length=1, description="Entity types to redact."
    )
    min_score: float = Field(default=0.0, ge=0.0, le=1.0, description="Leave entities scoring below this in place.")
    hash_salt: str = Field(
        default="",
        max_length=256,
        repr=False,
        description=(
            "Secret prepended to each value before hashing for style 'hash'. Without one, the hash of a "
            "guessable value (a phone number) can be found by trying candidates."
        ),
    )

    # describe() publishes the params; the salt must not leave the replica.
    @field_serializer("hash_salt")
    def _hide_salt(self, salt: str) -> str:
        return "***" if salt else ""


class PiiOptions(EntitiesOptions):
    style: RedactionStyle = Field(
        default="type",
        description=(
            "'type': '[EMAIL]'; 'mask': one '*' per character, so entity offsets hold in the redacted text; "
            "'hash': '[EMAIL:3f2a9c1b]', equal values giving equal hashes (salted with the agent's hash_salt)."
        ),
    )


class PiiSpecialist(DetectorSpecialist):
    kind: ClassVar[str] = "pii"
    Params: ClassVar[type[BaseModel]] = PiiParams
    Options: ClassVar[type[BaseModel]] = PiiOptions

    def _predict(self, texts: list[str], options: list[Any]) -> list[dict]:
        return [
            {"redacted_text": redact(text, entities, item.style, self.params.hash_salt), "entities": entities}
            for text, entities, item in zip(texts, self._detect(texts, options), options)
        ]
