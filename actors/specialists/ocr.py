"""OCR of document pages with RapidOCR (PP-OCRv6 on onnxruntime) or a system tesseract:
lines with word boxes in reading order; pages with a PDF text layer pass through unread. A
page alone in the replica is read across its cores; overlapping pages are read side by side."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import threading
from contextlib import contextmanager
from typing import Annotated, Any, Callable, ClassVar, Iterator, Literal, Protocol, Sequence

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
        None, ge=1, le=256,
        description="CPU threads a page's inference may use when it is the only page the replica is reading; None lets onnxruntime use every core.",
    )
    spin: bool = Field(
        True,
        description=(
            "Let onnxruntime's threads spin between operators while a page is read on several: a little faster on "
            "idle cores, slower and costlier where other processes share them (a replica's usual lot)."
        ),
    )
    side_by_side: int = Field(
        1, ge=1, le=64,
        description=(
            "Pages the replica reads at once while several wait, each on a single-threaded engine of its own "
            "(the cores the replica may use); 1 reads one page at a time with 'threads' threads."
        ),
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
        self._engines = EngineSet.build(self._engine_factory(), self.params.threads, self.params.side_by_side)

    def _engine_factory(self) -> Callable[[int | None], Engine]:
        if self.params.engine == "tesseract":
            timeout_s = self.params.limits.page_timeout_s
            return lambda threads: TesseractEngine(timeout_s)
        spin = self.params.spin
        return lambda threads: RapidOcrEngine(threads, spin)

    def _predict(self, texts: list[str], options: list[Any]) -> list[dict]:
        raise ValidationFailed("the ocr agent reads a document; the request carries text")

    def read_page(self, image: PageImage) -> Page:
        """The page's lines in reading order: its text layer as is, else OCR of its pixels."""
        if image.text_layer is not None:
            return image.text_layer
        if image.pixels is None:
            raise ValueError(f"page {image.number} has neither pixels nor a text layer")
        self.load()
        with self._engines.engine() as engine:
            lines, slopes = engine.lines(image.pixels)
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


class EngineSet:
    """A replica's OCR engines. A page alone in the replica gets the wide engine, whose
    operators spread over the cores; pages that overlap get single-threaded engines, side by
    side (a small model's operators scale poorly across cores, whole pages do). Wide and narrow
    never run at once, so the replica never runs more threads than one of the two kinds asks."""

    def __init__(self, wide: Engine, narrow: Sequence[Engine] = ()):
        self._wide, self._free = wide, list(narrow)
        self._narrow_count = len(self._free)
        self._changed = threading.Condition()
        self._in_flight = 0  # pages waiting for an engine or being read
        self._wide_busy = False

    @classmethod
    def build(cls, make: Callable[[int | None], Engine], threads: int | None, side_by_side: int) -> EngineSet:
        """One engine with ``threads`` threads, plus ``side_by_side`` single-threaded ones when more than one."""
        narrow = [make(1) for _ in range(side_by_side)] if side_by_side > 1 else []
        return cls(make(threads), narrow)

    @contextmanager
    def engine(self) -> Iterator[Engine]:
        """The engine this page may use now; waits while the others hold the cores."""
        with self._changed:
            self._in_flight += 1
            try:
                self._changed.wait_for(self._can_take)
            except BaseException:
                self._leave()
                raise
            engine = self._take()
        try:
            yield engine
        finally:
            with self._changed:
                if engine is self._wide:
                    self._wide_busy = False
                else:
                    self._free.append(engine)
                self._leave()

    def _can_take(self) -> bool:
        if self._wide_busy:
            return False
        if self._alone():
            return True
        return bool(self._free)

    def _alone(self) -> bool:
        """Read on the wide engine: no narrow ones, or this page is the only one in flight."""
        return not self._narrow_count or (self._in_flight == 1 and len(self._free) == self._narrow_count)

    def _take(self) -> Engine:
        if self._alone():
            self._wide_busy = True
            return self._wide
        return self._free.pop()

    def _leave(self) -> None:
        self._in_flight -= 1
        self._changed.notify_all()


# ---- rapidocr ----


class RapidOcrEngine:
    def __init__(self, threads: int | None, spin: bool = True):
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
        # broken model file) to load time instead of the first request, and opens them with
        # this engine's spinning setting.
        with _onnxruntime_spinning(spin):
            self.lines(_warm_up_page())
        if None in (self._ocr.text_det, self._ocr.text_cls, self._ocr.text_rec):
            raise ConfigError("rapidocr did not open its detection, angle and recognition models on the warm-up page")

    def lines(self, pixels: np.ndarray) -> tuple[list[Line], list[float]]:
        bgr = np.ascontiguousarray(pixels[:, :, ::-1])  # PaddleOCR models were trained on BGR
        with self._lock:
            output = self._ocr(bgr)
        if not output.txts:
            return [], []
        words = _aligned_words(output.txts, output.word_results)
        lines = [_line(*detection) for detection in zip(output.txts, output.boxes, output.scores, words)]
        return lines, _slopes(output.boxes)


_SESSION_OPTIONS = threading.Lock()


@contextmanager
def _onnxruntime_spinning(allowed: bool) -> Iterator[None]:
    """rapidocr builds its onnxruntime sessions itself, with no setting for spinning threads: its
    SessionOptions factory is wrapped while one engine opens its models (one engine at a time)."""
    from rapidocr.inference_engine.onnxruntime.main import OrtInferSession

    with _SESSION_OPTIONS:
        if allowed:
            yield
            return
        original = OrtInferSession.__dict__["_init_sess_opts"]

        def without_spinning(cfg: Any) -> Any:
            options = original.__func__(cfg)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return options

        OrtInferSession._init_sess_opts = staticmethod(without_spinning)
        try:
            yield
        finally:
            OrtInferSession._init_sess_opts = original


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
