"""Image moderation, Rekognition-style: unsafe-content labels with scores, and a verdict.

The model is NudeNet 3.4's ``320n.onnx`` (a YOLOv8n body-part detector at 320×320 input), which
ships inside the ``nudenet`` wheel and runs here on onnxruntime through nudenet's own pre- and
post-processing. It detects 18 classes of body parts, each exposed or covered, plus male and
female faces; it does not judge violence, drugs, weapons, gore or text. A label is a class
detected at least ``min_score`` (the class's best detection); the image is unsafe when a class in
``unsafe_classes`` scores at least ``unsafe_threshold``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterator

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from actors.invocation import Invocation, StreamItem
from actors.specialists.base import Specialist, package_version
from actors.specialists.faces import PageOptions, onnx_session, page_pixels
from cluster.config import DocumentLimits
from cluster.errors import ConfigError, ValidationFailed

# NudeNet 3.4's classes, in the model's output order (nudenet.nudenet.__labels).
CLASSES = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
# The explicit-exposure classes; exposed feet, belly, armpits or a male chest are not unsafe by default.
DEFAULT_UNSAFE = (
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
)
MODEL_FILE = "320n.onnx"
# The square input side 320n.onnx was trained at (NudeDetector's default inference_resolution).
INPUT_SIZE = 320


class ModerationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_score: float = Field(
        0.4, ge=0.2, le=1.0, description="Lowest detection score a label is reported at (NudeNet keeps nothing under 0.2)."
    )
    unsafe_threshold: float = Field(
        0.5, ge=0.2, le=1.0, description="An image is unsafe when a class in unsafe_classes is detected at this score or more."
    )
    unsafe_classes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_UNSAFE),
        description=f"NudeNet classes that make an image unsafe; any of: {', '.join(CLASSES)}.",
    )
    threads: int | None = Field(
        None, ge=1, le=256, description="CPU threads of onnxruntime per image; None lets onnxruntime use every core."
    )
    limits: DocumentLimits = Field(default_factory=DocumentLimits, description="Size, page and pixel limits of the input document.")

    @field_validator("unsafe_classes")
    @classmethod
    def _known_classes(cls, classes: list[str]) -> list[str]:
        unknown = [name for name in classes if name not in CLASSES]
        if unknown:
            raise ValueError(f"unknown classes {unknown}; known: {', '.join(CLASSES)}")
        if len(set(classes)) != len(classes):
            raise ValueError("duplicate classes")
        return classes

    @model_validator(mode="after")
    def _threshold_reportable(self) -> ModerationParams:
        if self.unsafe_threshold < self.min_score:
            raise ValueError("unsafe_threshold must be at least min_score, or an unsafe image could list no unsafe label")
        return self


class ModerationSpecialist(Specialist):
    kind: ClassVar[str] = "moderation"
    reads_documents: ClassVar[bool] = True
    Params: ClassVar[type[BaseModel]] = ModerationParams
    Options: ClassVar[type[BaseModel]] = PageOptions

    def _model_name(self) -> str:
        return f"NudeNet {MODEL_FILE} ({package_version('nudenet')} weights, {package_version('onnxruntime')})"

    def _extras(self) -> dict:
        return {"input": "image", "labels": list(CLASSES), "unsafe_classes": list(self.params.unsafe_classes)}

    def _load(self) -> None:
        from importlib.resources import files

        from nudenet import nudenet

        shipped = tuple(getattr(nudenet, "__labels"))
        if shipped != CLASSES:
            raise ConfigError(f"nudenet {package_version('nudenet')} has other classes than the ones this agent maps: {shipped}")
        self._read, self._decode = nudenet._read_image, nudenet._postprocess
        self._session = onnx_session(str(files("nudenet") / MODEL_FILE), self.params.threads)
        self._input = self._session.get_inputs()[0].name

    def _predict(self, texts: list[str], options: list[Any]) -> list[dict]:
        raise ValidationFailed("the moderation agent reads an image; send a document")

    def stream(self, invocation: Invocation) -> Iterator[StreamItem]:
        options = self.validate_options(invocation.options)
        pixels = page_pixels(invocation, self.kind, self.params.limits, options.page)
        self.load()
        invocation.check_deadline()
        yield self.result(self.moderate(pixels))

    def detections(self, pixels: np.ndarray) -> list[dict]:
        """NudeNet's detections (score >= 0.2 after its NMS) in an RGB uint8 image: class, score, box [x, y, w, h]."""
        self.load()
        # nudenet reads files with cv2.imread, so its pipeline expects BGR: give it the same.
        blob, x_ratio, y_ratio, x_pad, y_pad, width, height = self._read(np.ascontiguousarray(pixels[:, :, ::-1]), INPUT_SIZE)
        outputs = self._session.run(None, {self._input: blob})
        return self._decode(outputs, x_pad, y_pad, x_ratio, y_ratio, width, height, INPUT_SIZE, INPUT_SIZE)

    def moderate(self, pixels: np.ndarray) -> dict:
        """{"labels": [{"label", "score"}] best first, "unsafe": bool} for an RGB uint8 image."""
        best: dict[str, float] = {}
        for detection in self.detections(pixels):
            best[detection["class"]] = max(best.get(detection["class"], 0.0), detection["score"])
        labels = [
            {"label": name, "score": round(score, 4)}
            for name, score in sorted(best.items(), key=lambda item: -item[1])
            if score >= self.params.min_score
        ]
        unsafe = any(best.get(name, 0.0) >= self.params.unsafe_threshold for name in self.params.unsafe_classes)
        return {"labels": labels, "unsafe": unsafe}

    def signals(self, output: dict) -> tuple[str | None, float | None]:
        unsafe = set(self.params.unsafe_classes)
        scores = [label["score"] for label in output["labels"] if label["label"] in unsafe]
        return ("unsafe" if output["unsafe"] else "safe"), (max(scores) if scores else 0.0)
