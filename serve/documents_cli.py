"""``baton extract`` and ``baton documents eval|ingest``: fields from a document through the
running service, the extraction scored on labelled documents, and batch ingest as a Ray job.
Registered on the root CLI through the ``baton.cli`` entry point.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cluster import local
from cluster.errors import BatonError, ValidationFailed
from serve.cli import DEV_KEY, ConfigOption, _base_url, _load, _storage

console = Console(stderr=True)
documents_app = typer.Typer(help="Document extraction: score it on labelled documents, ingest folders through a pipeline.", no_args_is_help=True)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".pdf")


def _json_option(text: str, what: str) -> Any:
    if text.strip() == "*":
        return "*"
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValidationFailed(f"{what}: not valid JSON ({error.msg} at character {error.pos})") from None


def _api_key(key: Optional[str]) -> str:
    key = key or os.environ.get("BATON_API_KEY")
    if key:
        return key
    if DEV_KEY.is_file():
        return DEV_KEY.read_text().strip()
    raise BatonError("no API key: pass --key, set BATON_API_KEY, or run `baton up` (which writes .baton/dev-key)")


def extract(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="A PNG, JPEG, TIFF or PDF."),
    query: str = typer.Option("*", "--query", "-q", help='Fields wanted: a schema by example (\'{"total": 0.0, "date": "date"}\'), a JSON Schema, or "*".'),
    mode: str = typer.Option("fields", "--mode", help="fields, text (OCR lines with boxes) or table."),
    options: str = typer.Option("{}", "--options", help='Extra options as JSON, e.g. \'{"engine": "llm", "pages": [1]}\'.'),
    url: Optional[str] = typer.Option(None, "--url", help="baton's URL; default: the config's HTTP address."),
    key: Optional[str] = typer.Option(None, "--key", help="API key; default: $BATON_API_KEY, else .baton/dev-key."),
    config: Path = ConfigOption,
) -> None:
    """Extract fields from FILE through POST /v1/extract and print the JSON answer."""
    _json_option(query, "--query")
    _json_option(options, "--options")
    base = url or _base_url(_load(config))
    response = httpx.post(
        f"{base}/v1/extract",
        headers={"Authorization": f"Bearer {_api_key(key)}"},
        files={"file": (file.name, file.read_bytes())},
        data={"query": query, "mode": mode, "options": options},
        timeout=120,
    )
    print(json.dumps(response.json(), indent=2, ensure_ascii=False))
    if response.status_code != 200:
        raise typer.Exit(2)


# -- eval --------------------------------------------------------------------------------


def labelled_pairs(folder: Path) -> list[tuple[Path, dict]]:
    """(document, gold labels) for every NNN.jpg (or .png/.pdf...) with a NNN.json beside it."""
    pairs = []
    for path in sorted(folder.iterdir()):
        gold = path.with_suffix(".json")
        if path.suffix.lower() in IMAGE_SUFFIXES and gold.is_file():
            pairs.append((path, json.loads(gold.read_text())))
    return pairs


def merged_fields(results: list[dict]) -> dict:
    """A document's fields: for each, the first page that found it."""
    fields: dict = {}
    for result in results:
        for name, value in (result.get("fields") or {}).items():
            if fields.get(name) is None:
                fields[name] = value
    return fields


def field_kinds(query: Any) -> dict[str, str]:
    from actors.documents.schema import compile_query

    return {spec.name: spec.kind for spec in compile_query(query).fields}


def evaluate_folder(folder: Path, query: Any, extractor, limit: int | None = None, progress: Progress | None = None) -> dict:
    """Extract every labelled document with ``extractor(path, query) -> (results, pages)`` and score it."""
    from actors.documents.evaluate import score

    pairs = labelled_pairs(folder)[:limit]
    if not pairs:
        raise BatonError(f"{folder}: no NNN.jpg + NNN.json pairs")
    kinds = field_kinds(query)
    predicted, per_page_ms, pages_total, started = [], [], 0, time.perf_counter()
    task = progress.add_task("extracting", total=len(pairs)) if progress else None
    for path, gold in pairs:
        began = time.perf_counter()
        results, pages = extractor(path, query)
        elapsed_ms = (time.perf_counter() - began) * 1000
        per_page_ms.extend([elapsed_ms / max(pages, 1)] * max(pages, 1))
        pages_total += pages
        predicted.append((merged_fields(results), {name: gold.get(name) for name in kinds if name in gold}))
        if progress:
            progress.advance(task)
    report = score(predicted, kinds)
    quantiles = statistics.quantiles(per_page_ms, n=20, method="inclusive") if len(per_page_ms) > 1 else per_page_ms * 19
    return {
        **report,
        "pages_per_s": round(pages_total / (time.perf_counter() - started), 3),
        "p50_ms": round(statistics.median(per_page_ms), 1),
        "p95_ms": round(quantiles[18], 1),
    }


def in_process_extractor(params: dict | None = None):
    """The documents specialist in this process (OCR too): no cluster needed."""
    from actors.invocation import Document, Invocation, drain
    from actors.specialists.documents import DocumentsSpecialist

    specialist = DocumentsSpecialist(params or {})
    specialist.load()

    def run(path: Path, query: Any) -> tuple[list[dict], int]:
        document = Document(path.read_bytes(), "application/octet-stream", path.name)
        output = drain(specialist.stream(Invocation(document=document, options={"query": query}))).output
        return output["results"], len(output["results"])

    return run


def http_extractor(base: str, key: str):
    """Each document through the running service's POST /v1/extract."""
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120)

    def run(path: Path, query: Any) -> tuple[list[dict], int]:
        response = client.post("/v1/extract", files={"file": (path.name, path.read_bytes())}, data={"query": json.dumps(query)})
        if response.status_code != 200:
            raise BatonError(f"{path.name}: {response.status_code} {response.text[:300]}")
        body = response.json()
        return body["results"], len(body["results"])

    return run


@documents_app.command("eval")
def documents_eval(
    directory: Path = typer.Option(..., "--dir", exists=True, file_okay=False, help="Folder of NNN.jpg + NNN.json pairs."),
    query_file: Path = typer.Option(..., "--query", exists=True, dir_okay=False, help="JSON file with the query (schema by example)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N documents."),
    url: Optional[str] = typer.Option(None, "--url", help="Measure the running service at this URL instead of extracting in this process."),
    key: Optional[str] = typer.Option(None, "--key", help="API key for --url; default: $BATON_API_KEY, else .baton/dev-key."),
) -> None:
    """Per field: exact match after normalisation and character F1; then pages/s and latency per page."""
    query = _json_option(query_file.read_text(), str(query_file))
    extractor = http_extractor(url, _api_key(key)) if url else in_process_extractor()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        report = evaluate_folder(directory, query, extractor, limit, progress)
    if as_json:
        print(json.dumps(report))
        return
    table = Table(title=f"{directory} ({report['n']} documents)")
    for column in ("field", "exact", "char F1"):
        table.add_column(column, justify="left" if column == "field" else "right")
    for name, cell in report["fields"].items():
        table.add_row(name, f"{cell['exact']:.1%}", f"{cell['char_f1']:.3f}")
    Console().print(table)
    print(f"{report['pages_per_s']} pages/s; per page p50 {report['p50_ms']} ms, p95 {report['p95_ms']} ms")


# -- ingest ------------------------------------------------------------------------------


@documents_app.command("ingest")
def documents_ingest(
    uri: str = typer.Argument(..., help="A folder, a file, or a URI prefix (s3://bucket/prefix) of documents."),
    pipeline: str = typer.Option(..., "--pipeline", "-p", help="The pipeline each document goes through (see GET /v1/pipelines)."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, max=256, help="Documents in flight at once."),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="Stream the job's progress until it ends."),
    config: Path = ConfigOption,
) -> None:
    """Run a pipeline over every document under URI as a Ray job of the running cluster.
    Resumable: documents already stored are skipped, so a rerun picks up where one stopped."""
    orchestra = _load(config)
    if orchestra.pipeline(pipeline) is None:
        raise BatonError(f"pipeline {pipeline!r} is not in {config} (pipelines: {[p.name for p in orchestra.pipelines]})")
    if not local.dashboard_up():
        raise BatonError("no running cluster: start one with `baton up` (the pipeline's agents must be deployed)")
    source = uri if "://" in uri else str(Path(uri).resolve())
    entrypoint = (
        f"python -m serve.ingest {json.dumps(source)} --pipeline {pipeline} --config {config.as_posix()} "
        f"--storage {json.dumps(_storage(orchestra).uri)} --concurrency {concurrency}"
    )
    local.run_job(entrypoint, {"HF_HUB_OFFLINE": "1"}, follow)


def register(root: typer.Typer) -> None:
    root.command()(extract)
    root.add_typer(documents_app, name="documents")
