"""Specialist kinds by name, and building or checking one from a config entry."""

from __future__ import annotations

from actors.specialists.base import Specialist
from actors.specialists.classify import ClassifySpecialist
from actors.specialists.document_index import DocumentIndexSpecialist
from actors.specialists.documents import DocumentsSpecialist
from actors.specialists.echo import EchoSpecialist
from actors.specialists.embed import EmbedSpecialist
from actors.specialists.entities import EntitiesSpecialist
from actors.specialists.faces import FacesSpecialist
from actors.specialists.incident import IncidentEntitiesSpecialist
from actors.specialists.keyphrases import KeyphrasesSpecialist
from actors.specialists.language import LanguageSpecialist
from actors.specialists.llm import LlmSpecialist
from actors.specialists.moderation import ModerationSpecialist
from actors.specialists.ocr import OcrSpecialist
from actors.specialists.pii import PiiSpecialist
from actors.specialists.sentiment import SentimentSpecialist
from actors.specialists.summarize import SummarizeSpecialist
from actors.specialists.triage import TriageSpecialist

SPECIALISTS: dict[str, type[Specialist]] = {
    cls.kind: cls
    for cls in (
        LanguageSpecialist,
        SentimentSpecialist,
        EntitiesSpecialist,
        PiiSpecialist,
        EchoSpecialist,
        ClassifySpecialist,
        KeyphrasesSpecialist,
        SummarizeSpecialist,
        EmbedSpecialist,
        LlmSpecialist,
        TriageSpecialist,
        IncidentEntitiesSpecialist,
        OcrSpecialist,
        DocumentsSpecialist,
        DocumentIndexSpecialist,
        FacesSpecialist,
        ModerationSpecialist,
    )
}


def _specialist_class(kind: str) -> type[Specialist]:
    try:
        return SPECIALISTS[kind]
    except KeyError:
        raise ValueError(f"unknown specialist kind {kind!r}; known: {', '.join(sorted(SPECIALISTS))}") from None


def create_specialist(kind: str, params: dict | None = None) -> Specialist:
    """A specialist of `kind` with validated params, not yet loaded."""
    return _specialist_class(kind)(params)


def validate_params(kind: str, params: dict | None) -> None:
    """Raise ValueError (unknown kind) or pydantic.ValidationError (bad params); builds nothing."""
    _specialist_class(kind).Params.model_validate(params or {})
