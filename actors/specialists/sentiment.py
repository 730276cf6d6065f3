"""Sentiment with VADER (vaderSentiment 3.3.2) mapped to POSITIVE/NEGATIVE/NEUTRAL/MIXED.

The label follows VADER's published compound rule, with MIXED for texts that argue both ways.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from actors.specialists.base import Specialist, package_version

LABELS = ("POSITIVE", "NEGATIVE", "NEUTRAL", "MIXED")


class SentimentParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    positive_threshold: float = Field(
        default=0.05, ge=0.0, le=1.0, description="Compound score at or above which a text is POSITIVE."
    )
    negative_threshold: float = Field(
        default=-0.05, ge=-1.0, le=0.0, description="Compound score at or below which a text is NEGATIVE."
    )
    mixed_threshold: float = Field(
        default=0.1,
        gt=0.0,
        le=0.5,
        description="A text is MIXED when both its positive and negative word proportions reach this.",
    )

    @model_validator(mode="after")
    def _thresholds_apart(self) -> SentimentParams:
        if self.negative_threshold >= self.positive_threshold:
            raise ValueError("negative_threshold must be below positive_threshold")
        return self


# MIXED when both the positive and the negative word proportions reach `mixed_threshold`:
# the compound score averages such a text towards zero and would call it neutral. Otherwise
# VADER's recommended rule on compound, whose ±0.05 cut-offs are the thresholds' defaults.
def _label(polarity: dict[str, float], params: SentimentParams) -> str:
    if min(polarity["pos"], polarity["neg"]) >= params.mixed_threshold:
        return "MIXED"
    if polarity["compound"] >= params.positive_threshold:
        return "POSITIVE"
    if polarity["compound"] <= params.negative_threshold:
        return "NEGATIVE"
    return "NEUTRAL"


def _raw_shares(polarity: dict[str, float]) -> dict[str, float]:
    # VADER gives no proportions for text without tokens; that text is plainly neutral.
    neutral = polarity["neu"] if polarity["pos"] + polarity["neg"] + polarity["neu"] > 0 else 1.0
    both = min(polarity["pos"], polarity["neg"])
    return {"POSITIVE": polarity["pos"], "NEGATIVE": polarity["neg"], "NEUTRAL": neutral, "MIXED": 2 * both}


def _evidence(label: str, polarity: dict[str, float], shares: dict[str, float]) -> float:
    if label == "MIXED":
        return min(polarity["pos"], polarity["neg"]) / max(polarity["pos"], polarity["neg"])
    if label == "NEUTRAL":
        return shares["NEUTRAL"]
    return abs(polarity["compound"])


def _shares_of_others(label: str, shares: dict[str, float]) -> dict[str, float]:
    others = {other: shares[other] for other in LABELS if other != label}
    total = sum(others.values())
    # With no evidence for any other label, doubt about the label can only mean "no sentiment".
    if total == 0:
        return {other: float(other == "NEUTRAL") for other in others}
    return {other: share / total for other, share in others.items()}


# The label gets 0.5 + 0.5 * its evidence (|compound| for POSITIVE/NEGATIVE, the neutral
# proportion for NEUTRAL, min(pos, neg) / max(pos, neg) for MIXED), so no other label can
# outscore it; the remainder, the doubt, follows VADER's proportions for the other labels.
def _scores(label: str, polarity: dict[str, float]) -> dict[str, float]:
    shares = _raw_shares(polarity)
    rest = 0.5 - 0.5 * _evidence(label, polarity, shares)
    scores = {other: round(rest * share, 4) for other, share in _shares_of_others(label, shares).items()}
    scores[label] = round(1.0 - sum(scores.values()), 4)
    return {name: scores[name] for name in LABELS}


class SentimentSpecialist(Specialist):
    kind: ClassVar[str] = "sentiment"
    Params: ClassVar[type[BaseModel]] = SentimentParams
    batchable: ClassVar[bool] = False

    def _model_name(self) -> str:
        return package_version("vaderSentiment")

    def _extras(self) -> dict:
        return {"labels": list(LABELS)}

    def _load(self) -> None:
        self._analyzer = SentimentIntensityAnalyzer()

    def _predict(self, texts: list[str], options: list[Any]) -> list[dict]:
        return [self._one(text) for text in texts]

    def signals(self, output: dict) -> tuple[str | None, float | None]:
        return output["label"], output["scores"][output["label"]]

    def _one(self, text: str) -> dict:
        polarity = self._analyzer.polarity_scores(text)
        label = _label(polarity, self.params)
        return {"label": label, "scores": _scores(label, polarity)}
