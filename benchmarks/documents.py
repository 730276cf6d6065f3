"""Pages per second of the whole document pipeline (``baton documents ingest``: extract, language,
entities, PII, store and index, as a Ray job on the running cluster) beside OCR alone on the
same pages in one process, the floor the pipeline is measured against (target: at most 1.25x).

    make up && .venv/bin/python -m benchmarks.documents --dir ../shared/datasets/sroie-dev
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from actors.documents.pages import decode_pages
from actors.documents.store import DocumentStore, record_id
from actors.invocation import Document
from actors.specialists.ocr import OcrSpecialist
from cluster import local
from cluster.config import resolve_storage_uri
from cluster.storage import Storage
from serve.builder import load

SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".pdf")


def documents_in(folder: Path, limit: int | None) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)[:limit]


def ocr_alone(paths: list[Path], ocr_params: dict) -> dict:
    """OCR of every page in this process, with the deployed ocr agent's params."""
    ocr = OcrSpecialist(ocr_params)
    ocr.load()
    pages, started = 0, time.perf_counter()
    for path in paths:
        for image in decode_pages(Document(path.read_bytes(), "application/octet-stream", path.name), ocr.params.limits):
            ocr.read_page(image)
            pages += 1
    seconds = time.perf_counter() - started
    return {"pages": pages, "seconds": round(seconds, 2), "pages_per_s": round(pages / seconds, 3)}


def forget(paths: list[Path], store: DocumentStore) -> None:
    """Remove the records of these documents, so the ingest does the whole work again."""
    for path in paths:
        target = store.record_path(record_id(hashlib.sha256(path.read_bytes()).hexdigest()))
        if store.storage.exists(target):
            store.storage.fs.rm(target)


def pipeline_ingest(folder: Path, pipeline: str, config: Path, concurrency: int) -> dict:
    """``baton documents ingest`` as a user runs it; its last line is the JSON summary."""
    command = [str(Path(sys.executable).parent / "baton"), "documents", "ingest", str(folder), "--pipeline", pipeline,
               "--config", str(config), "--concurrency", str(concurrency)]
    run = subprocess.run(command, capture_output=True, text=True, check=True)
    summaries = [line for line in run.stdout.splitlines() if line.startswith("{") and '"pages_per_s"' in line]
    return json.loads(summaries[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, required=True, help="Folder of documents (e.g. ../shared/datasets/sroie-dev).")
    parser.add_argument("--config", type=Path, default=Path("configs/orchestra.yaml"), help="The orchestra `make up` deployed.")
    parser.add_argument("--pipeline", default="document-intake", help="The pipeline to ingest through.")
    parser.add_argument("--concurrency", type=int, default=4, help="Documents the ingest keeps in flight.")
    parser.add_argument("--limit", type=int, default=None, help="Only the first N documents.")
    args = parser.parse_args()
    if not local.dashboard_up():
        sys.exit("no running cluster: run `make up` first (the pipeline's agents must be deployed)")
    config = load(args.config)
    paths = documents_in(args.dir, args.limit)
    ocr_agent = config.agent("ocr")
    ocr_params = dict(ocr_agent.versions[0].params) if ocr_agent else {}
    alone = ocr_alone(paths, ocr_params)
    print(f"OCR alone, one process: {alone}", flush=True)
    forget(paths, DocumentStore(Storage(resolve_storage_uri(config, Path.cwd()))))
    whole = pipeline_ingest(args.dir.resolve(), args.pipeline, args.config, args.concurrency)
    print(f"pipeline {args.pipeline!r} as a Ray job: {whole}", flush=True)
    ratio = alone["pages_per_s"] / whole["pages_per_s"] if whole["pages_per_s"] else float("inf")
    print()
    print("| what | pages | seconds | pages/s | time vs OCR alone |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| OCR alone, one process | {alone['pages']} | {alone['seconds']} | {alone['pages_per_s']} | 1.00x |")
    print(f"| `baton documents ingest` ({args.pipeline}, concurrency {args.concurrency}) | {whole['pages']} | {whole['seconds']} | {whole['pages_per_s']} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
