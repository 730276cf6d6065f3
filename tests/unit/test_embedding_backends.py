"""Embedder's ONNX Runtime backends (fp32 and int8) against the torch one on the real MiniLM, the
cache of exported models, and the router setting that picks the backend."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from pydantic import ValidationError

import actors.embedding as embedding
from actors.embedding import Embedder, artefact_key, cached_artefact
from actors.router import build_router
from cluster.config import OrchestraConfig, RouterSettings

TEXTS = [
    "what's my account balance",
    "book me a table for two at an italian place tonight",
    "how do i change the oil for my car",
    "tell me a joke",
    "Will it rain in Berlin tomorrow?",
    "transfer 50 dollars to savings and then freeze my credit card please",
    "I absolutely loved this hotel: the staff were wonderful and the room was spotless.",
    "set an alarm for 6 am",
    "what is the exchange rate between euros and dollars",
    "who are you",
    "my flight to rome got cancelled, can you rebook it",
    "ok",
    "please add milk, eggs and two loaves of bread to my shopping list",
    "how long does it take to cook a medium rare steak",
    "what's the capital of australia",
    "remind me to call mom",
]
# Longer than the model's 256 tokens: truncated alike by every backend.
LONG = " ".join(["the quarterly report says revenue grew while costs fell"] * 40)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("baton-cache")


@pytest.fixture(scope="module")
def embedders(cache_dir):
    return {backend: Embedder(torch_threads=1, backend=backend, cache_dir=cache_dir) for backend in ("torch", "onnx", "onnx-int8")}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


@pytest.mark.parametrize("backend", ["torch", "onnx", "onnx-int8"])
def test_vectors_are_float32_unit_rows_one_per_text(embedders, backend):
    vectors = embedders[backend]([*TEXTS, LONG])
    assert vectors.shape == (len(TEXTS) + 1, 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_onnx_fp32_is_the_torch_embedding(embedders):
    torch_vectors = embedders["torch"]([*TEXTS, LONG])
    assert cosines(embedders["onnx"]([*TEXTS, LONG]), torch_vectors).min() > 0.9999


def test_onnx_int8_stays_close_to_torch(embedders):
    # Measured on 400 CLINC150 requests: mean 0.999, min 0.997; "ok" alone 0.994 (short texts lose most);
    # whole-tensor dynamic quantization gave mean 0.993, min 0.963 (docs/benchmarks.md).
    agreement = cosines(embedders["onnx-int8"]([*TEXTS, LONG]), embedders["torch"]([*TEXTS, LONG]))
    assert agreement.mean() > 0.998
    assert agreement.min() > 0.99


def test_int8_keeps_which_text_is_nearest(embedders):
    """What the router relies on: the nearest neighbour of each text among the others is the same."""
    torch_vectors, int8_vectors = embedders["torch"](TEXTS), embedders["onnx-int8"](TEXTS)
    nearest = lambda v: np.argsort(-(v @ v.T), axis=1)[:, 1]  # noqa: E731 - [:, 0] is the text itself
    assert np.mean(nearest(torch_vectors) == nearest(int8_vectors)) >= 0.9


def test_onnx_batch_of_one_equals_its_row_in_a_batch_of_sixteen(embedders):
    together = embedders["onnx"](TEXTS)
    alone = np.stack([embedders["onnx"]([text])[0] for text in TEXTS])
    assert np.allclose(alone, together, atol=1e-5)


def test_int8_batch_of_one_equals_its_row_in_a_batch_of_sixteen(embedders):
    # Each token's activations are quantized on their own, so batch-mates (and their padding)
    # do not move a request's vector (whole-batch dynamic quantization moved it to cosine 0.957).
    together = embedders["onnx-int8"](TEXTS)
    alone = np.stack([embedders["onnx-int8"]([text])[0] for text in TEXTS])
    assert cosines(alone, together).min() > 0.999


def test_empty_batch(embedders):
    assert embedders["onnx"]([]).shape == (0, 384)


def test_exports_are_built_once_and_reused(embedders, cache_dir, monkeypatch):
    built = sorted(p.name for p in (cache_dir / "embeddings").iterdir() if p.is_dir())
    assert [name.rsplit("-", 1)[0] for name in built] == ["onnx", "onnx-int8"]
    calls = []
    monkeypatch.setattr(embedding, "export_onnx", lambda *a: calls.append("export"))
    monkeypatch.setattr(embedding, "quantize_onnx", lambda *a: calls.append("quantize"))
    again = Embedder(torch_threads=1, backend="onnx-int8", cache_dir=cache_dir)
    assert calls == []
    assert np.allclose(again(TEXTS[:3]), embedders["onnx-int8"](TEXTS[:3]), atol=1e-6)
    assert sorted(p.name for p in (cache_dir / "embeddings").iterdir() if p.is_dir()) == built


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="onnx-int8"):
        Embedder(backend="tensorrt")


# -- the artefact cache, with a tiny build -------------------------------------------------


@pytest.fixture
def model_dir(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"\x00" * 16)
    return model


def test_concurrent_builders_build_once(model_dir, tmp_path):
    builds = []

    def slow_build(out):
        builds.append(out)
        time.sleep(0.3)
        (out / "model.onnx").write_text("exported")

    results = []
    threads = [threading.Thread(target=lambda: results.append(cached_artefact(str(model_dir), "onnx", tmp_path / "c", slow_build))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and len(set(results)) == 1
    assert (results[0] / "model.onnx").read_text() == "exported"
    # No staging directory is left behind.
    assert [p.name for p in (tmp_path / "c" / "embeddings").iterdir() if p.is_dir()] == [results[0].name]


def test_a_failed_build_leaves_nothing_and_is_retried(model_dir, tmp_path):
    def broken(out):
        (out / "model.onnx").write_text("half")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError):
        cached_artefact(str(model_dir), "onnx", tmp_path, broken)
    assert not [p for p in (tmp_path / "embeddings").iterdir() if p.is_dir()]
    path = cached_artefact(str(model_dir), "onnx", tmp_path, lambda out: (out / "model.onnx").write_text("whole"))
    assert (path / "model.onnx").read_text() == "whole"


def test_key_follows_backend_and_model_files(model_dir):
    key = artefact_key(str(model_dir), "onnx")
    assert key.startswith("onnx-") and key == artefact_key(str(model_dir), "onnx")
    assert artefact_key(str(model_dir), "onnx-int8") != key
    (model_dir / "weights.bin").write_bytes(b"\x01" * 32)
    assert artefact_key(str(model_dir), "onnx") != key


# -- the router setting ----------------------------------------------------------------------


def test_router_setting_accepts_the_backends_and_refuses_others():
    assert RouterSettings().embedding_backend == "onnx-int8"
    for backend in ("torch", "onnx", "onnx-int8"):
        assert RouterSettings(embedding_backend=backend).embedding_backend == backend
    with pytest.raises(ValidationError, match="embedding_backend"):
        RouterSettings(embedding_backend="int4")


def test_build_router_embeds_examples_and_requests_with_the_configured_backend(cache_dir, monkeypatch):
    monkeypatch.setenv(embedding.CACHE_DIR_ENV, str(cache_dir))
    config = OrchestraConfig.model_validate(
        {
            "router": {"embedding_backend": "onnx", "calibration": {"midpoint": 0.35, "temperature": 0.05}},
            "agents": [
                {"name": "weather", "kind": "echo", "description": "weather forecasts, rain and snow",
                 "examples": ["will it rain tomorrow"], "versions": [{"version": "v1", "weight": 100}]},
                {"name": "banking", "kind": "echo", "description": "bank accounts, balances and transfers",
                 "examples": ["what's my account balance"], "versions": [{"version": "v1", "weight": 100}]},
            ],
        }
    )
    router = build_router(config, "memory://unused")
    assert router.embed.backend == "onnx"
    assert router.decide("how much money is in my checking account?").agent == "banking"
