"""Mixed load with locust on a running baton (``make up``): ``benchmarks/locustfile.py`` headless
for a fixed time (text users route, invoke, ask a supervisor and stream; document users extract
receipts), then its CSV as a per-request-kind table in the "### Mixed load (locust)" section of
``docs/benchmarks.md`` (replaced if there, else added under "## Load").

    make up && make bench-load                                  # 16 users, 60 s
    .venv/bin/python -m benchmarks.load --users 32 --duration 120s --no-doc
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import shlex
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml

from benchmarks.request_path import write_section

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
LOCUSTFILE = REPO / "benchmarks" / "locustfile.py"
CONFIG = REPO / "configs" / "orchestra.yaml"
RECEIPT = REPO.parent / "shared" / "datasets" / "sroie-dev" / "000.jpg"
REVIEWS = REPO.parent / "shared" / "datasets" / "sst2" / "train.tsv"
HEADING = "### Mixed load (locust)"
PARENT = "## Load"
# The workload's kinds in the order the table lists them; 429/503 rows follow their kind.
KINDS = ("route", "invoke sentiment", "supervisor analyst", "stream", "stream: first event", "extract receipt")
AGENTS = ("sentiment", "language", "entities", "pii", "keyphrases", "summarize", "triage", "analyst", "documents", "ocr")
COLUMNS = ("request", "requests", "failures", "req/s", "p50 ms", "p95 ms", "p99 ms")
SSE_TYPE = "SSE"  # the locustfile's time-to-first-event rows: not requests of their own
# Audit actions of the lifecycle: a load of few distinct texts can set off drift and retraining,
# whose job then shares the CPUs with the load; the section says when that happened.
LIFECYCLE = ("drift.", "retrain.", "rollout.")


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the locust workload that every load benchmark takes (this one, the soak)."""
    port = os.environ.get("BATON_HTTP_PORT", "8000")
    parser.add_argument("--host", default=f"http://127.0.0.1:{port}", help="baton's URL (default http://127.0.0.1:$BATON_HTTP_PORT or 8000)")
    parser.add_argument("--users", type=int, default=16, help="concurrent locust users, document users included (default 16)")
    parser.add_argument("--document-users", type=int, default=2, help="of them, users that only extract receipts (default 2, at least 1)")
    parser.add_argument("--spawn-rate", type=float, default=4.0, help="users started per second (default 4)")
    parser.add_argument("--receipt", type=Path, default=RECEIPT, help="receipt image for /v1/extract (default ../shared/datasets/sroie-dev/000.jpg)")
    parser.add_argument("--reviews", type=Path, default=REVIEWS, help="SST-2 train.tsv for the sentiment invokes (default ../shared/datasets/sst2/train.tsv)")
    parser.add_argument("--doc", type=Path, default=DOC, help="Markdown file whose section is written (default docs/benchmarks.md)")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_workload_arguments(parser)
    parser.add_argument("--duration", default="60s", help="locust run time, e.g. 60s, 2m (default 60s)")
    parser.add_argument("--csv", default="build/locust/mixed", help="locust CSV prefix, relative to the repo (default build/locust/mixed)")
    return parser.parse_args(argv)


def require_up(host: str) -> None:
    """Exit with a plain message unless baton answers ``/healthz`` on ``host``."""
    try:
        response = httpx.get(f"{host}/healthz", timeout=5)
    except httpx.HTTPError as error:
        sys.exit(f"nothing answers on {host} ({type(error).__name__}): start baton with `make up` first")
    if response.status_code != 200:
        sys.exit(f"{host}/healthz answered {response.status_code}: wait until `make up` reports baton ready")


def served_versions(host: str, key: str, config: Path = CONFIG) -> list[str]:
    """For the agents the workload reaches: each version with traffic, its weight and what it serves."""
    agents = httpx.get(f"{host}/v1/agents", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()["agents"]
    declared = {a["name"]: a for a in yaml.safe_load(config.read_text(encoding="utf-8")).get("agents", [])} if config.exists() else {}
    lines = []
    for agent in (a for a in agents if a["name"] in AGENTS):
        spec = {v["version"]: v for v in declared.get(agent["name"], {}).get("versions", [])}
        for version in (v for v in agent["versions"] if v["weight"] > 0):
            what = spec.get(version["version"], {})
            served = what.get("model") or what.get("kind") or declared.get(agent["name"], {}).get("kind", "?")
            lines.append(f"{agent['name']} {version['version']} ({served}, {version['weight']}%)")
    return lines


def lifecycle_actions(host: str, key: str, since: datetime) -> list[str]:
    """The lifecycle's audit actions since ``since`` (drift alerts, retraining, rollouts), counted;
    asked per agent, since one query returns at most ``limits.audit_query_max`` (1000) records."""
    actions: Counter = Counter()
    for agent in AGENTS:
        answer = httpx.get(f"{host}/v1/admin/audit", params={"since": since.isoformat(), "agent": agent, "limit": 1000},
                           headers={"Authorization": f"Bearer {key}"}, timeout=30)
        if answer.status_code != 200:
            return [f"unknown (the audit query answered {answer.status_code})"]
        actions.update(f"{r['endpoint']} {agent}" for r in answer.json()["records"] if r["endpoint"].startswith(LIFECYCLE))
    return [f"`{action}` × {count}" for action, count in sorted(actions.items())]


def api_key() -> str:
    for variable in ("BATON_KEY", "BATON_API_KEY"):
        if os.environ.get(variable):
            return os.environ[variable].strip()
    path = REPO / ".baton" / "dev-key"
    if not path.is_file():
        sys.exit("no API key: set BATON_KEY, or run `make up` (which writes .baton/dev-key)")
    return path.read_text(encoding="utf-8").strip()


def locust_command(args: argparse.Namespace, prefix: Path) -> list[str]:
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE.relative_to(REPO)), "--headless", "--only-summary",
        "-u", str(args.users), "-r", f"{args.spawn_rate:g}", "-t", args.duration, "--csv", str(prefix), "--host", args.host,
        "--receipt", os.path.relpath(args.receipt.resolve(), REPO), "--reviews", os.path.relpath(args.reviews.resolve(), REPO),
        "--document-users", str(args.document_users),
    ]


def run_locust(command: list[str], prefix: Path, key: str) -> tuple[str, str]:
    """Run locust to its end; the text of its ``_stats.csv`` and ``_failures.csv``."""
    stats, failures = (Path(f"{prefix}_{name}.csv") for name in ("stats", "failures"))
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for stale in prefix.parent.glob(f"{prefix.name}_*.csv"):
        stale.unlink()
    run = subprocess.run(command, check=False, cwd=REPO, env={**os.environ, "BATON_KEY": key})
    if not stats.exists():  # locust exits 1 when any request failed: only a missing CSV is an error
        sys.exit(f"locust exited {run.returncode} without writing {stats}")
    if not any(r["Name"] != "Aggregated" for r in csv.DictReader(io.StringIO(stats.read_text(encoding="utf-8")))):
        sys.exit(f"locust exited {run.returncode} having recorded no request: see its log above")
    return stats.read_text(encoding="utf-8"), failures.read_text(encoding="utf-8") if failures.exists() else ""


def row_order(name: str) -> tuple[int, str]:
    kind = name.split(" [", 1)[0]
    return (KINDS.index(kind) if kind in KINDS else len(KINDS), name)


def _number(value: str, digits: int = 0) -> str:
    try:
        return f"{float(value):.{digits}f}"
    except ValueError:
        return "–"


def markdown_table(stats_csv: str, failures_csv: str = "") -> list[str]:
    """Locust's ``_stats.csv`` (and ``_failures.csv``) as Markdown lines: one row per request kind,
    then the total of the HTTP requests, then the failures by kind and error."""
    rows = [r for r in csv.DictReader(io.StringIO(stats_csv)) if r["Name"] != "Aggregated"]
    rows.sort(key=lambda r: row_order(r["Name"]))
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|"]
    for r in rows:
        cells = (f"`{r['Name']}`", r["Request Count"], r["Failure Count"], _number(r["Requests/s"], 2),
                 _number(r["50%"]), _number(r["95%"]), _number(r["99%"]))
        lines.append("| " + " | ".join(cells) + " |")
    http = [r for r in rows if r["Type"] != SSE_TYPE]
    total = (sum(int(r["Request Count"]) for r in http), sum(int(r["Failure Count"]) for r in http),
             sum(float(r["Requests/s"]) for r in http))
    lines.append(f"| all HTTP requests | {total[0]} | {total[1]} | {total[2]:.2f} | – | – | – |")
    failures = sorted(csv.DictReader(io.StringIO(failures_csv)), key=lambda f: row_order(f["Name"])) if failures_csv else []
    if failures:
        lines += ["", "Failures: " + "; ".join(f"`{f['Name']}` {f['Occurrences']} × {_error_text(f['Error'])}" for f in failures) + "."]
    return lines


def _error_text(error: str) -> str:
    """``CatchResponseError('refused 429 rate_limited')`` -> ``refused 429 rate_limited``."""
    match = re.fullmatch(r"\w+\(['\"](.*)['\"]\)", error.strip())
    return match.group(1) if match else error.strip()


def section(table: list[str], meta: dict) -> str:
    lines = [
        HEADING, "",
        (f"`{meta['command']}` on {meta['date']}: {meta['users']} locust users ({meta['document_users']} of them "
        f"document users; spawned {meta['spawn_rate']}/s, 0.1–0.5 s between tasks) for {meta['duration']} "
        f"against `make up` at {meta['host']}, on {meta['cpus']} CPUs. "
        f"Locust ran `{meta['locust']}`."),
        "",
        f"Served: {', '.join(meta['served']) or 'unknown'}.",
        "",
        f"Lifecycle during the run: {', '.join(meta['lifecycle']) or 'nothing'}"
        + (" (a retraining job shared the CPUs with the load)." if any("retrain.job" in a for a in meta["lifecycle"]) else "."),
        "",
        ("A text user picks route 8 : invoke sentiment 4 : supervisor analyst 2 : stream 2. `route` cycles "
        "seven texts the router sends to seven agents (sentiment, language, entities, pii, keyphrases, triage, "
        "summarize); `invoke sentiment` sends one of 1000 SST-2 sentences sampled once; `supervisor analyst` is `POST /v1/agents/analyst/invoke` (policy `router`); `stream` is "
        "`/v1/route` with `stream: true` (to summarize) read to its `result` event, and `stream: first event` "
        "the time to its first event (no agent of the default orchestra streams chunks, so the first event is "
        "the result). A document user extracts one SROIE receipt (four fields) after another. A "
        "`[429 …]`/`[503 …]` row counts those answers, with their error code and how long they took; the user "
        "then waited out `Retry-After`. Times in ms, bucketed by locust (2 significant digits above 100 ms)."),
        "",
        *table,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.host = args.host.rstrip("/")
    if not args.receipt.is_file():
        sys.exit(f"no receipt at {args.receipt}: pass --receipt PATH (a JPEG or PNG, e.g. from ../shared/datasets/sroie-dev)")
    if not args.reviews.is_file():
        sys.exit(f"no review sentences at {args.reviews}: pass --reviews PATH (SST-2's train.tsv)")
    if not 1 <= args.document_users < args.users:
        sys.exit(f"--document-users must be at least 1 and below --users ({args.users}), got {args.document_users}")
    require_up(args.host)
    key = api_key()
    served = served_versions(args.host, key)
    prefix = REPO / args.csv
    command = locust_command(args, prefix.relative_to(REPO) if prefix.is_relative_to(REPO) else prefix)
    started = datetime.now(UTC)
    stats, failures = run_locust(command, prefix, key)
    lifecycle = lifecycle_actions(args.host, key, started)
    table = markdown_table(stats, failures)
    print("\n".join(table))
    print(f"lifecycle during the run: {', '.join(lifecycle) or 'nothing'}")
    if args.no_doc:
        return
    ours = ["--host", args.host, "--users", str(args.users), "--document-users", str(args.document_users),
            "--spawn-rate", f"{args.spawn_rate:g}", "--duration", args.duration]
    ours += [] if args.receipt.resolve() == RECEIPT.resolve() else ["--receipt", str(args.receipt)]
    ours += [] if args.reviews.resolve() == REVIEWS.resolve() else ["--reviews", str(args.reviews)]
    meta = {
        "command": shlex.join([".venv/bin/python", "-m", "benchmarks.load", *ours]),
        "locust": shlex.join(["locust", *command[3:]]),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"), "lifecycle": lifecycle,
        "users": str(args.users), "document_users": str(args.document_users), "spawn_rate": f"{args.spawn_rate:g}", "duration": args.duration, "host": args.host,
        "cpus": str(os.cpu_count()), "served": served,
    }
    write_section(section(table, meta), args.doc, heading=HEADING, parent=PARENT)
    print(f"wrote {HEADING!r} in {args.doc}")


if __name__ == "__main__":
    main()
