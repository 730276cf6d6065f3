"""Soak: locust's mixed load (``benchmarks/locustfile.py``) on a running baton at a share (70%)
of the capacity measured first, for a long time (30 minutes): errors by status, p50/p99 minute by
minute, and each Ray process's resident memory after warm-up and at the end. Rewrites "## Soak"
in ``docs/benchmarks.md``.

    make up && .venv/bin/python -m benchmarks.soak                 # 60 s of capacity, then 30 min
    .venv/bin/python -m benchmarks.soak --duration 5m --no-doc     # a short look
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import psutil

from benchmarks.load import REPO, add_workload_arguments, api_key, lifecycle_actions, locust_command, require_up, run_locust, served_versions
from benchmarks.request_path import write_section

HEADING = "## Soak"
SERVER_ERROR_ALLOWED = "503 overloaded"
RAYS_OWN = {"DashboardAgent", "RuntimeEnvAgent", "ProxyActor", "ServeController", "JobSupervisor", "PlacementGroupCleaner",
            "_AutoscalingCoordinatorActor", "TrainController"}
BUSY_SUFFIX = re.compile(r"\.(handle_request\w*|receive_asgi_messages|record|receive|status|write|query|flush|snapshot|run)$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(parser)
    parser.add_argument("--capacity-duration", default="60s", help="the open-ended run that measures capacity (default 60s)")
    parser.add_argument("--share", type=float, default=0.7, help="share of the measured capacity offered in the soak (default 0.7)")
    parser.add_argument("--duration", default="30m", help="soak length, e.g. 30m (default 30m)")
    parser.add_argument("--warmup-s", type=float, default=120.0, help="seconds of soak before the first memory sample (default 120)")
    parser.add_argument("--sample-s", type=float, default=60.0, help="seconds between memory samples (default 60)")
    return parser.parse_args(argv)


def request_rate(stats_csv: str) -> float:
    """Requests per second over every kind of request (refusals included; SSE first-event rows are not requests)."""
    rows = csv.DictReader(io.StringIO(stats_csv))
    return sum(float(row["Requests/s"]) for row in rows if row["Name"] != "Aggregated" and row["Type"] != "SSE")


def ray_processes() -> dict[int, tuple[str, int]]:
    """Each Ray worker process of this machine: pid -> (title, resident bytes). A busy process's
    title names the method it runs; that part is left out."""
    found = {}
    for process in psutil.process_iter(["pid", "cmdline", "memory_info"]):
        title = " ".join(" ".join(process.info["cmdline"] or []).split())  # titles come padded with spaces
        if title.startswith("ray::") and process.info["memory_info"] is not None:
            found[process.info["pid"]] = (BUSY_SUFFIX.sub("", title.removeprefix("ray::")), process.info["memory_info"].rss)
    return found


def errors_by_status(failures_csv: str) -> Counter:
    counts: Counter = Counter()
    for row in csv.DictReader(io.StringIO(failures_csv)):
        error = row["Error"].split("(")[0].strip()
        counts[error] += int(row["Occurrences"])
    return counts


def per_minute(history_csv: str) -> list[tuple[int, int, float, float]]:
    """(minute, requests, median of the 10 s p50s, highest 10 s p99) from locust's full history."""
    minutes: dict[int, list[dict]] = {}
    rows = [row for row in csv.DictReader(io.StringIO(history_csv)) if row["Name"] == "Aggregated"]
    if not rows:
        return []
    start = int(rows[0]["Timestamp"])
    for row in rows:
        minutes.setdefault((int(row["Timestamp"]) - start) // 60, []).append(row)
    table, before = [], 0
    for minute, group in sorted(minutes.items()):
        total = int(group[-1]["Total Request Count"])
        p50s = [float(r["50%"]) for r in group if r["50%"] not in ("N/A", "0", "")]
        p99s = [float(r["99%"]) for r in group if r["99%"] not in ("N/A", "0", "")]
        table.append((minute + 1, total - before, statistics.median(p50s) if p50s else 0.0, max(p99s) if p99s else 0.0))
        before = total
    return table


def soak(args: argparse.Namespace, rate_per_user: float, prefix: Path, key: str) -> tuple[str, str, str, dict, dict]:
    """Run the soak; memory sampled after warm-up and until locust ends."""
    soak_args = argparse.Namespace(**{**vars(args), "duration": args.duration})
    command = locust_command(soak_args, prefix) + ["--rate-per-user", f"{rate_per_user:.4f}", "--csv-full-history"]
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for stale in prefix.parent.glob(f"{prefix.name}_*.csv"):
        stale.unlink()
    locust = subprocess.Popen(command, cwd=REPO, env={**os.environ, "BATON_KEY": key})
    deadline = time.monotonic() + args.warmup_s
    while locust.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
    first, last = ray_processes(), {}
    while locust.poll() is None:
        last = ray_processes()
        print(f"{datetime.now(UTC):%H:%M:%S} soak running; {len(last)} Ray processes, {sum(last.values()) / 2**30:.2f} GiB resident", flush=True)
        time.sleep(args.sample_s)
    read = lambda name: Path(f"{prefix}_{name}.csv").read_text(encoding="utf-8") if Path(f"{prefix}_{name}.csv").exists() else ""  # noqa: E731
    return read("stats"), read("failures"), read("stats_history"), first, last


def is_rays_own(name: str) -> bool:
    """Ray's agents and helpers, as against baton's replicas and actors."""
    return name.split(".")[0] in RAYS_OWN


def memory_rows(first: dict, last: dict) -> list[str]:
    rows = []
    for pid in sorted(set(first) | set(last), key=lambda pid: (first.get(pid) or last[pid])[0]):
        name = (first.get(pid) or last[pid])[0]  # the title seen first: a busy process's may be cut short
        start, end = first.get(pid, (None, None))[1], last.get(pid, (None, None))[1]
        growth = f"{(end - start) / start:+.1%}" if start and end else "–"
        mib = lambda value: f"{value / 2**20:,.0f}" if value else "–"  # noqa: E731
        rows.append(f"| {name}{' (Ray)' if is_rays_own(name) else ''} (pid {pid}) | {mib(start)} | {mib(end)} | {growth} |")
    return rows


def section(meta: dict, capacity: float, errors: Counter, minutes: list, first: dict, last: dict) -> str:
    server_errors = {error: count for error, count in errors.items() if error[:1] == "5" and error != SERVER_ERROR_ALLOWED}
    growths = {pid: (last[pid][1] - first[pid][1]) / first[pid][1] for pid in first if pid in last}
    ours = [growth for pid, growth in growths.items() if not is_rays_own(first[pid][0])]
    rays = [growth for pid, growth in growths.items() if is_rays_own(first[pid][0])]
    lines = [
        HEADING, "",
        f"`{meta['command']}` on {meta['date']}, against `make up` ({meta['cpus']} CPUs; served: {', '.join(meta['served'])}).",
        f"Capacity, measured first with {meta['users']} open-ended users for {meta['capacity_duration']}: {capacity:.1f} req/s. "
        f"The soak offered {meta['share']:.0%} of it, {meta['offered']:.1f} req/s ({meta['rate_per_user']:.3f} req/s for each of "
        f"{meta['users']} users, locust's `constant_throughput`), for {meta['duration']}. Lifecycle actions during the run: "
        f"{', '.join(meta['lifecycle']) or 'none'}.", "",
        "| target | measured | verdict |", "| --- | --- | --- |",
        f"| no 5xx but 503 `overloaded` | {sum(server_errors.values())} other 5xx | {'met' if not server_errors else 'not met'} |",
        f"| resident memory growth under 10% after warm-up, each of baton's processes (replicas, actors) | largest {max(ours, default=0):+.1%} | "
        f"{'met' if ours and max(ours) < 0.10 else 'not met'} |",
        f"| the same, Ray's own processes (agents, proxy, controller) | largest {max(rays, default=0):+.1%} | "
        f"{'met' if rays and max(rays) < 0.10 else 'not met'} |", "",
        "Failures by kind (locust's failures CSV):", "",
        "| error | count |", "| --- | ---: |",
        *([f"| {error} | {count} |" for error, count in errors.most_common()] or ["| none | 0 |"]), "",
        "Minute by minute (p50: median of locust's 10 s windows; p99: the highest 10 s window):", "",
        "| minute | requests | p50 ms | p99 ms |", "| ---: | ---: | ---: | ---: |",
        *[f"| {minute} | {count} | {p50:,.0f} | {p99:,.0f} |" for minute, count, p50, p99 in minutes], "",
        f"Resident memory of each Ray process, MiB, after {meta['warmup_s']:.0f} s of soak and at its end:", "",
        "| process | after warm-up | end | growth |", "| --- | ---: | ---: | ---: |",
        *memory_rows(first, last), "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.host = args.host.rstrip("/")
    require_up(args.host)
    key = api_key()
    served = served_versions(args.host, key)
    started = datetime.now(UTC)
    capacity_args = argparse.Namespace(**{**vars(args), "duration": args.capacity_duration})
    prefix = REPO / "build" / "locust" / "capacity"
    stats, _ = run_locust(locust_command(capacity_args, prefix.relative_to(REPO)), prefix, key)
    capacity = request_rate(stats)
    rate_per_user = args.share * capacity / args.users
    print(f"capacity {capacity:.1f} req/s; soak at {args.share:.0%}: {rate_per_user:.3f} req/s for each of {args.users} users")
    stats, failures, history, first, last = soak(args, rate_per_user, REPO / "build" / "locust" / "soak", key)
    errors = errors_by_status(failures)
    meta = {
        "command": shlex.join([".venv/bin/python", "-m", "benchmarks.soak", *(argv if argv is not None else sys.argv[1:])]),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"), "cpus": os.cpu_count(), "served": served,
        "users": args.users, "capacity_duration": args.capacity_duration, "share": args.share, "offered": args.share * capacity,
        "rate_per_user": rate_per_user, "duration": args.duration, "warmup_s": args.warmup_s,
        "lifecycle": lifecycle_actions(args.host, key, started),
    }
    text = section(meta, capacity, errors, per_minute(history), first, last)
    print(text)
    if not args.no_doc:
        write_section(text, args.doc, heading=HEADING)
        print(f"wrote {HEADING!r} in {args.doc}")


if __name__ == "__main__":
    main()
