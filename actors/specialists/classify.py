"""The ``classify`` specialist: serves any registered sequence classifier (float or int8),
fetched from the registry with its checksums verified; optionally maps to sentiment labels.
A model registered with a drift profile also reports each input's projection (Result.features).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from actors.classifier_io import open_classifier
from actors.invocation import Result
from actors.specialists.base import Specialist

SENTIMENT_LABELS = ("POSITIVE", "NEGATIVE", "NEUTRAL", "MIXED")


class ClassifyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1, description="registry://name:version, registry://name@alias, or a local model directory.")
    storage: str | None = Field(None, description="Storage URI of the registry; set by the deployment builder.")
    output: Literal["labels", "sentiment"] = Field(
        "labels", description="'labels': the model's own labels; 'sentiment': API.md's POSITIVE/NEGATIVE/NEUTRAL/MIXED."
    )
    neutral_threshold: float = Field(
        0.7, ge=0, le=1, description="sentiment output: a top probability below this answers NEUTRAL."
    )
    max_length: int | None = Field(
        None, ge=8, le=512,
        description="Tokens kept per text (default: the max_length a registered model was trained and measured with, else 128).",
    )
    top_k_scores: int = Field(5, ge=1, le=1000, description="How many of the best labels 'scores' lists.")


class ClassifyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    top_k: int | None = Field(None, ge=1, le=1000, description="Labels listed in 'scores' (default: params.top_k_scores).")


def sentiment_result(labels: list[str], probabilities: np.ndarray, neutral_threshold: float) -> dict:
    """A binary or multi-class sentiment model's output in API.md's four labels.

    Doubt (top probability under the threshold) is NEUTRAL: a binary model has no neutral
    class, so its low confidence is the only signal for one.
    """
    by_label = {label.upper(): float(p) for label, p in zip(labels, probabilities)}
    top = float(probabilities.max())
    scores = {label: round(by_label.get(label, 0.0), 4) for label in SENTIMENT_LABELS}
    if top < neutral_threshold:
        neutral = round(1.0 - top, 4)
        scale = (1.0 - neutral) / max(sum(scores.values()), 1e-9)
        scores = {label: round(value * scale, 4) for label, value in scores.items()}
        scores["NEUTRAL"] = neutral
        label = "NEUTRAL"
    else:
        label = max(scores, key=scores.get)
    return {"label": label, "scores": scores}


class ClassifyOutput(dict):
    """A classify answer: a plain dict to whoever reads it, carrying from predict() to result()
    what the model itself said (its label, probability and the input's drift projection). The
    monitor watches those, not the served mapping: a sentiment answer of NEUTRAL is still the
    model's POSITIVE at 0.6, the label and confidence its drift profile describes."""

    def __init__(self, output: dict, model_signals: tuple[str, float], features: tuple[float, ...] | None):
        super().__init__(output)
        self.model_signals, self.features = model_signals, features


class ClassifySpecialist(Specialist):
    kind: ClassVar[str] = "classify"
    Params: ClassVar[type[BaseModel]] = ClassifyParams
    Options: ClassVar[type[BaseModel]] = ClassifyOptions
    batchable: ClassVar[bool] = True

    def _model_name(self) -> str:
        return self.params.model

    def _extras(self) -> dict:
        return {"labels": self._classifier.labels} if self._loaded else {}

    def _load(self) -> None:
        self._classifier = open_classifier(self.params.model, self.params.storage, self.params.max_length)

    def _predict(self, texts: list[str], options: list[Any]) -> list[dict]:
        outputs, label_ids, projections = self._classifier.classify(texts)
        probabilities = outputs.probabilities
        labels = self._classifier.labels
        answers = []
        for index, (row, label_id, option) in enumerate(zip(probabilities, label_ids, options)):
            features = None if projections is None else tuple(round(float(value), 5) for value in projections[index])
            signals = (labels[int(label_id)], float(row[int(label_id)]))
            answers.append(ClassifyOutput(self._result(row, int(label_id), option), signals, features))
        return answers

    def result(self, output: dict) -> Result:
        return replace(super().result(output), features=getattr(output, "features", None))

    def signals(self, output: dict) -> tuple[str | None, float | None]:
        if isinstance(output, ClassifyOutput):
            return output.model_signals
        # The chosen label is always among the listed scores, in both output modes.
        return output["label"], output["scores"][output["label"]]

    def _result(self, probabilities: np.ndarray, label_id: int, option: ClassifyOptions) -> dict:
        labels = self._classifier.labels
        if self.params.output == "sentiment":
            return sentiment_result(labels, probabilities, self.params.neutral_threshold)
        top_k = option.top_k or self.params.top_k_scores
        best = np.argsort(-probabilities)[:top_k]
        # The chosen label is always listed, also when the out-of-scope rule overrules the top one.
        shown = [*best, label_id] if label_id not in best else best
        return {"label": labels[label_id], "scores": {labels[int(i)]: round(float(probabilities[i]), 4) for i in shown}}
