"""Embedding backends for the semantic router side by side: milliseconds per text at batch 1 and
batch 16 (short CLINC150 requests), and the router's quality on CLINC150 val as
``baton router eval --config configs/examples/clinc_domains.yaml --data .../val.jsonl --data
.../oos_val.jsonl --label-field domain --none-label oos`` measures it, per backend, in this process.

Backends: ``actors.embedding.Embedder``'s (torch, onnx, onnx-int8, built through ``build_router``
as the ingress builds them), plus candidates that are not served: the fp32 export quantized by
``onnxruntime.quantization.quantize_dynamic``, torch with dynamic int8 Linear layers, and model2vec static embeddings distilled from the same MiniLM (when the
``model2vec`` package is importable). Timings alternate between backends over ``--rounds``
rounds (the median is reported), so a busy machine slows them alike. Quality is measured twice:
with the config's calibration (what would be served), and with the calibration midpoint re-fitted
to the backend's own similarities the way the config's was (the 5% quantile of in-scope best
similarity on val), which is fair to a backend whose similarities live on another scale.

Run: ``python -m benchmarks.router_embedding`` (``--prepare`` only builds the cached exports;
``--no-doc`` prints without rewriting the "### Router embedding backends" section of docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from actors.embedding import (  # noqa: E402
    EMBEDDING_BACKENDS,
    cached_artefact,
    default_cache_dir,
    default_embedding_model_path,
    onnx_artefact,
    onnx_encoder,
)
from benchmarks.request_path import write_section  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
HEADING = "### Router embedding backends"
PARENT = "## Request path: the invocation core against the core before it"
DEFAULT_CONFIG = REPO / "configs" / "examples" / "clinc_domains.yaml"
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "clinc150"
EXTRA_BACKENDS = ("onnx-int8-dynamic", "torch-int8", "model2vec")
TARGET_POINTS = 0.01  # at most this much in-scope accuracy or out-of-scope recall lost
REJECTION_QUANTILE = 0.05  # the config's midpoint: 5% of in-scope requests below it

Embed = Callable[[Sequence[str]], np.ndarray]


# -- the candidates ----------------------------------------------------------------------


def onnx_int8_dynamic_embed(model_path: str, threads: int, cache_dir: Path) -> Embed:
    """The fp32 export with ``quantize_dynamic`` (int8 weights per output channel; activations
    quantized per call over the whole batch, so a text's vector depends on its batch-mates)."""
    import shutil

    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = onnx_artefact(model_path, "onnx", cache_dir)

    def build(out: Path) -> None:
        quantize_dynamic(fp32 / "model.onnx", out / "model.onnx", weight_type=QuantType.QInt8, per_channel=True)
        for name in ("tokenizer.json", "settings.json"):
            shutil.copy(fp32 / name, out / name)

    encode = onnx_encoder(cached_artefact(model_path, "onnx-int8-dynamic", cache_dir, build), threads)
    return lambda texts: encode(list(texts))


def torch_int8_embed(model_path: str, threads: int) -> Embed:
    """sentence-transformers with every Linear layer quantized to int8 on load (no new dependency)."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = torch.ao.quantization.quantize_dynamic(SentenceTransformer(model_path, device="cpu"), {torch.nn.Linear}, dtype=torch.qint8)
    return lambda texts: model.encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)


def model2vec_embed(model_path: str, cache_dir: Path) -> Embed:
    """Static token embeddings distilled once from the MiniLM (model2vec's default 256 PCA dims)."""
    from model2vec import StaticModel

    artefact = cached_artefact(model_path, "model2vec", cache_dir, lambda out: distill_model2vec(model_path, out))
    model = StaticModel.from_pretrained(str(artefact))

    def embed(texts: Sequence[str]) -> np.ndarray:
        vectors = model.encode(list(texts)).astype(np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    return embed


def distill_model2vec(model_path: str, out: Path) -> None:
    from model2vec.distill import distill

    distill(model_name=model_path, pca_dims=256).save_pretrained(str(out))


def model2vec_available() -> bool:
    try:
        import model2vec.distill  # noqa: F401
    except ImportError:
        return False
    return True


def make_embed(backend: str, model_path: str, threads: int, cache_dir: Path) -> Embed:
    from actors.embedding import Embedder

    if backend in EMBEDDING_BACKENDS:
        return Embedder(model_path, threads, backend=backend, cache_dir=cache_dir)
    if backend == "onnx-int8-dynamic":
        return onnx_int8_dynamic_embed(model_path, threads, cache_dir)
    if backend == "torch-int8":
        return torch_int8_embed(model_path, threads)
    return model2vec_embed(model_path, cache_dir)


def set_threads(threads: int) -> None:
    """torch's intra-op threads are per process: set them again before timing a torch backend."""
    import torch

    torch.set_num_threads(threads)


# -- speed -------------------------------------------------------------------------------


def ms_per_text(embed: Embed, texts: list[str], batch: int) -> float:
    start = time.perf_counter()
    for index in range(0, len(texts), batch):
        embed(texts[index : index + batch])
    return (time.perf_counter() - start) * 1000 / len(texts)


def timings(embeds: dict[str, Embed], texts: list[str], threads: int, rounds: int) -> dict[str, dict[int, float]]:
    """backend -> {batch: median ms per text}; backends alternate within each round."""
    for embed in embeds.values():
        embed(texts[:16])  # warm-up: first-call allocations, lazy initialisation
    samples: dict[str, dict[int, list[float]]] = {name: {1: [], 16: []} for name in embeds}
    for _ in range(rounds):
        for name, embed in embeds.items():
            set_threads(threads)
            for batch in (1, 16):
                samples[name][batch].append(ms_per_text(embed, texts, batch))
    return {name: {batch: statistics.median(values) for batch, values in by_batch.items()} for name, by_batch in samples.items()}


# -- quality -----------------------------------------------------------------------------


class Memo:
    """An embed function that computes each distinct text once (for the re-fitted second pass)."""

    def __init__(self, embed: Embed):
        self.embed, self.vectors = embed, {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self.vectors))
        if missing:
            self.vectors.update(zip(missing, self.embed(missing)))
        return np.stack([self.vectors[t] for t in texts])


@dataclass
class Quality:
    served: dict  # RoutingReport.summary() with the config's calibration
    refit_midpoint: float
    refit: dict  # the same with the midpoint re-fitted to this backend
    cosine_mean: float | None  # to the torch embedding of the same texts
    cosine_min: float | None


def router_for(config, embed: Embed, router_settings=None):
    """The router ``build_router`` makes, on a given embed function (the config has no classifier)."""
    from actors.router import SemanticRouter

    if config.router.classifier is not None:
        raise SystemExit("this benchmark compares embeddings alone: use a config without router.classifier")
    return SemanticRouter([a for a in config.agents if a.routable], router_settings or config.router, embed)


def refit_midpoint(router, config, rows: list[dict]) -> float:
    """The similarity below which 5% of in-scope requests fall (best of the single agents, not
    the supervisors), as the config's midpoint was chosen."""
    from actors.router import routing_text

    texts = [routing_text(str(r["text"])) for r in rows if r["domain"] != "oos"]
    similarities = router.agent_similarities(router.embed(texts))
    supervisors = {a.name for a in config.agents if a.supervisor is not None}
    singles = [i for i, name in enumerate(router.agent_names) if name not in supervisors]
    return float(np.quantile(similarities[:, singles].max(axis=1), REJECTION_QUANTILE))


def quality(config, storage_uri: str, backend: str, embed: Embed, rows: list[dict], reference: np.ndarray | None) -> Quality:
    from actors.router import build_router
    from actors.routing_eval import evaluate_router
    from serve.cli import _llm_router

    if backend in EMBEDDING_BACKENDS:  # exactly what the ingress and `baton router eval` build
        served_config = config.model_copy(update={"router": config.router.model_copy(update={"embedding_backend": backend})})
        router = build_router(served_config, storage_uri, config.ingress.resources.torch_threads)
        router.embed = memo = Memo(router.embed)  # requests only: the examples are embedded already
    else:
        router = router_for(config, memo := Memo(embed))
    served = evaluate_router(router, rows, label_field="domain", none_label="oos", llm=_llm_router(config)).summary()
    midpoint = refit_midpoint(router, config, rows)
    settings = config.router.model_copy(update={"calibration": config.router.calibration.model_copy(update={"midpoint": midpoint})})
    refit = evaluate_router(router_for(config, memo, settings), rows, label_field="domain", none_label="oos").summary()
    cosine_mean = cosine_min = None
    if reference is not None and reference.shape[1] == embed(["x"]).shape[1]:
        cosines = np.sum(memo([str(r["text"]) for r in rows]) * reference, axis=1)
        cosine_mean, cosine_min = float(cosines.mean()), float(cosines.min())
    return Quality(served, round(midpoint, 4), refit, cosine_mean, cosine_min)


# -- report ------------------------------------------------------------------------------


def read_rows(paths: list[Path]) -> list[dict]:
    return [json.loads(line) for path in paths for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def verdict(q: Quality, baseline: Quality) -> str:
    lost = max(baseline.served["in_scope_accuracy"] - q.served["in_scope_accuracy"], baseline.served["oos_recall"] - q.served["oos_recall"])
    return "meets" if lost <= TARGET_POINTS + 1e-9 else f"misses ({lost * 100:.1f} pt lost)"


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def batch_agreement(embed: Embed, texts: list[str]) -> float:
    """The least cosine between a text embedded alone and the same text in a batch of 16."""
    alone = np.stack([embed([text])[0] for text in texts])
    together = np.concatenate([embed(texts[i : i + 16]) for i in range(0, len(texts), 16)])
    return float(np.sum(alone * together, axis=1).min())


def speed_table(speed: dict[int, dict[str, dict[int, float]]], qualities: dict[str, Quality], agreement: dict[str, float]) -> list[str]:
    threads = sorted(speed)
    head = ["backend"] + [f"batch {b}, {t} thread{'s' if t > 1 else ''}" for t in threads for b in (1, 16)]
    head += [f"speed-up over torch, batch 1 / 16 ({threads[0]} thread{'s' if threads[0] > 1 else ''})",
             "cosine to torch (mean / min)", "alone vs in a batch of 16 (least cosine)"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |"]
    first = speed[threads[0]]
    for name, q in qualities.items():
        cells = [name] + [f"{speed[t][name][b]:.2f}" for t in threads for b in (1, 16)]
        cells.append(f"{first['torch'][1] / first[name][1]:.1f}× / {first['torch'][16] / first[name][16]:.1f}×")
        cells.append("– (another space)" if q.cosine_mean is None else f"{q.cosine_mean:.4f} / {q.cosine_min:.4f}")
        cells.append(f"{agreement[name]:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def quality_table(qualities: dict[str, Quality]) -> list[str]:
    baseline = qualities["torch"]
    lines = [
        "| backend | in-scope accuracy | out-of-scope recall | in-scope rejection | decide p50 ms | ≤ 1 pt lost | re-fitted midpoint | its accuracy / oos recall / rejection |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for name, q in qualities.items():
        served, refit = q.served, q.refit
        cells = [name, pct(served["in_scope_accuracy"]), pct(served["oos_recall"]), pct(served["in_scope_rejection"]), f"{served['p50_ms']:.2f}",
                 "baseline" if name == "torch" else verdict(q, baseline), f"{q.refit_midpoint:.3f}",
                 f"{pct(refit['in_scope_accuracy'])} / {pct(refit['oos_recall'])} / {pct(refit['in_scope_rejection'])}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def findings(qualities: dict[str, Quality], agreement: dict[str, float]) -> list[str]:
    """Notes that follow from this run's figures (the section is rewritten with each run)."""
    from cluster.config import RouterSettings

    served = RouterSettings().embedding_backend
    torch = qualities["torch"].served
    notes = [
        f"Served: `{served}` (the default of `router.embedding_backend`): {pct(qualities[served].served['in_scope_accuracy'])} in-scope "
        f"accuracy and {pct(qualities[served].served['oos_recall'])} out-of-scope recall against torch's "
        f"{pct(torch['in_scope_accuracy'])} and {pct(torch['oos_recall'])} in this run."
        if served in qualities else f"Served: `{served}` (not measured in this run).",
        "The config has the `assistant` supervisor (multi-part requests go to it), so torch's in-scope accuracy is the "
        "README's 88.7% row, not the 89.6% of the domains alone. oos_val.jsonl has 100 requests: one point of "
        "out-of-scope recall is one request.",
    ]
    moved = [f"`{name}` ({value:.4f})" for name, value in agreement.items() if value < 0.999]
    if moved:
        notes.append("A request's vector depends on the other requests of its batch for " + ", ".join(moved) + ": whole-tensor "
                     "dynamic quantization scales activations over the batch (and its padding), so the same request can route "
                     "differently under load than when idle.")
    if "model2vec" in qualities:
        notes.append("model2vec 0.10.0 is not a baton dependency (its `distill` extra pins transformers<5.4; baton pins 5.23): "
                     "installed for the run beside the venv with `pip install --no-deps --target /tmp/m2v model2vec==0.10.0 "
                     "skeletoken==0.6.1` and `PYTHONPATH=/tmp/m2v`, distilled offline from the installed MiniLM (256 PCA dims).")
    return notes


def markdown(args, speed, qualities: dict[str, Quality], agreement: dict[str, float], notes: list[str]) -> str:
    from importlib.metadata import version

    config = args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config
    versions = ", ".join(f"{p} {_version(version, p)}" for p in ("torch", "sentence-transformers", "onnxruntime", "onnx", "onnx-ir", "model2vec"))
    body = [
        HEADING,
        "",
        "The semantic router's embedding of a request (all-MiniLM-L6-v2) on each backend, in one process. "
        "`onnx` and `onnx-int8` are `actors.embedding.Embedder` backends (`router.embedding_backend`); the others were "
        "tried and are not served. Exports are built on first use into `~/.cache/baton/embeddings` "
        "(`$BATON_CACHE_DIR`), keyed by the model's files and the backend.",
        "",
        f"- Command: `flock /tmp/baton-bench.lock .venv/bin/python -m benchmarks.router_embedding{' ' + ' '.join(args.argv) if args.argv else ''}`",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()} CPUs (shared), load average before the run {args.load_before}",
        f"- Versions: Python {sys.version.split()[0]}, {versions}",
        "",
        f"Speed, ms per text: the same {args.timing_texts} short CLINC150 val requests embedded one at a time (batch 1, an idle "
        f"ingress) and 16 at a time, backends alternating over {args.rounds} rounds (median); the ingress runs the router "
        "with `torch_threads` 1. Cosine to torch: over the 3,100 val + oos_val requests.",
        "",
        *speed_table(speed, qualities, agreement),
        "",
        f"Quality: `baton router eval --config {config} --data val.jsonl --data oos_val.jsonl --label-field domain "
        "--none-label oos`, in process, per backend (the served ones built by `build_router`, as the ingress builds them), "
        "with the config's calibration (midpoint 0.351, fitted on torch). The re-fitted columns set the midpoint to the "
        "backend's own 5% quantile of in-scope best similarity on val, as the config's was chosen; decide p50 is "
        "`SemanticRouter.decide` per request during the eval.",
        "",
        *quality_table(qualities),
        "",
        *[f"- {note}" for note in notes],
    ]
    return "\n".join(body) + "\n"


def _version(version, package: str) -> str:
    try:
        return version(package)
    except Exception:
        return "not installed"


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.router_embedding", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="orchestra whose agents the router knows (default the CLINC domains)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CLINC150 folder with val.jsonl and oos_val.jsonl")
    parser.add_argument("--backends", default=",".join(EMBEDDING_BACKENDS + EXTRA_BACKENDS), help="comma-separated, torch first")
    parser.add_argument(
        "--threads", default="1",
        help="intra-op thread counts to time, comma-separated (default 1, what the ingress gives the router; the first is used for quality)",
    )
    parser.add_argument("--timing-texts", type=int, default=96, help="texts timed per cell (default 96: 6 batches of 16)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (default 5)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where exports are built (default $BATON_CACHE_DIR or ~/.cache/baton)")
    parser.add_argument("--prepare", action="store_true", help="build every backend's cached export, then stop (not timed)")
    parser.add_argument("--no-doc", action="store_true", help="print only; do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return args


def main(argv: list[str] | None = None) -> None:
    from serve.builder import load, pin_models
    from cluster.config import resolve_storage_uri

    args = parse_args(argv)
    args.load_before = "/".join(f"{x:.2f}" for x in os.getloadavg())
    cache_dir = args.cache_dir or default_cache_dir()
    model_path = default_embedding_model_path()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    notes = []
    if "model2vec" in backends and not model2vec_available():
        backends.remove("model2vec")
        notes.append("model2vec: not measured, the package is not importable here (its distill extra pins transformers<5.4, baton has 5.23)")
    if backends[0] != "torch":
        raise SystemExit("--backends must start with torch, the baseline")
    threads = [int(t) for t in args.threads.split(",")]
    if args.prepare:
        for backend in backends:
            make_embed(backend, model_path, threads[0], cache_dir)
        print(f"built: {sorted(p.name for p in (cache_dir / 'embeddings').iterdir() if p.is_dir())}")
        return

    config = load(args.config, None, Path.cwd())
    storage_uri = resolve_storage_uri(config, Path.cwd())
    config = pin_models(config, storage_uri)
    rows = read_rows([args.data / "val.jsonl", args.data / "oos_val.jsonl"])
    in_scope = [str(r["text"]) for r in rows if r["domain"] != "oos"]
    timing_texts = in_scope[:: max(1, len(in_scope) // args.timing_texts)][: args.timing_texts]

    speed: dict[int, dict[str, dict[int, float]]] = {}
    for count in threads:
        embeds = {backend: make_embed(backend, model_path, count, cache_dir) for backend in backends}
        speed[count] = timings(embeds, timing_texts, count, args.rounds)
        print(f"threads {count}: " + json.dumps({b: {k: round(v, 3) for k, v in s.items()} for b, s in speed[count].items()}), flush=True)
        if count != threads[0]:
            continue
        qualities, reference = {}, None
        agreement = {backend: batch_agreement(embeds[backend], timing_texts) for backend in backends}
        for backend in backends:
            set_threads(count)
            qualities[backend] = quality(config, storage_uri, backend, embeds[backend], rows, reference)
            if backend == "torch":
                reference = embeds["torch"]([str(r["text"]) for r in rows])
                qualities["torch"].cosine_mean = qualities["torch"].cosine_min = 1.0
            print(f"{backend}: {qualities[backend]}", flush=True)
        del embeds
    notes += findings(qualities, agreement)
    block = markdown(args, speed, qualities, agreement, notes)
    print(block)
    if not args.no_doc:
        write_section(block, heading=HEADING, parent=PARENT)


if __name__ == "__main__":
    main()
