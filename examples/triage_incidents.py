#!/usr/bin/env python
"""Triage incidents on a running baton cluster deployed with configs/examples/sysops.yaml.

For every incident (a thread of log lines and messages) it calls, through Ray Serve handles and all
at once, the ``triage`` agent on each line (severity and component), the ``incident_entities`` agent on
each line (hosts, IPs, error codes) and the ``summarize`` agent on the whole thread, then prints one
table per incident. When the orchestra has a ``responder`` (the optional LLM agent of sysops.yaml), it
also drafts the reply to the incident channel.

    baton up -c configs/examples/sysops.yaml
    .venv/bin/python examples/triage_incidents.py                    # built-in incidents
    .venv/bin/python examples/triage_incidents.py --file incidents.txt

The incidents file: incidents separated by blank lines, one log line or message per line; a first line
starting with '#' names the incident. Exit status: 0 when every call answered, 1 when the cluster, the
application or an agent is missing, 3 when some calls failed (the table shows which).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from actors.invocation import Failure, Invocation, Result  # noqa: E402

CONFIG = "configs/examples/sysops.yaml"
DEPLOY_HINT = f"deploy the sysops orchestra first: baton up -c {CONFIG}"
AGENTS = ("triage", "incident_entities", "summarize")
RESPONDER = "responder"
ENTITY_LABELS = {"HOST": "host", "IP_ADDRESS": "ip", "ERROR_CODE": "code", "URL": "url", "EMAIL": "email"}
SEVERITY_STYLES = {"critical": "bold white on red", "error": "bold red", "warning": "yellow", "info": "green", "debug": "dim"}

BUILT_IN = """\
# Primary database refusing connections
<27>Mar 12 02:14:07 db-01.prod.example.com postgres[2231]: FATAL:  remaining connection slots are reserved for non-replication superuser connections
2024-03-12T02:14:09.412Z ERROR [checkout-api] HikariPool-1 - Connection is not available, request timed out after 30000ms (host=db-01.prod.example.com)
dial tcp 10.0.4.12:5432: connect: connection refused (ECONNREFUSED)
Alice: checkout is failing for every customer since 02:14, api-7d9f8b6c5d-x2k4p logs show ORA-00942 from the legacy reports job too.
Bob: the reports job opened 400 connections to db-01 and never closed them; I killed it and connections are dropping back to normal.
Alice: error rate is back under 1%, keeping the incident open until the pool limits are fixed.

# Payments pod OOM-killed in a crash loop
Warning  BackOff  kubelet  Back-off restarting failed container payments in pod payments-api-5c8d7f9b4-q7zkt
kernel: Memory cgroup out of memory: Killed process 48213 (java) total-vm:6291456kB, anon-rss:2097152kB
E0312 03:02:11.123456    1 kuberuntime_manager.go:1052] container payments exited with exit code 137 (OOMKilled) on node ip-10-0-1-23.ec2.internal
Carol: payments-api has been in CrashLoopBackOff for 20 minutes; the heap limit is 2 GiB but the new fraud model needs about 3.
Carol: I raised the memory limit to 4Gi and rolled the deployment; pods are Running again.

# Edge returning 502s after a certificate rotation
10.20.3.4 - - [12/Mar/2024:04:40:01 +0000] "GET /api/orders HTTP/1.1" 502 157 "-" "Mozilla/5.0"
2024/03/12 04:40:02 [error] 3121#3121: *88 SSL_do_handshake() failed while SSL handshaking to upstream, upstream: "https://10.20.8.15:8443/api/orders"
level=warn ts=2024-03-12T04:41:00Z msg="certificate for api.example.com expires in 0 days" host=edge-02
Dave: users are getting 502s from edge-02 only; edge-01 still has the old certificate bundle.
Dave: redeployed the new intermediate chain to edge-02, HTTP 200s again; see https://status.example.com/incidents/42 for the timeline.
"""


@dataclass
class Incident:
    title: str
    lines: list[str] = field(default_factory=list)

    @property
    def thread(self) -> str:
        # A blank line between messages: the summariser never joins two of them into one sentence.
        return "\n\n".join(self.lines)


def parse_incidents(text: str) -> list[Incident]:
    """Incidents separated by blank lines; a leading '# title' line names one."""
    incidents: list[Incident] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line.rstrip() for line in block.split("\n") if line.strip()]
        if not lines:
            continue
        title = f"incident {len(incidents) + 1}"
        if lines[0].startswith("#"):
            title = lines.pop(0).lstrip("#").strip() or title
        if lines:
            incidents.append(Incident(title, lines))
    return incidents


class SetupError(Exception):
    """The cluster, the application or a deployment is not there; the message says what to do."""


def connect(address: str) -> None:
    import ray

    try:
        ray.init(address=address, namespace="baton", logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        reason = str(error).split(". ")[0].rstrip(".")
        raise SetupError(f"no Ray cluster at {address!r} ({reason}); {DEPLOY_HINT}") from None


def find_deployments(app: str, wanted: tuple[str, ...]) -> tuple[dict[str, str], str | None, list[str]]:
    """({agent: deployment name} for each wanted agent, the responder's deployment or None, notes)."""
    from ray import serve

    applications = serve.status().applications
    if app not in applications:
        running = ", ".join(sorted(applications)) or "none"
        raise SetupError(f"Serve application {app!r} is not running (running: {running}); {DEPLOY_HINT}")
    overview = applications[app]
    versions: dict[str, list[str]] = {}
    for name in overview.deployments:
        agent, dot, _ = name.rpartition(".")
        if dot:
            versions.setdefault(agent, []).append(name)
    missing = [agent for agent in wanted if agent not in versions]
    if missing:
        raise SetupError(
            f"application {app!r} has no deployment for agent(s) {', '.join(missing)} "
            f"(deployed: {', '.join(sorted(overview.deployments))}); {DEPLOY_HINT}"
        )
    notes = []
    if overview.status != "RUNNING":
        notes.append(f"application {app!r} is {overview.status}: {overview.message or 'calls may wait for replicas'}")
    chosen = {}
    for agent in (*wanted, RESPONDER):
        names = sorted(versions.get(agent, []))
        if not names:
            continue
        chosen[agent] = names[-1]
        if len(names) > 1:
            notes.append(f"agent {agent} has versions {', '.join(names)}; calling {names[-1]}")
    return {agent: chosen[agent] for agent in wanted}, chosen.get(RESPONDER), notes


def unwrap(response: Any, timeout_s: float) -> tuple[Any, str | None]:
    """(output, None) of a Result, or (None, the error) of a Failure or a failed call."""
    try:
        answer = response.result(timeout_s=timeout_s)
    except Exception as error:  # noqa: BLE001 - a timeout or a replica that died: shown in the table
        return None, f"{error.__class__.__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    if isinstance(answer, Failure):
        return None, f"{answer.error.__class__.__name__}: {answer.error}"
    if isinstance(answer, Result):
        return answer.output, None
    return None, f"unexpected answer {type(answer).__name__}"


def run(incidents: list[Incident], deployments: dict[str, str], responder: str | None, app: str, timeout_s: float) -> list[dict]:
    """Call every agent for every incident, all calls in flight together; the analyses in order."""
    from ray import serve

    handles = {agent: serve.get_deployment_handle(name, app_name=app) for agent, name in deployments.items()}
    deadline = time.time() + timeout_s

    def call(agent: str, text: str, **options: Any) -> Any:
        return handles[agent].invoke.remote(Invocation(text=text, options=options, deadline=deadline))

    pending = [
        {
            "triage": [call("triage", line) for line in incident.lines],
            "entities": [call("incident_entities", line) for line in incident.lines],
            "summary": call("summarize", incident.thread, max_sentences=2),
        }
        for incident in incidents
    ]
    analyses = []
    for incident, calls in zip(incidents, pending):
        rows = []
        for line, triage, entities in zip(incident.lines, calls["triage"], calls["entities"]):
            triage_out, triage_error = unwrap(triage, timeout_s)
            entities_out, entities_error = unwrap(entities, timeout_s)
            rows.append({"line": line, "triage": triage_out, "entities": entities_out, "errors": [e for e in (triage_error, entities_error) if e]})
        summary_out, summary_error = unwrap(calls["summary"], timeout_s)
        analyses.append({"title": incident.title, "rows": rows, "summary": summary_out, "summary_error": summary_error})
    if responder is not None:
        reply_handle = serve.get_deployment_handle(responder, app_name=app)
        replies = [reply_handle.invoke.remote(Invocation(text=json.dumps(reply_input(a)), deadline=deadline)) for a in analyses]
        for analysis, reply in zip(analyses, replies):
            output, error = unwrap(reply, timeout_s)
            analysis["reply"], analysis["reply_error"] = (output or {}).get("text"), error
    return analyses


def reply_input(analysis: dict) -> dict:
    """What the responder reads: the same keys as the incident supervisor's result."""
    worst = max((row["triage"] for row in analysis["rows"] if row["triage"]), key=_severity_rank, default=None)
    entities = [entity for row in analysis["rows"] for entity in (row["entities"] or {}).get("entities", [])]
    return {
        "triage": worst and {key: worst[key] for key in ("severity", "component")},
        "incident_entities": {"entities": [{"text": e["text"], "type": e["type"]} for e in entities]},
        "summarize": analysis["summary"],
    }


def _severity_rank(triage: dict) -> int:
    order = ("debug", "info", "warning", "error", "critical")
    return order.index(triage["severity"]) if triage.get("severity") in order else -1


def entity_text(entities: dict | None) -> str:
    if not entities:
        return ""
    return ", ".join(f"{ENTITY_LABELS.get(e['type'], e['type'].lower())} {e['text']}" for e in entities["entities"])


def print_tables(analyses: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    for analysis in analyses:
        table = Table(title=analysis["title"], show_lines=True, expand=True, title_justify="left")
        table.add_column("line", ratio=5, overflow="fold")
        table.add_column("severity", no_wrap=True)
        table.add_column("component", no_wrap=True)
        table.add_column("entities (hosts / IPs / codes)", ratio=3, overflow="fold")
        for row in analysis["rows"]:
            triage = row["triage"] or {}
            severity = triage.get("severity", "?")
            decided = "" if triage.get("severity_source") in (None, "model") else f"\n[dim]{triage['severity_source']}[/dim]"
            severity_cell = Text.from_markup(f"[{SEVERITY_STYLES.get(severity, '')}]{severity}[/]{decided}")
            entities = entity_text(row["entities"])
            if row["errors"]:
                entities = (entities + "\n" if entities else "") + "\n".join(f"[failed] {error}" for error in row["errors"])
            # Text, not markup: log lines are full of [brackets].
            table.add_row(Text(row["line"]), severity_cell, Text(triage.get("component", "?")), Text(entities))
        summary = analysis["summary"]["summary"] if analysis["summary"] else f"[failed] {analysis['summary_error']}"
        table.caption = Text(f"summary: {summary}")
        table.caption_justify = "left"
        console.print(table)
        if "reply" in analysis:
            reply = analysis["reply"] or f"[failed] {analysis['reply_error']}"
            console.print(Text.assemble(("draft reply: ", "bold"), reply, "\n"))


def failures(analyses: list[dict]) -> int:
    count = 0
    for analysis in analyses:
        count += sum(len(row["errors"]) for row in analysis["rows"])
        count += analysis["summary_error"] is not None
        count += analysis.get("reply_error") is not None
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=DEPLOY_HINT)
    parser.add_argument("--app", default="baton", help="Serve application name (default: baton).")
    parser.add_argument("--file", type=Path, help="Incidents file (blank-line separated; '# title' lines); default: built-in incidents.")
    parser.add_argument("--address", default="auto", help="Ray cluster address (default: auto, the running local head).")
    parser.add_argument("--timeout", type=float, default=120.0, help="Seconds to wait for all answers (default: 120).")
    parser.add_argument("--json", action="store_true", help="Print the analyses as JSON instead of tables.")
    args = parser.parse_args(argv)

    if args.file is not None and not args.file.is_file():
        print(f"error: no such incidents file: {args.file}", file=sys.stderr)
        return 1
    incidents = parse_incidents(args.file.read_text(encoding="utf-8") if args.file else BUILT_IN)
    if not incidents:
        print(f"error: no incidents in {args.file}", file=sys.stderr)
        return 1
    try:
        connect(args.address)
        deployments, responder, notes = find_deployments(args.app, AGENTS)
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    analyses = run(incidents, deployments, responder, args.app, args.timeout)
    if args.json:
        print(json.dumps(analyses, indent=1, ensure_ascii=False))
    else:
        print_tables(analyses)
    failed = failures(analyses)
    if failed:
        print(f"error: {failed} call(s) failed; see the table", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
