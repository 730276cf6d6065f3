"""Batch ingest, run as a Ray job (``baton documents ingest``): every document under a folder or
URI prefix goes through a named pipeline of the running application, several at a time.
Resumable: a document whose record is already stored is skipped.

    python -m serve.ingest URI --pipeline NAME --config configs/orchestra.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import posixpath
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

from actors.composition import Pipeline
from actors.documents.store import DocumentStore
from actors.invocation import Document, Invocation
from actors.traffic import TrafficTable
from cluster.config import OrchestraConfig, resolve_storage_uri
from cluster.errors import BatonError, NotFound
from cluster.storage import Storage, resolve_uri

DOCUMENT_SUFFIXES = (".pdf", ".png", ".jpg", ".jpeg", ".tif", ".tiff")


def list_documents(uri: str) -> list[str]:
    """The document files under a folder or URI prefix, sorted (so a rerun takes them in order)."""
    fs, root = fsspec.core.url_to_fs(resolve_uri(uri))
    if fs.isfile(root):
        return [fs.unstrip_protocol(root)]
    found = [path for path in fs.find(root) if posixpath.splitext(path)[1].lower() in DOCUMENT_SUFFIXES]
    return [fs.unstrip_protocol(path) for path in sorted(found)]


def read_bytes(url: str) -> bytes:
    with fsspec.open(url, "rb") as handle:
        return handle.read()


@dataclass
class Tally:
    """Running totals of an ingest, printed as progress and as the final summary."""

    total: int
    started: float = field(default_factory=time.perf_counter)
    done: int = 0
    skipped: int = 0
    failed: int = 0
    pages: int = 0
    errors: list[dict] = field(default_factory=list)

    def pages_per_s(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.pages / elapsed if elapsed > 0 else 0.0

    def line(self, name: str, outcome: str) -> str:
        finished = self.done + self.skipped + self.failed
        width = len(str(self.total))
        return f"[{finished:>{width}}/{self.total}] {outcome:<7} {name}  (pages so far: {self.pages}, {self.pages_per_s():.2f} pages/s)"

    def summary(self) -> dict:
        return {
            "documents": self.total, "ingested": self.done, "skipped": self.skipped, "failed": self.failed, "pages": self.pages,
            "seconds": round(time.perf_counter() - self.started, 2), "pages_per_s": round(self.pages_per_s(), 3), "errors": self.errors[:20],
        }


class Ingest:
    """Runs one pipeline over many documents through the application's Serve deployments."""

    def __init__(self, pipeline: Pipeline, store: DocumentStore, timeout_s: float, concurrency: int):
        self.pipeline, self.store, self.timeout_s = pipeline, store, timeout_s
        self.slots = asyncio.Semaphore(concurrency)

    async def run(self, urls: list[str], out=sys.stdout) -> dict:
        tally = Tally(total=len(urls))
        await asyncio.gather(*(self._one(url, tally, out) for url in urls))
        return tally.summary()

    async def _one(self, url: str, tally: Tally, out) -> None:
        async with self.slots:
            name = posixpath.basename(url)
            data = await asyncio.to_thread(read_bytes, url)
            if await asyncio.to_thread(self.store.has, hashlib.sha256(data).hexdigest()):
                tally.skipped += 1
                print(tally.line(name, "stored"), file=out, flush=True)
                return
            invocation = Invocation(document=Document(data, "application/octet-stream", name), deadline=time.time() + self.timeout_s)
            try:
                result = await self.pipeline.run(invocation)
            except BatonError as error:
                tally.failed += 1
                tally.errors.append({"document": url, **error.as_dict()})
                print(tally.line(name, "failed") + f": {error.code}: {error.message}", file=out, flush=True)
                return
            tally.done += 1
            tally.pages += _pages_read(result.output)
            print(tally.line(name, "ok"), file=out, flush=True)


def _pages_read(output: dict) -> int:
    for step in output.values():
        if isinstance(step, dict) and isinstance(step.get("source"), dict):
            return len(step["source"].get("read", [])) or int(step["source"].get("pages", 0))
    return 0


def application_pipeline(config: OrchestraConfig, name: str, storage_uri: str) -> Pipeline:
    """The named pipeline over handles to the running application's agent deployments (the
    versions its deploy kept: registry models it lacked were left out, as the builder does)."""
    from ray import serve

    from actors.dispatcher import Dispatcher
    from serve.agent import deployment_name
    from serve.builder import APP_NAME, pin_models
    from serve.control import initial_traffic
    from serve.targets import serve_targets

    config = pin_models(config, storage_uri)
    settings = config.pipeline(name)
    if settings is None:
        raise NotFound(f"pipeline {name!r} does not exist (pipelines: {[p.name for p in config.pipelines]})")
    handles = {
        agent.name: {v.version: serve.get_deployment_handle(deployment_name(agent.name, v.version), APP_NAME) for v in agent.versions}
        for agent in config.agents
        if not agent.composite
    }
    dispatcher = Dispatcher(serve_targets(config, handles), TrafficTable(initial_traffic(config)), default_timeout_s=config.limits.documents.timeout_s)
    return Pipeline.of(settings, dispatcher)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("uri", help="A folder, a file, or a URI prefix (s3://bucket/prefix) of documents.")
    parser.add_argument("--pipeline", required=True, help="The pipeline every document goes through.")
    parser.add_argument("--config", default="configs/orchestra.yaml", help="The orchestra the application was deployed from.")
    parser.add_argument("--storage", default=None, help="Storage URI of the records (default: the config's, from the working directory).")
    parser.add_argument("--concurrency", type=int, default=4, help="Documents in flight at once.")
    args = parser.parse_args(argv)

    import ray

    from serve.builder import load

    config = load(args.config)
    storage = Storage(args.storage or resolve_storage_uri(config, Path.cwd()))
    urls = list_documents(args.uri)
    print(f"ingesting {len(urls)} documents from {args.uri} through pipeline {args.pipeline!r}", flush=True)
    ray.init(address="auto", log_to_driver=False)

    async def ingest_all() -> dict:
        # Made on the loop that awaits them: in Serve's throughput-optimized mode a handle routes
        # on the event loop it was made on, and a driver has none outside this one.
        pipeline = application_pipeline(config, args.pipeline, storage.uri)
        return await Ingest(pipeline, DocumentStore(storage), config.limits.documents.timeout_s, args.concurrency).run(urls)

    summary = asyncio.run(ingest_all())
    print(f"ingested {summary['ingested']}, skipped {summary['skipped']} already stored, failed {summary['failed']}: "
          f"{summary['pages']} pages in {summary['seconds']} s, {summary['pages_per_s']} pages/s", flush=True)
    print(json.dumps(summary), flush=True)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
