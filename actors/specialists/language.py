"""Language identification with lingua (lingua-language-detector 2.1.1), ISO 639-1 codes.

Scores are lingua's relative confidence values; "und" means no language scored above zero.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lingua import ConfidenceValue, IsoCode639_1, Language, LanguageDetectorBuilder
from pydantic import BaseModel, ConfigDict, Field, field_validator

from actors.specialists.base import Specialist, package_version

SUPPORTED_CODES = tuple(sorted(language.iso_code_639_1.name.lower() for language in Language.all()))


class LanguageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    languages: list[str] = Field(
        default_factory=lambda: list(SUPPORTED_CODES),
        min_length=2,
        description="ISO 639-1 codes (lowercase) the detector chooses among; at least two. Default: all lingua supports.",
    )
    low_accuracy: bool = Field(
        default=False,
        description="Use lingua's low-accuracy mode: trigrams only, faster and far smaller, weaker on short texts.",
    )
    preload: bool = Field(
        default=False,
        description="Load every language model at load() instead of lazily on first use (about 1 GB for all).",
    )

    @field_validator("languages")
    @classmethod
    def _known_codes(cls, codes: list[str]) -> list[str]:
        unknown = [code for code in codes if code not in SUPPORTED_CODES]
        if unknown:
            raise ValueError(f"unsupported ISO 639-1 codes {unknown}; supported: {', '.join(SUPPORTED_CODES)}")
        if len(set(codes)) != len(codes):
            raise ValueError("duplicate language codes")
        return codes


class LanguageOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    top_k: int = Field(default=3, ge=1, le=10, description="How many alternatives to return after the best language.")


def _score(value: float) -> float:
    return round(value, 4)


def _result(values: list[ConfidenceValue], top_k: int) -> dict:
    if not values or values[0].value <= 0:
        return {"language": "und", "score": 0.0, "alternatives": []}
    best, *rest = values
    alternatives = [
        {"language": value.language.iso_code_639_1.name.lower(), "score": _score(value.value)}
        for value in rest[:top_k]
    ]
    return {
        "language": best.language.iso_code_639_1.name.lower(),
        "score": _score(best.value),
        "alternatives": [alternative for alternative in alternatives if alternative["score"] > 0],
    }


class LanguageSpecialist(Specialist):
    kind: ClassVar[str] = "language"
    Params: ClassVar[type[BaseModel]] = LanguageParams
    Options: ClassVar[type[BaseModel]] = LanguageOptions
    batchable: ClassVar[bool] = True

    def _model_name(self) -> str:
        return package_version("lingua-language-detector")

    def _extras(self) -> dict:
        return {"labels": list(self.params.languages)}

    def _load(self) -> None:
        codes = [IsoCode639_1.from_str(code) for code in self.params.languages]
        builder = LanguageDetectorBuilder.from_iso_codes_639_1(*codes)
        if self.params.low_accuracy:
            builder = builder.with_low_accuracy_mode()
        if self.params.preload:
            builder = builder.with_preloaded_language_models()
        self._detector = builder.build()

    def signals(self, output: dict) -> tuple[str | None, float | None]:
        return output["language"], output["score"]

    def _predict(self, texts: list[str], options: list[Any]) -> list[dict]:
        # The parallel call spreads a batch over lingua's own thread pool.
        batch = self._detector.compute_language_confidence_values_in_parallel(texts)
        return [_result(values, item.top_k) for values, item in zip(batch, options)]
