"""The shapes every document module shares: a page's words and lines with boxes (from OCR or
a PDF text layer), and a decoded page ready for OCR. Plain dataclasses, picklable."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in page pixels, origin top-left


@dataclass(frozen=True)
class Word:
    text: str
    box: Box
    score: float


@dataclass(frozen=True)
class Line:
    """One printed line in reading order; ``words`` are its words left to right."""

    text: str
    box: Box
    score: float
    words: tuple[Word, ...] = ()


@dataclass
class Page:
    """The text of one page as lines with boxes; ``source`` says where it came from."""

    number: int  # 1-based
    width: int
    height: int
    lines: list[Line] = field(default_factory=list)
    source: Literal["ocr", "text_layer"] = "ocr"

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "page": self.number,
            "width": self.width,
            "height": self.height,
            "source": self.source,
            "lines": [
                {
                    "text": line.text,
                    "box": [round(v, 1) for v in line.box],
                    "score": round(line.score, 4),
                    "words": [{"text": w.text, "box": [round(v, 1) for v in w.box], "score": round(w.score, 4)} for w in line.words],
                }
                for line in self.lines
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Page:
        lines = [
            Line(
                text=line["text"],
                box=tuple(line["box"]),
                score=line["score"],
                words=tuple(Word(w["text"], tuple(w["box"]), w["score"]) for w in line.get("words", [])),
            )
            for line in data["lines"]
        ]
        return cls(number=data["page"], width=data["width"], height=data["height"], lines=lines, source=data.get("source", "ocr"))


@dataclass
class PageImage:
    """A decoded page: its pixels (RGB, uint8, H×W×3) unless its text layer made OCR needless."""

    number: int  # 1-based
    width: int
    height: int
    pixels: np.ndarray | None = None
    text_layer: Page | None = None
