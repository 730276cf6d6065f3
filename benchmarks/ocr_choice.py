"""The measurement behind the OCR specialist's choices: field recall on 100 scanned SROIE
receipts and seconds per page for rapidocr 3.10 (PP-OCRv6), rapidocr-onnxruntime 1.4.4
(PP-OCRv4, run from a scratch venv), deskewed input (three estimators) and binarised input.

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.ocr_choice --variant default --dump /tmp/sroie_ocr
    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.ocr_choice --variant deskew-hough   # etc., see --help
    /tmp/ocrvenv/bin/python -m benchmarks.ocr_choice --variant legacy
      (python3 -m venv /tmp/ocrvenv; /tmp/ocrvenv/bin/pip install rapidocr-onnxruntime==1.4.4 pydantic pyyaml pypdfium2)
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from actors.documents.model import Line, Page, PageImage
from actors.documents.pages import decode_pages, reading_order
from actors.invocation import Document
from cluster.config import DocumentLimits

DATASET = Path(__file__).resolve().parents[2] / "shared/datasets/sroie-dev"
FIELDS = ("company", "date", "address", "total")


# ---- the metric ----


def _normalised(text: str) -> str:
    return " ".join(text.casefold().split())


def _compact(text: str) -> str:
    return re.sub(r"[\s,]", "", text.casefold())


def _number_found(label: str, text: str) -> bool:
    number = re.search(r"\d[\d,]*(?:\.\d+)?", label)
    if number is None:
        return False
    return re.search(rf"(?<![\d.]){re.escape(number.group())}(?!\d)", text) is not None


def field_hits(labels: dict[str, str], text: str) -> dict[str, bool]:
    """Whether each labelled value occurs in the OCR text (address may span lines)."""
    found = {name: _normalised(labels[name]) in _normalised(text) for name in ("company", "date", "address")}
    found["address"] = found["address"] or _compact(labels["address"]) in _compact(text)
    found["total"] = _number_found(labels["total"], text)
    return found


# ---- the variants ----


def deskewed(pixels: np.ndarray) -> np.ndarray:
    """Levelled by the angle of the ink's minimum-area rectangle (OpenCV)."""
    gray = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    ink = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)[1]
    points = cv2.findNonZero(ink)
    if points is None:
        return pixels
    angle = cv2.minAreaRect(points)[2]
    # OpenCV reports the rectangle's angle in [-90, 0) or (0, 90] depending on the version.
    angle = angle + 90 if angle < -45 else angle - 90 if angle > 45 else angle
    return _rotated(pixels, angle)


def deskewed_hough(pixels: np.ndarray) -> np.ndarray:
    """Levelled by the median angle of near-horizontal Hough line segments."""
    gray = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, 50, 150)
    segments = cv2.HoughLinesP(edges, 1, np.pi / 720, threshold=80, minLineLength=gray.shape[1] // 4, maxLineGap=20)
    if segments is None:
        return pixels
    angles = [np.degrees(np.arctan2(y1 - y0, x1 - x0)) for x0, y0, x1, y1 in segments.reshape(-1, 4)]
    near_flat = [angle for angle in angles if abs(angle) < 15]
    return _rotated(pixels, float(np.median(near_flat))) if near_flat else pixels


_detector = None


def deskewed_by_detector(pixels: np.ndarray) -> np.ndarray:
    """Levelled by the median slope of rapidocr's own text detections (one extra det pass)."""
    global _detector
    from rapidocr import RapidOCR

    from actors.specialists.ocr import _slopes

    if _detector is None:
        _detector = RapidOCR(params={"Global.log_level": "warning", "Global.use_rec": False, "Global.use_cls": False})
    found = _detector(np.ascontiguousarray(pixels[:, :, ::-1]))
    if found.boxes is None or len(found.boxes) == 0:
        return pixels
    return _rotated(pixels, float(np.degrees(np.arctan(np.median(_slopes(found.boxes))))))


def _rotated(pixels: np.ndarray, angle: float) -> np.ndarray:
    """Turned counter-clockwise by ``angle`` degrees (text sloping down to the right has a
    positive angle and comes out level), on white; angles under 0.3° are left alone."""
    if abs(angle) < 0.3:
        return pixels
    height, width = pixels.shape[:2]
    rotation = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    return cv2.warpAffine(pixels, rotation, (width, height), flags=cv2.INTER_CUBIC, borderValue=(255, 255, 255))


def otsu(pixels: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    return cv2.cvtColor(cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)[1], cv2.COLOR_GRAY2RGB)


def adaptive(pixels: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    binary = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_GAUSSIAN_C, cv2.THRESH_BINARY, 31, 15)
    return cv2.cvtColor(binary, cv2.COLOR_GRAY2RGB)


PREPROCESS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "default": lambda pixels: pixels,
    "deskew": deskewed,
    "deskew-hough": deskewed_hough,
    "deskew-det": deskewed_by_detector,
    "otsu": otsu,
    "adaptive": adaptive,
    "legacy": lambda pixels: pixels,
}


def project_reader(threads: int | None) -> Callable[[PageImage], Page]:
    from actors.specialists.ocr import OcrSpecialist

    specialist = OcrSpecialist({"threads": threads})
    specialist.load()
    return specialist.read_page


def legacy_reader(threads: int | None) -> Callable[[PageImage], Page]:
    """rapidocr-onnxruntime 1.4.4 (PP-OCRv4 mobile), with the specialist's reading order."""
    from rapidocr_onnxruntime import RapidOCR

    from actors.specialists.ocr import _slopes

    engine = RapidOCR(intra_op_num_threads=threads or -1)

    def read(image: PageImage) -> Page:
        result, _ = engine(np.ascontiguousarray(image.pixels[:, :, ::-1]))
        lines = [Line(text=text, box=_box(polygon), score=float(score)) for polygon, text, score in result or []]
        slopes = _slopes([polygon for polygon, _, _ in result or []])
        return Page(number=image.number, width=image.width, height=image.height, lines=reading_order(lines, slopes))

    return read


def _box(polygon) -> tuple[float, float, float, float]:
    points = np.asarray(polygon, dtype=float)
    return (*points.min(axis=0).tolist(), *points.max(axis=0).tolist())


# ---- the run ----


def run(variant: str, limit: int, threads: int | None, dump: Path | None) -> dict:
    read = legacy_reader(threads) if variant == "legacy" else project_reader(threads)
    preprocess = PREPROCESS[variant]
    hits = {name: 0 for name in FIELDS}
    seconds, cpu_seconds = [], []
    receipts = sorted(DATASET.glob("*.jpg"))[:limit]
    for path in receipts:
        image = decode_pages(Document(path.read_bytes(), "image/jpeg", path.name), DocumentLimits())[0]
        started, cpu_started = time.perf_counter(), time.process_time()
        image.pixels = preprocess(image.pixels)
        page = read(image)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
        labels = json.loads(path.with_suffix(".json").read_text())
        for name, hit in field_hits(labels, page.text).items():
            hits[name] += hit
        if dump is not None:
            (dump / f"{path.stem}.json").write_text(json.dumps(page.to_dict()))
    return {
        "variant": variant,
        "receipts": len(receipts),
        **{name: round(hits[name] / len(receipts), 3) for name in FIELDS},
        "s_per_page_p50": round(statistics.median(seconds), 2),
        "s_per_page_mean": round(statistics.fmean(seconds), 2),
        # CPU seconds (all threads) are less swayed than wall time by other load on the machine.
        "cpu_s_per_page_p50": round(statistics.median(cpu_seconds), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(PREPROCESS), default="default")
    parser.add_argument("--limit", type=int, default=100, help="receipts to read (sorted by name)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--dump", type=Path, default=None, help="folder for one Page.to_dict() JSON per receipt")
    args = parser.parse_args()
    if args.dump is not None:
        args.dump.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run(args.variant, args.limit, args.threads, args.dump)))


if __name__ == "__main__":
    main()
