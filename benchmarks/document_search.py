"""Document search on real receipts: one vector per document vs chunks scored by the best
chunk vs chunks with the query's words (what ``DocumentStore.search`` does). Documents are the
OCR text of the SROIE dev receipts, alone and three to a document; queries are two worded lines
taken at 10%, 20%, ... 90% of each document, as someone recalling it would type them.

    .venv/bin/python -m benchmarks.document_search --dir ../shared/datasets/sroie-dev
"""

from __future__ import annotations

import argparse
import hashlib
import re
import tempfile
from pathlib import Path

import numpy as np

from actors.documents.pages import decode_pages
from actors.documents.store import DocumentRecord, DocumentStore, chunk_spans
from actors.embedding import Embedder
from actors.invocation import Document
from actors.specialists.ocr import OcrSpecialist
from cluster.storage import Storage

POSITIONS = [i / 10 for i in range(1, 10)]


def receipt_texts(folder: Path) -> list[str]:
    ocr = OcrSpecialist()
    ocr.load()
    texts = []
    for path in sorted(folder.glob("*.jpg")):
        [image] = decode_pages(Document(path.read_bytes(), "image/jpeg"), ocr.params.limits)
        texts.append(ocr.read_page(image).text)
    return list(dict.fromkeys(texts))  # the dataset repeats a few receipts


def phrase(text: str, position: float) -> str:
    lines = [line for line in text.splitlines() if re.search(r"[A-Za-z]{3}", line)]
    at = min(int(len(lines) * position), len(lines) - 2)
    return " ".join(lines[at : at + 2])


def report(name: str, ranks: np.ndarray) -> None:
    print(f"| {name} | {np.mean(ranks == 1):.3f} | {np.mean(ranks <= 5):.3f} | {np.mean(1 / ranks):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, required=True, help="The SROIE dev receipts.")
    args = parser.parse_args()
    receipts, embed = receipt_texts(args.dir), Embedder()
    for pages in (1, 3):
        docs = ["\n".join(receipts[i : i + pages]) for i in range(0, len(receipts) - pages + 1, pages)]
        queries = [(i, phrase(doc, p)) for i, doc in enumerate(docs) for p in POSITIONS]
        vectors = embed([q for _, q in queries])
        print(f"\n{len(docs)} documents of {pages} receipt(s), {len(queries)} queries\n")
        print("| method | recall@1 | recall@5 | MRR |\n| --- | ---: | ---: | ---: |")
        single = embed(docs)
        report("one vector per document", np.array([1 + int(np.sum(single @ v > single[i] @ v)) for (i, _), v in zip(queries, vectors)]))
        store, ids = DocumentStore(Storage(tempfile.mkdtemp())), []
        for doc in docs:
            spans = chunk_spans(doc, 20_000)
            ids.append(store.put(DocumentRecord(sha256=hashlib.sha256(doc.encode()).hexdigest(), text=doc, spans=spans, vectors=embed([doc[s:e] for s, e in spans]))))

        def rank(i: int, vector: np.ndarray, text: str | None) -> int:
            return [hit["id"] for hit in store.search(vector, 100, text)].index(ids[i]) + 1

        report("best chunk (cosine)", np.array([rank(i, v, None) for (i, _), v in zip(queries, vectors)]))
        report("best chunk (cosine + query words), served", np.array([rank(i, v, q) for (i, q), v in zip(queries, vectors)]))


if __name__ == "__main__":
    main()
