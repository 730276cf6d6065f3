"""The ``classify`` specialist: serves any registered sequence classifier (float or int8),
fetched from the registry with its checksums verified; optionally maps to sentiment labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from actors.classifier_io import TextClassifier
from actors.specialists.base import Specialist
from cluster.errors import ConfigError
from cluster.registry import Manifest, ModelRegistry
from cluster.storage import Storage

SENTIMENT_LABELS = ("POSITIVE", "NEGATIVE", "NEUTRAL", "MIXED")
DEFAULT_MAX_LENGTH = 128


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


@dataclass(frozen=True)
class OutOfScopeRule:
    """A registered model answers ``label`` when its top probability is under ``threshold``: the
    rule its recipe evaluated it with (``evaluation.oos_label`` / ``oos_threshold``), so what is
    served matches the metrics in its manifest. Applies to ``output: labels``."""

    label: str
    threshold: float

    @classmethod
    def of(cls, manifest: Manifest) -> OutOfScopeRule | None:
        evaluation = manifest.recipe.get("evaluation") or {}
        label, threshold = evaluation.get("oos_label"), float(evaluation.get("oos_threshold") or 0.0)
        return cls(label, threshold) if label in manifest.labels and threshold > 0 else None


class ClassifySpecialist(Specialist):
    kind: ClassVar[str] = "classify"
    Params: ClassVar[type[BaseModel]] = ClassifyParams
    Options: ClassVar[type[BaseModel]] = ClassifyOptions
    batchable: ClassVar[bool] = True

    def _model_name(self) -> str:
        return self.params.model

    def _extras(self) -> dict:
        return {"labels": self._classifier.labels} if self._loaded else {}

    def _model(self) -> tuple[Path, Manifest | None]:
        """The model's local directory and, for a registered model, its manifest."""
        if not self.params.model.startswith("registry://"):
            return Path(self.params.model), None
        registry = ModelRegistry(Storage(self.params.storage or os.environ.get("BATON_STORAGE", ".baton")))
        manifest = registry.manifest(*registry.resolve(self.params.model))
        return registry.fetch(f"{manifest.name}:{manifest.version}"), manifest

    def _load(self) -> None:
        directory, manifest = self._model()
        self._out_of_scope = OutOfScopeRule.of(manifest) if manifest else None
        # Serve as the model was measured: the recipe's truncation unless the orchestra overrides it.
        trained = (manifest.recipe.get("training") or {}).get("max_length") if manifest else None
        self._classifier = TextClassifier(directory, self.params.max_length or trained or DEFAULT_MAX_LENGTH)
        if self._out_of_scope and self._out_of_scope.label not in self._classifier.labels:
            raise ConfigError(f"{self.params.model}: out-of-scope label {self._out_of_scope.label!r} is not a label of the model files")

    def _predict(self, texts: list[str], options: list[Any]) -> list[dict]:
        probabilities = self._classifier(texts)
        return [self._result(row, option) for row, option in zip(probabilities, options)]

    def _result(self, probabilities: np.ndarray, option: ClassifyOptions) -> dict:
        if self.params.output == "sentiment":
            return sentiment_result(self._classifier.labels, probabilities, self.params.neutral_threshold)
        top_k = option.top_k or self.params.top_k_scores
        best = np.argsort(-probabilities)[:top_k]
        labels = self._classifier.labels
        scores = {labels[int(i)]: round(float(probabilities[i]), 4) for i in best}
        rule = self._out_of_scope
        if rule is None or probabilities[best[0]] >= rule.threshold:
            return {"label": labels[int(best[0])], "scores": scores}
        return {"label": rule.label, "scores": scores | {rule.label: round(float(probabilities[labels.index(rule.label)]), 4)}}
