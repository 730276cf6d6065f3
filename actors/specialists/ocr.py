"""OCR of document pages with RapidOCR (PP-OCRv6 on onnxruntime) or a system tesseract:
lines with word boxes in reading order; pages with a PDF text layer pass through unread."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import threading
from typing import Annotated, Any, ClassVar, Iterator, Literal, Protocol, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict, Field

from actors.documents.model import Box, Line, Page, PageImage, Word
from actors.documents.pages import iter_pages, reading_order, union_box
from actors.invocation import Invocation, StreamItem
from actors.specialists.base import Specialist, package_version
from cluster.config import DocumentLimits
from cluster.errors import ConfigError, Unavailable, ValidationFailed

# The recognition models, pinned here rather than left to rapidocr's defaults so describe() is true.
RAPID_OCR_VERSION, RAPID_MODEL_TYPE = "PP-OCRv6", "small"


class OcrParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engine: Literal["rapidocr", "tesseract"] = Field(
        "rapidocr", description="OCR engine: rapidocr (bundled models) or tesseract (needs the tesseract binary on PATH)."
    )
    threads: int | None = Field(
        None, ge=1, le=256, description="CPU threads one page's inference may use; None lets onnxruntime use every core."
    )
    limits: DocumentLimits = Field(default_factory=DocumentLimits, description="Size, page and pixel limits of a document.")


class OcrOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    pages: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, min_length=1, description="1-based page numbers to read; all pages when absent."
    )


class Engine(Protocol):
    """Reads the text detections of one RGB page, in no particular order, with each one's
    text slope (dy/dx) for ordering them."""

    def lines(self, pixels: np.ndarray) -> tuple[list[Line], list[float]]: ...


class OcrSpecialist(Specialist):
    kind: ClassVar[str] = "ocr"
    Params: ClassVar[type[BaseModel]] = OcrParams
    Options: ClassVar[type[BaseModel]] = OcrOptions
    reads_documents: ClassVar[bool] = True

    def _model_name(self) -> str:
        if self.params.engine == "tesseract":
            return "tesseract (system binary)"
        return f"{package_version('rapidocr')} ({RAPID_OCR_VERSION} {RAPID_MODEL_TYPE} det/rec, {package_version('onnxruntime')})"

    def _load(self) -> None:
        if self.params.engine == "tesseract":
            self._engine: Engine = TesseractEngine(self.params.limits.page_timeout_s)
        else:
            self._engine = RapidOcrEngine(self.params.threads)

    def _predict(self, texts: list[str], options: list[Any]) -> list[dict]:
        raise ValidationFailed("the ocr agent reads a document; the request carries text")

    def read_page(self, image: PageImage) -> Page:
        """The page's lines in reading order: its text layer as is, else OCR of its pixels."""
        if image.text_layer is not None:
            return image.text_layer
        if image.pixels is None:
            raise ValueError(f"page {image.number} has neither pixels nor a text layer")
        self.load()
        lines, slopes = self._engine.lines(image.pixels)
        height, width = image.pixels.shape[:2]
        return Page(number=image.number, width=width, height=height, lines=reading_order(lines, slopes), source="ocr")

    def stream(self, invocation: Invocation) -> Iterator[StreamItem]:
        if invocation.document is None:
            raise ValidationFailed("the ocr agent reads a document; the request carries text")
        options = self.validate_options(invocation.options)
        self.load()
        pages = []
        for image in iter_pages(invocation.document, self.params.limits, options.pages):
            invocation.check_deadline()
            pages.append(self.read_page(image).to_dict())
        yield self.result({"pages": pages})

    def signals(self, output: dict) -> tuple[str | None, float | None]:
        scores = [line["score"] for page in output["pages"] for line in page["lines"]]
        return None, (sum(scores) / len(scores) if scores else None)


# ---- rapidocr ----


class RapidOcrEngine:
    def __init__(self, threads: int | None):
        from rapidocr import ModelType, OCRVersion, RapidOCR  # heavy (cv2, omegaconf); only when used

        settings: dict[str, Any] = {
            "Global.log_level": "warning",
            "Global.return_word_box": True,
            "Det.ocr_version": OCRVersion(RAPID_OCR_VERSION),
            "Det.model_type": ModelType(RAPID_MODEL_TYPE),
            "Rec.ocr_version": OCRVersion(RAPID_OCR_VERSION),
            "Rec.model_type": ModelType(RAPID_MODEL_TYPE),
        }
        if threads is not None:
            settings["EngineConfig.onnxruntime.intra_op_num_threads"] = threads
        self._ocr = RapidOCR(params=settings)
        # RapidOCR.__call__ writes per-call settings and the detector's preprocessing op onto
        # shared objects, so concurrent pages could see each other's state.
        self._lock = threading.Lock()
        # rapidocr opens its models on first use; one small page here moves that cost (and any
        # broken model file) to load time instead of the first request.
        self.lines(_warm_up_page())

    def lines(self, pixels: np.ndarray) -> tuple[list[Line], list[float]]:
        bgr = np.ascontiguousarray(pixels[:, :, ::-1])  # PaddleOCR models were trained on BGR
        with self._lock:
            output = self._ocr(bgr)
        if not output.txts:
            return [], []
        words = _aligned_words(output.txts, output.word_results)
        lines = [_line(*detection) for detection in zip(output.txts, output.boxes, output.scores, words)]
        return lines, _slopes(output.boxes)


def _line(text: str, polygon: Any, score: float, words: tuple[Word, ...]) -> Line:
    box = _axis_box(polygon)
    return Line(text=text, box=box, score=float(score), words=words or _spread_words(text, box, float(score)))


def _warm_up_page() -> np.ndarray:
    image = Image.new("RGB", (240, 64), "white")
    ImageDraw.Draw(image).text((12, 12), "OCR 123", fill="black", font=ImageFont.load_default(size=32))
    return np.asarray(image)


# Only detections this many times wider than tall have edges long enough to give a slope.
LONG_LINE = 3.0


def _slopes(polygons: Sequence[Any]) -> list[float]:
    """Each detection's text slope: its top and bottom edges' mean slope when it is long,
    else the median of the long ones (a short box's edges say little about the page)."""
    own = [_edge_slope(np.asarray(polygon, dtype=float)[:4]) for polygon in polygons]
    reliable = [slope for slope in own if slope is not None]
    fallback = float(np.median(reliable)) if reliable else 0.0
    return [fallback if slope is None else slope for slope in own]


def _edge_slope(polygon: np.ndarray) -> float | None:
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = polygon  # clockwise from top-left
    if x1 - x0 <= LONG_LINE * abs(y3 - y0) or x2 <= x3:
        return None
    return float(((y1 - y0) / (x1 - x0) + (y2 - y3) / (x2 - x3)) / 2)


def _aligned_words(texts: Sequence[str], word_results: Sequence[Any]) -> list[tuple[Word, ...]]:
    """Each line's words; rapidocr drops the word entry of a line it found no word boxes for,
    so entries are matched to lines by their text rather than by position."""
    aligned: list[tuple[Word, ...]] = []
    remaining = list(word_results or ())
    for text in texts:
        entry = remaining[0] if remaining else ()
        if entry and _compact("".join(word[0] for word in entry)) == _compact(text):
            aligned.append(tuple(Word(text=w[0], box=_axis_box(w[2]), score=float(w[1])) for w in entry))
            remaining.pop(0)
        else:
            aligned.append(())
    return aligned


def _spread_words(text: str, box: Box, score: float) -> tuple[Word, ...]:
    # Without word boxes from the engine, share the line's width out by character count.
    x0, y0, x1, y1 = box
    per_char = (x1 - x0) / max(len(text), 1)
    words, start = [], 0
    for token in text.split():
        start = text.index(token, start)
        words.append(Word(text=token, box=(x0 + start * per_char, y0, x0 + (start + len(token)) * per_char, y1), score=score))
        start += len(token)
    return tuple(words)


def _compact(text: str) -> str:
    return "".join(text.split())


def _axis_box(polygon: Any) -> Box:
    points = np.asarray(polygon, dtype=float).reshape(-1, 2)
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    return (float(x0), float(y0), float(x1), float(y1))


# ---- tesseract ----


class TesseractEngine:
    def __init__(self, timeout_s: float):
        self._binary = shutil.which("tesseract")
        if self._binary is None:
            raise ConfigError("engine: tesseract is not installed (no tesseract binary on PATH); install it or use engine rapidocr")
        self._timeout_s = timeout_s

    def lines(self, pixels: np.ndarray) -> tuple[list[Line], float]:
        png = io.BytesIO()
        Image.fromarray(pixels).save(png, format="PNG")
        try:
            done = subprocess.run(
                [self._binary, "stdin", "stdout", "tsv"],
                input=png.getvalue(),
                capture_output=True,
                timeout=self._timeout_s,
                check=True,
            )
        except subprocess.TimeoutExpired:
            raise Unavailable(f"tesseract took more than {self._timeout_s:g} s on one page", retry_after_s=1) from None
        except subprocess.CalledProcessError as error:
            reason = error.stderr.decode(errors="replace").strip()[-300:]
            raise Unavailable(f"tesseract failed: {reason}", retry_after_s=1) from None
        lines = _tesseract_lines(done.stdout.decode("utf-8", errors="replace"))
        return lines, _word_slopes(lines)


def _tesseract_lines(tsv: str) -> list[Line]:
    """Tesseract's TSV word rows (level 5) grouped into its lines."""
    grouped: dict[tuple[str, str, str], list[Word]] = {}
    for row in csv.DictReader(io.StringIO(tsv), delimiter="\t", quoting=csv.QUOTE_NONE):
        if row.get("level") != "5" or not (row.get("text") or "").strip():
            continue
        left, top, width, height = (float(row[key]) for key in ("left", "top", "width", "height"))
        confidence = max(float(row["conf"]), 0.0) / 100  # -1 marks a word tesseract gave no confidence
        word = Word(text=row["text"].strip(), box=(left, top, left + width, top + height), score=confidence)
        grouped.setdefault((row["block_num"], row["par_num"], row["line_num"]), []).append(word)
    return [_tesseract_line(words) for words in grouped.values()]


def _tesseract_line(words: list[Word]) -> Line:
    score = sum(w.score for w in words) / len(words)
    return Line(text=" ".join(w.text for w in words), box=union_box([w.box for w in words]), score=score, words=tuple(words))


def _word_slopes(lines: list[Line]) -> list[float]:
    """Each tesseract line's slope through its word centres when it has three words or
    more, else the median of those (tesseract's word boxes are level rectangles)."""
    own = [_fitted_slope(line.words) if len(line.words) >= 3 else None for line in lines]
    reliable = [slope for slope in own if slope is not None]
    fallback = float(np.median(reliable)) if reliable else 0.0
    return [fallback if slope is None else slope for slope in own]


def _fitted_slope(words: Sequence[Word]) -> float:
    xs = [(w.box[0] + w.box[2]) / 2 for w in words]
    ys = [(w.box[1] + w.box[3]) / 2 for w in words]
    return float(np.polyfit(xs, ys, 1)[0])
