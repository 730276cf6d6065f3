"""Document path: pages per second of ``POST /v1/extract`` over HTTP against OCR alone in one
process on the same pages, at concurrency 1 and 4 (target: OCR alone at most 1.25x faster),
with the CPU each process of the cluster spends per page and the stages of one page.

    .venv/bin/python -m benchmarks.documents_path --dir ../shared/datasets/sroie-dev --limit 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.documents import documents_in
from benchmarks.request_path import (
    BENCH_RATE_LIMIT,
    CpuMeter,
    CpuSnapshot,
    free_port,
    markdown_table,
    nproc,
    package,
    start_run,
    without,
    write_section,
)

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
SECTION = "## Documents at speed: `POST /v1/extract` against OCR alone"
DEFAULT_CONFIG = REPO / "configs" / "orchestra.yaml"
DEFAULT_QUERY = REPO / "configs" / "examples" / "receipt_query.json"
EXTRACT_AGENT, OCR_AGENT = "documents", "ocr"
CONCURRENCIES = (1, 4)
TARGET = 1.25  # OCR alone may be at most this much faster than baton


@dataclass(frozen=True)
class Layout:
    """OCR engines in this process and the onnxruntime threads each one's page may use."""

    engines: int
    threads: int | None  # None: onnxruntime's default, one per core
    spin: bool = True  # onnxruntime's threads spin between operators (its default)

    def describe(self) -> str:
        threads = "onnxruntime's default threads (one per core)" if self.threads is None else f"{self.threads} thread{'s' * (self.threads > 1)}"
        still = "" if self.spin or self.threads == 1 else ", not spinning"
        return f"{self.engines} engine{'s' * (self.engines > 1)}, {threads} each{still}"


@dataclass
class Cell:
    """One measured run over the pages: OCR alone (one layout) or baton over HTTP."""

    what: str
    concurrency: int
    pages: int
    wall_s: float
    latencies_s: list[float]
    errors: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)
    other_cores: float = float("nan")
    server_ms: list[float] = field(default_factory=list)
    replicas: dict[str, int] = field(default_factory=dict)
    layout: Layout | None = None  # OCR alone: the engines it ran

    @property
    def pages_per_s(self) -> float:
        return self.pages / self.wall_s if self.wall_s > 0 else float("nan")

    def p50_ms(self) -> float:
        return float(np.median(self.latencies_s)) * 1000 if self.latencies_s else float("nan")

    def cpu_ms_per_page(self, role: str | None = None) -> float:
        if not self.cpu_s or not self.pages:
            return float("nan")
        seconds = sum(self.cpu_s.values()) if role is None else self.cpu_s.get(role, 0.0)
        return seconds / self.pages * 1000

    def absorb(self, other: Cell) -> None:
        """Another run of the same thing counted into this one (rates over both together)."""
        weights = (self.wall_s, other.wall_s)
        self.other_cores = float(np.average([self.other_cores, other.other_cores], weights=weights))
        self.pages, self.wall_s = self.pages + other.pages, self.wall_s + other.wall_s
        self.latencies_s = [*self.latencies_s, *other.latencies_s]
        self.errors += other.errors
        self.cpu_s = {role: self.cpu_s.get(role, 0.0) + other.cpu_s.get(role, 0.0) for role in {*self.cpu_s, *other.cpu_s}}


# -- OCR alone ---------------------------------------------------------------------------


def alone_layouts(ocr_params: dict, concurrency: int) -> list[Layout]:
    """The ways one process can run the ocr agent's engine at this concurrency. One page at a
    time: one engine with onnxruntime's defaults (a thread per core, spinning), with the agent's
    own thread and spinning settings, and with one thread. Several pages: one single-threaded
    engine per core, side by side (one engine alone reads one page at a time, so its figure is
    the one-page one)."""
    if concurrency == 1:
        own = Layout(1, ocr_params.get("threads"), ocr_params.get("spin", True))
        return list(dict.fromkeys([Layout(1, None), own, Layout(1, 1)]))
    return [Layout(min(nproc(), concurrency), 1)]


class EnginePool:
    """``layout.engines`` OCR specialists built with the ocr agent's params; a page takes a free one."""

    def __init__(self, ocr_params: dict, layout: Layout):
        from actors.specialists.ocr import OcrSpecialist

        self.limits = None
        self._free: queue.Queue = queue.Queue()
        for _ in range(layout.engines):
            specialist = OcrSpecialist({**ocr_params, "threads": layout.threads, "spin": layout.spin, "side_by_side": 1})
            specialist.load()
            self.limits = specialist.params.limits
            self._free.put(specialist)

    @property
    def engine(self):
        """One of the engines, for timing a single page."""
        return self._free.queue[0]

    def read(self, data: bytes) -> int:
        """OCR of every page of one document, as the ocr agent does it (decode, then read); its page count."""
        from actors.documents.pages import iter_pages
        from actors.invocation import Document

        specialist = self._free.get()
        try:
            pages = 0
            for image in iter_pages(Document(data, "application/octet-stream"), self.limits):
                specialist.read_page(image)
                pages += 1
            return pages
        finally:
            self._free.put(specialist)


def run_alone(pool: EnginePool, documents: list[bytes], concurrency: int) -> tuple[int, float, list[float]]:
    latencies: list[float] = []

    def one(data: bytes) -> int:
        started = time.perf_counter()
        pages = pool.read(data)
        latencies.append(time.perf_counter() - started)
        return pages

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as workers:
        pages = sum(workers.map(one, documents))
    return pages, time.perf_counter() - started, latencies


# -- baton -------------------------------------------------------------------------------


def extract_config(config_path: Path, storage_uri: str, full: bool, ocr_changes: dict | None = None):
    """The orchestra with storage in a temporary directory and the rate limit raised; without
    ``full``, only the agents ``POST /v1/extract`` reaches (documents and what it uses).
    ``ocr_changes`` are merged into the ocr agent's serving version (to compare settings)."""
    from cluster.config import OrchestraConfig
    from serve.builder import load

    config = load(config_path)
    extract = config.agent(EXTRACT_AGENT)
    if extract is None:
        raise SystemExit(f"{config_path} has no {EXTRACT_AGENT!r} agent")
    if not full:
        config = without(config, set(config.agent_names()) - {EXTRACT_AGENT, *extract.uses})
    auth = config.auth.model_copy(update={"rate_limit": config.auth.rate_limit.model_copy(update=BENCH_RATE_LIMIT)})
    config = config.model_copy(update={"storage": storage_uri, "auth": auth})
    if not ocr_changes:
        return config
    raw = config.model_dump()
    ocr = next(a for a in raw["agents"] if a["name"] == OCR_AGENT)
    serving = max(ocr["versions"], key=lambda v: v["weight"])
    merged(serving, ocr_changes)
    return OrchestraConfig.model_validate(raw)


def merged(target: dict, changes: dict) -> dict:
    """``changes`` merged into ``target`` in place, nested dicts key by key."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merged(target[key], value)
        else:
            target[key] = value
    return target


def deployed_ocr_params(config, storage_uri: str) -> dict:
    """The params the ocr agent's replica gets (its version's params plus the document limits)."""
    from serve.builder import specialist_params

    agent = config.agent(OCR_AGENT)
    version = max(agent.versions, key=lambda v: v.weight)
    return specialist_params(config, agent, version, storage_uri)


def ocr_summary(config) -> str:
    """The ocr serving version's params (less the limits), replicas and concurrency, as deployed."""
    version = max(config.agent(OCR_AGENT).versions, key=lambda v: v.weight)
    scaling = version.autoscaling
    params = {k: v for k, v in version.params.items() if k != "limits"}
    return (
        f"params {json.dumps(params)}, replicas {scaling.min_replicas}-{scaling.max_replicas} "
        f"(target_ongoing_requests {scaling.target_ongoing_requests:g}), max_ongoing_requests {version.max_ongoing_requests}"
    )


class Extractor:
    """``POST /v1/extract`` with each document as a multipart upload and the receipt query."""

    def __init__(self, session, query: dict):
        self.session, self.query = session, json.dumps(query)

    async def __call__(self, data: bytes, name: str) -> tuple[int, dict | str]:
        import aiohttp

        form = aiohttp.FormData()
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
        form.add_field("query", self.query)
        try:
            async with self.session.post("/v1/extract", data=form) as response:
                body = await response.read()
                return response.status, json.loads(body) if response.status == 200 else body[:300].decode(errors="replace")
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            return 0, repr(error)


async def run_http(extract: Extractor, documents: list[tuple[bytes, str]], concurrency: int) -> tuple[list, float, list[float]]:
    """Every document once, ``concurrency`` in flight; answers in completion order."""
    pending = iter(documents)
    answers, latencies = [], []

    async def worker() -> None:
        for data, name in pending:
            started = time.perf_counter()
            answers.append(await extract(data, name))
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers, time.perf_counter() - started, latencies


def resident_mib(pid: int) -> float:
    """A process's resident memory (VmRSS), in MiB; NaN when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def replica_counts(app: str) -> dict[str, int]:
    from benchmarks.request_path import replica_counts as counts

    return {name: n for name, n in counts(app).items() if n}


# -- the benchmark -----------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, documents: list[tuple[bytes, str]], ocr_params: dict):
        self.args, self.documents, self.ocr_params = args, documents, ocr_params
        self.meter = CpuMeter()
        self.cells: list[Cell] = []
        self.stages: list[tuple[str, float]] = []
        self.notes: list[str] = []
        self.idle_cores = float("nan")

    def say(self, text: str) -> None:
        print(text, flush=True)

    def measured(self, cell: Cell, before: CpuSnapshot | None = None) -> Cell:
        """Keep the cell (its CPU from ``before`` to now, unless it has its own) and print it."""
        if before is not None:
            cell.cpu_s, cell.other_cores = self.meter.usage(before, self.meter.snapshot())
        self.cells.append(cell)
        self.say(
            f"  {cell.what}, c={cell.concurrency}: {cell.pages} pages in {cell.wall_s:.1f} s = {cell.pages_per_s:.3f} pages/s; "
            f"CPU {cell.cpu_ms_per_page():.0f} ms/page; other load {cell.other_cores:.2f} cores; errors {cell.errors}"
        )
        return cell

    def idle_load(self, seconds: float = 5.0) -> None:
        """Cores this run's processes keep busy while no request is in flight (a tax on every page)."""
        before = self.meter.snapshot()
        time.sleep(seconds)
        after = self.meter.snapshot()
        if before is not None and after is not None:
            by_role, _ = self.meter.usage(before, after)
            self.idle_cores = sum(by_role.values()) / (after.at - before.at)
            self.say(f"  idle: this run's processes keep {self.idle_cores:.2f} cores busy with no request in flight")

    def alone(self, concurrency: int) -> None:
        """OCR alone at this concurrency, one cell per layout; run before Ray starts, so this
        process is a plain one and nothing of baton's shares the cores."""
        for layout in alone_layouts(self.ocr_params, concurrency):
            self.measured(self.run_layout(layout, concurrency))

    def alone_again(self) -> None:
        """The reference layouts once more, after Ray has stopped: baton's cells ran between the
        two passes, so a change in the machine's other load between them is averaged out."""
        for concurrency in CONCURRENCIES:
            first = reference(self.cells, concurrency)
            if first.concurrency != concurrency:  # the reference is a one-page layout, already run again
                continue
            second = self.run_layout(first.layout, concurrency)
            self.say(f"  again: {second.pages_per_s:.3f} pages/s; other load {second.other_cores:.2f} cores")
            self.notes.append(
                f"{first.what}, c={concurrency}: {first.pages_per_s:.3f} pages/s before baton's cells, "
                f"{second.pages_per_s:.3f} after (other load {first.other_cores:.2f} and {second.other_cores:.2f} cores); the table counts both"
            )
            first.absorb(second)

    def run_layout(self, layout: Layout, concurrency: int) -> Cell:
        data = [d for d, _ in self.documents]
        pool = EnginePool(self.ocr_params, layout)
        for engine_data in data[: layout.engines]:  # every engine warm before the clock starts
            pool.read(engine_data)
        before = self.meter.snapshot()
        pages, wall, latencies = run_alone(pool, data, concurrency)
        cell = Cell(f"OCR alone, {layout.describe()}", concurrency, pages, wall, latencies, layout=layout)
        cell.cpu_s, cell.other_cores = self.meter.usage(before, self.meter.snapshot())
        return cell

    def in_process_stages(self, query: dict) -> None:
        """Single-page p50 of the in-process parts of the path, on the first ``--stages`` documents."""
        from actors.documents.extraction import run_mode
        from actors.documents.pages import decode_pages
        from actors.documents.schema import compile_query
        from actors.invocation import Document

        documents = self.documents[: self.args.stages]
        # What a lone page gets in a replica.
        lone = EnginePool(self.ocr_params, Layout(1, self.ocr_params.get("threads"), self.ocr_params.get("spin", True)))
        engine, compiled = lone.engine, compile_query(query)
        images = [decode_pages(Document(data, "application/octet-stream"), lone.limits)[0] for data, _ in documents]
        pages = [engine.read_page(image) for image in images]
        self.time_stages(len(documents), {
            "decode the JPEG to RGB pixels (in-process)": lambda i: decode_pages(Document(documents[i][0], "image/jpeg"), lone.limits),
            "OCR of the decoded page (in-process, the engine a lone page gets)": lambda i: engine.read_page(images[i]),
            "layout + field extraction of the OCR'd page (in-process)": lambda i: run_mode([pages[i]], compiled, "fields", {"dayfirst": True}),
        })

    def time_stages(self, n: int, stages: dict[str, Callable[[int], Any]]) -> None:
        for name, fn in stages.items():
            latencies = []
            for index in range(n):
                started = time.perf_counter()
                fn(index)
                latencies.append(time.perf_counter() - started)
            self.stages.append((name, float(np.median(latencies)) * 1000))

    async def baton(self, extract: Extractor, concurrency: int, app: str) -> None:
        warm = self.documents[: max(self.args.warmup, concurrency)]
        await run_http(extract, warm, concurrency)
        if concurrency > 1:
            await self.settle(extract, concurrency, app)
        await asyncio.to_thread(self.meter.label_actors)
        replicas = await asyncio.to_thread(replica_counts, app)
        before = self.meter.snapshot()
        answers, wall, latencies = await run_http(extract, self.documents, concurrency)
        ok = [payload for status, payload in answers if status == 200]
        cell = Cell("baton POST /v1/extract", concurrency, sum(p["pages"] for p in ok), wall, latencies, errors=len(answers) - len(ok))
        cell.server_ms = [p["latency_ms"] for p in ok if "latency_ms" in p]
        cell.replicas = replicas
        self.measured(cell, before)
        for status, payload in answers:
            if status != 200:
                self.notes.append(f"baton c={concurrency}: {status} {payload}")
                break
        after = await asyncio.to_thread(replica_counts, app)
        if after != replicas:
            self.notes.append(f"baton c={concurrency}: replicas changed during the cell: {replicas} -> {after}")
        memory = [resident_mib(pid) for pid, label in self.meter.labels.items() if label.startswith(f"agent {OCR_AGENT}.")]
        if memory:
            self.notes.append(f"baton c={concurrency}: resident memory of the ocr replica(s): " + ", ".join(f"{mib:,.0f} MiB" for mib in memory))

    async def settle(self, extract: Extractor, concurrency: int, app: str) -> None:
        """Keep ``concurrency`` documents in flight past the ocr deployment's upscale delay, then
        until no replica is starting (or ``--settle-max`` s): the cell measures the steady state."""
        from benchmarks.request_path import app_settled

        version = max(self.args.config_obj.agent(OCR_AGENT).versions, key=lambda v: v.weight)
        started = time.monotonic()
        at_least = version.autoscaling.upscale_delay_s + 5
        while time.monotonic() - started < self.args.settle_max:
            await run_http(extract, self.documents[:concurrency], concurrency)
            if time.monotonic() - started > at_least and await asyncio.to_thread(app_settled, app):
                break
        self.notes.append(
            f"baton c={concurrency} was measured after {time.monotonic() - started:.0f} s of the same load "
            f"(past the ocr deployment's upscale delay of {version.autoscaling.upscale_delay_s:g} s)"
        )

    async def handle_stages(self, extract: Extractor, app: str, query: dict) -> None:
        """Single-page p50 through the agents' handles and over HTTP, on the first ``--stages`` documents."""
        documents = self.documents[: self.args.stages]
        await asyncio.to_thread(self.timed_handles, documents, app, query)
        answers, _, latencies = await run_http(extract, documents, 1)
        server = [p["latency_ms"] for s, p in answers if s == 200]
        self.stages.append(("POST /v1/extract over HTTP (client)", float(np.median(latencies)) * 1000))
        self.stages.append(("POST /v1/extract, baton's own latency_ms", float(np.median(server)) if server else float("nan")))

    def timed_handles(self, documents: list[tuple[bytes, str]], app: str, query: dict) -> None:
        from ray import serve

        from actors.invocation import Document, Failure, Invocation
        from serve.builder import deployment_name

        def handle(agent: str):
            version = max(self.args.config_obj.agent(agent).versions, key=lambda v: v.weight).version
            return serve.get_deployment_handle(deployment_name(agent, version), app_name=app)

        def call(target, data: bytes, options: dict) -> None:
            answer = target.invoke.remote(Invocation(document=Document(data, "application/octet-stream"), options=options)).result()
            if isinstance(answer, Failure):
                raise answer.error

        ocr, extractor = handle(OCR_AGENT), handle(EXTRACT_AGENT)
        self.time_stages(len(documents), {
            "handle call ocr.invoke (decode + OCR in its replica)": lambda i: call(ocr, documents[i][0], {"pages": [1]}),
            "handle call documents.invoke (extraction, OCR through its peer)": lambda i: call(
                extractor, documents[i][0], {"query": query, "mode": "fields"}
            ),
        })


# -- reporting -------------------------------------------------------------------------


def reference(cells: list[Cell], concurrency: int) -> Cell:
    """The fastest OCR-alone cell at this concurrency or below (a layout that reads fewer
    pages at once reaches the same rate with more in flight), so a thread setting chosen for
    baton cannot make its own yardstick slower."""
    return max((c for c in cells if c.concurrency <= concurrency and c.what.startswith("OCR alone")), key=lambda c: c.pages_per_s)


def baton_cell(cells: list[Cell], concurrency: int) -> Cell:
    return next(c for c in cells if c.concurrency == concurrency and c.what.startswith("baton"))


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"


def main_rows(cells: list[Cell]) -> list[list[str]]:
    rows = []
    for cell in cells:
        ratio = reference(cells, cell.concurrency).pages_per_s / cell.pages_per_s if cell.pages_per_s else float("inf")
        rows.append([
            cell.what, str(cell.concurrency), str(cell.pages), fmt(cell.wall_s, 1), fmt(cell.pages_per_s, 3), f"{ratio:.2f}x",
            fmt(cell.p50_ms(), 0), fmt(cell.cpu_ms_per_page(), 0), fmt(cell.other_cores), str(cell.errors),
        ])
    return rows


MAIN_COLUMNS = ("what", "concurrency", "pages", "seconds", "pages/s", "reference / this", "p50 ms/page", "CPU ms/page", "other load (cores)", "errors")


def verdict_rows(cells: list[Cell]) -> list[list[str]]:
    rows = []
    for concurrency in CONCURRENCIES:
        alone, baton = reference(cells, concurrency), baton_cell(cells, concurrency)
        ratio = alone.pages_per_s / baton.pages_per_s if baton.pages_per_s else float("inf")
        cpu = baton.cpu_ms_per_page() / alone.cpu_ms_per_page()
        rows.append([
            f"c={concurrency}", fmt(alone.pages_per_s, 3), fmt(baton.pages_per_s, 3), f"{fmt(cpu)}x", f"{ratio:.2f}x",
            f"≤ {TARGET}x", "met" if ratio <= TARGET else "not met",
        ])
    return rows


VERDICT_COLUMNS = (
    "concurrency", "OCR alone pages/s (reference)", "baton pages/s", "CPU per page, baton / reference", "OCR alone / baton",
    "target", "verdict",
)


def cpu_rows(cells: list[Cell]) -> tuple[list[str], list[list[str]]]:
    shown = [c for c in cells if c.what.startswith("baton") and c.cpu_s]
    roles = sorted({r for c in shown for r in c.cpu_s}, key=lambda r: -max(c.cpu_ms_per_page(r) for c in shown))
    rows = [[role, *(fmt(c.cpu_ms_per_page(role), 0) for c in shown)] for role in roles]
    rows.append(["all processes of this run", *(fmt(c.cpu_ms_per_page(), 0) for c in shown)])
    rows.append(["OCR alone, the reference layout, all processes", *(fmt(reference(cells, c.concurrency).cpu_ms_per_page(), 0) for c in shown)])
    header = ["process", *(f"baton c={c.concurrency}" for c in shown)]
    return header, [row for row in rows if any(v not in ("0", "n/a", "") for v in row[1:])]


def markdown_section(bench: Bench, meta: dict[str, str]) -> str:
    lines = [
        SECTION,
        "",
        "Pages per second of `POST /v1/extract` (multipart upload, the receipt query of",
        "`configs/examples/receipt_query.json`, mode `fields`) against OCR alone in one process on the same",
        "pages. OCR alone runs in the benchmark process before Ray starts, and its reference layouts again after",
        "Ray stops (a plain process, nothing of baton's on the cores; baton's cells run between the two passes and",
        "the table counts both): the `ocr` agent's specialist built with the params its replica gets, each page",
        "decoded and read as the agent does it, one engine reading one page at a time. The reference at a concurrency is",
        "the fastest layout at it or below: at 1, one engine with onnxruntime's defaults (a thread per core,",
        "spinning), with the agent's thread and spinning settings, or with one thread; at 4, also one",
        "single-threaded engine per core fed by 4 threads (pages side by side). So no setting chosen for baton",
        "makes its yardstick slower.",
        "",
        f"- Command: `{meta['command']}` (`make bench-documents`)",
        f"- Date: {meta['date']}; {meta['nproc']} CPUs ({meta['cpu']}); load average {meta['load_before']} before the run",
        f"- Versions: ray {meta['ray']}, rapidocr {meta['rapidocr']}, onnxruntime {meta['onnxruntime']}, Python {meta['python']}",
        f"- Cluster: `ray.init(num_cpus=2)`, Serve on 127.0.0.1; {meta['orchestra']}",
        f"- Pages: {meta['pages']}. Each baton cell follows {meta['warmup']} warm-up documents; the c=4 cell follows "
        "the same load past the `ocr` deployment's upscale delay until no replica is starting. CPU ms/page = CPU of "
        "every process of this run (this one included) / pages; other load = cores the rest of the machine kept "
        "busy (it is shared).",
        "",
        *markdown_table(MAIN_COLUMNS, main_rows(bench.cells), right=tuple(range(1, len(MAIN_COLUMNS)))),
        "",
        *markdown_table(VERDICT_COLUMNS, verdict_rows(bench.cells), right=(1, 2, 3, 4)),
        "",
    ]
    header, rows = cpu_rows(bench.cells)
    if rows:
        lines += ["CPU per page by process (ms), baton cells:", "", *markdown_table(header, rows), ""]
    if bench.stages:
        lines += [
            f"Stages of one page, p50 over {bench.args.stages} receipts, one at a time:",
            "",
            *markdown_table(("stage", "p50 ms"), [[name, fmt(ms, 1)] for name, ms in bench.stages]),
            "",
        ]
    if bench.idle_cores == bench.idle_cores:
        bench.notes.insert(0, f"with no request in flight, this run's processes kept {bench.idle_cores:.2f} cores busy")
    replicas = [f"c={c.concurrency}: {c.replicas}" for c in bench.cells if c.replicas]
    if replicas:
        bench.notes.append(f"RUNNING replicas during the baton cells: {'; '.join(replicas)}")
    lines += [f"- {note}" for note in bench.notes]
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.documents_path", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=REPO.parent / "shared" / "datasets" / "sroie-dev", help="folder of documents")
    parser.add_argument("--limit", type=int, default=20, help="only the first N documents (default 20)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="orchestra file (default configs/orchestra.yaml)")
    parser.add_argument("--query", type=Path, default=DEFAULT_QUERY, help="the extraction query (schema by example)")
    parser.add_argument("--full", action="store_true", help="deploy the whole orchestra, not only the extract path's agents")
    parser.add_argument(
        "--ocr-version", type=json.loads, default=None, metavar="JSON",
        help="""changes to the ocr agent's serving version, e.g. '{"params": {"side_by_side": 2}}'""",
    )
    parser.add_argument("--warmup", type=int, default=2, help="warm-up documents before each baton cell (default 2)")
    parser.add_argument("--settle-max", type=float, default=60.0, help="most seconds of load before the c=4 cell (default 60)")
    parser.add_argument("--stages", type=int, default=4, help="documents timed stage by stage; 0 skips it (default 4)")
    parser.add_argument("--no-doc", action="store_true", help="print only; do not rewrite docs/benchmarks.md")
    parser.add_argument("--doc", type=Path, default=DOC, help="the Markdown file whose section is rewritten")
    args = parser.parse_args(argv)
    if args.limit < 1 or args.warmup < 0 or args.stages < 0:
        parser.error("--limit must be >= 1, --warmup and --stages >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _, meta = start_run(
        "benchmarks.documents_path", argv,
        rapidocr=package("rapidocr"), onnxruntime=package("onnxruntime"), warmup=str(args.warmup),
    )
    paths = documents_in(args.dir, args.limit)
    if not paths:
        raise SystemExit(f"no documents in {args.dir}")
    documents = [(path.read_bytes(), path.name) for path in paths]
    query = json.loads(args.query.read_text())
    meta["pages"] = f"the first {len(paths)} documents of `{args.dir.name}`"

    import aiohttp
    import ray
    from ray import serve

    from cluster.keys import KeyStore
    from cluster.storage import Storage
    from serve.builder import APP_NAME, build_application, cluster_env, pin_models

    with tempfile.TemporaryDirectory(prefix="baton-docbench-") as storage_uri:
        config = extract_config(args.config, storage_uri, args.full, args.ocr_version)
        args.config_obj = pin_models(config, storage_uri)
        ocr_params = deployed_ocr_params(args.config_obj, storage_uri)
        meta["orchestra"] = (
            f"`{args.config.name}`, " + ("every agent" if args.full else f"only the agents `/v1/extract` reaches ({', '.join(config.agent_names())})")
            + f"; ocr version {ocr_summary(args.config_obj)}"
        )
        key, _ = KeyStore(Storage(storage_uri)).create("invoke", "benchmark")
        bench = Bench(args, documents, ocr_params)
        print(f"{meta['nproc']} CPUs, load average {meta['load_before']}; OCR alone in this process, before Ray starts:", flush=True)
        for concurrency in CONCURRENCIES:
            bench.alone(concurrency)
        if args.stages:
            bench.in_process_stages(query)
        os.environ.update(cluster_env())
        os.environ.pop("RAY_ADDRESS", None)
        port = free_port()
        started = time.monotonic()
        print("starting Ray, Serve and baton...", flush=True)
        ray.init(address="local", num_cpus=2, object_store_memory=256 * 1024 * 1024, include_dashboard=False,
                 namespace="baton-docbench", log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_application(config, storage_uri), name=APP_NAME, route_prefix="/")
            print(f"cluster up in {time.monotonic() - started:.0f} s; baton over HTTP:", flush=True)
            asyncio.run(drive(bench, f"http://127.0.0.1:{port}", key, query, APP_NAME, aiohttp))
        finally:
            serve.shutdown()
            ray.shutdown()
        print("OCR alone again, after Ray has stopped:", flush=True)
        bench.alone_again()

    print()
    print("\n".join(markdown_table(MAIN_COLUMNS, main_rows(bench.cells))))
    print()
    print("\n".join(markdown_table(VERDICT_COLUMNS, verdict_rows(bench.cells), right=(1, 2, 3, 4))))
    header, rows = cpu_rows(bench.cells)
    print()
    print("\n".join(markdown_table(header, rows)))
    for name, ms in bench.stages:
        print(f"stage: {name}: {ms:.1f} ms")
    for note in bench.notes:
        print(f"note: {note}")
    if not args.no_doc:
        write_section(markdown_section(bench, meta), args.doc, SECTION)
        print(f"wrote the {SECTION!r} section of {args.doc}")
    return 0


async def drive(bench: Bench, base_url: str, key: str, query: dict, app: str, aiohttp) -> None:
    """baton's cells and stages, after a check that the path answers and a look at the idle load."""
    connector = aiohttp.TCPConnector(limit=2 * max(CONCURRENCIES), keepalive_timeout=120)
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(base_url, connector=connector, headers=headers, timeout=aiohttp.ClientTimeout(total=300)) as session:
        extract = Extractor(session, query)
        status, payload = await extract(*bench.documents[0])
        if status != 200:
            raise SystemExit(f"POST /v1/extract answered {status}: {payload}")
        await asyncio.to_thread(bench.meter.label_actors)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(bench.idle_load)
        for concurrency in CONCURRENCIES:
            await bench.baton(extract, concurrency, app)
        if bench.args.stages:
            bench.say("stages of one page through baton:")
            await bench.handle_stages(extract, app, query)


if __name__ == "__main__":
    sys.exit(main())
