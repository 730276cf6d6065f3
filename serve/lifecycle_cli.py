"""``baton`` commands of the running lifecycle, over the HTTP API: rollout start/status/
pause/resume/abort, shadow, ab report and cost. They print JSON with --json, tables otherwise.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Optional

import httpx
import typer
from rich.console import Console
from rich.table import Table

from cluster.config import GuardSettings, RolloutPlan, ShadowPhase
from cluster.errors import BatonError, ValidationFailed
from serve.cli import ConfigOption, _base_url, _load
from serve.documents_cli import _api_key

console = Console()
rollout_app = typer.Typer(help="Guarded rollouts: shadow, canary steps, guards, automatic rollback.", no_args_is_help=True)
ab_app = typer.Typer(help="A/B analysis of an agent's versions.", no_args_is_help=True)
UrlOption = typer.Option(None, "--url", help="baton's URL; default: from the orchestra config.")
KeyOption = typer.Option(None, "--key", help="Admin API key; default: $BATON_API_KEY, else .baton/dev-key.")
JsonOption = typer.Option(False, "--json", help="Print the JSON answer.")
DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str) -> float:
    """'90', '90s', '10m', '1.5h' as seconds."""
    match = DURATION.match(text)
    if match is None:
        raise ValidationFailed(f"duration {text!r}: expected a number with an optional unit ms, s, m or h, e.g. 60s or 10m")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


class Client:
    """The admin API of a running baton, errors shown as API.md's error body."""

    def __init__(self, url: Optional[str], key: Optional[str], config: Path):
        self.http = httpx.Client(base_url=url or _base_url(_load(config)), headers={"Authorization": f"Bearer {_api_key(key)}"}, timeout=60)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                raise BatonError(f"{response.status_code} {error['code']}: {error['message']}")
            except (ValueError, KeyError, TypeError):
                raise BatonError(f"{response.status_code}: {response.text[:300]}") from None
        return response.json()


@rollout_app.command("start")
def rollout_start(
    agent: str = typer.Argument(..., help="The agent whose model is rolled out."),
    candidate: str = typer.Option(..., "--candidate", help="registry://name:version (or @alias) of the new model."),
    steps: str = typer.Option("5,25,50,100", "--steps", help="Candidate weights in percent, rising to 100."),
    bake: str = typer.Option("60s", "--bake", help="Time at each step before the guards are checked (e.g. 60s, 5m)."),
    guards: list[str] = typer.Option(
        ["error_rate<0.01"], "--guard", help="Repeatable: METRIC OP VALUE, an x after VALUE makes it relative to the baseline, e.g. 'error_rate<0.01', 'p95_ms<1.2x', 'agreement>0.9'."
    ),
    min_requests: int = typer.Option(200, "--min-requests", help="Requests a bake needs before a guard can pass."),
    shadow: Optional[int] = typer.Option(None, "--shadow", help="Shadow the candidate with this percent of requests first."),
    shadow_for: str = typer.Option("10m", "--shadow-for", help="How long the shadow phase lasts."),
    deadline: str = typer.Option("1h", "--deadline", help="Longest a step waits for enough requests before the rollout stops."),
    compare: Optional[int] = typer.Option(
        None, "--compare", help="Percent of the other versions' requests copied to the candidate during the steps, for 'agreement' "
        "(default: the --shadow percent; 10 with an agreement guard; else 0)."
    ),
    url: Optional[str] = UrlOption, key: Optional[str] = KeyOption, config: Path = ConfigOption, as_json: bool = JsonOption,
) -> None:
    """Start a guarded rollout: deploy the candidate as a new version, optionally shadow it, shift
    weights step by step, check the guards after each bake, roll back on the first failure."""
    plan = RolloutPlan(
        steps=[int(s) for s in steps.split(",") if s.strip()],
        bake_s=parse_duration(bake),
        guards=[GuardSettings.model_validate(g) for g in guards],
        min_requests=min_requests,
        shadow=ShadowPhase(percent=shadow, duration_s=parse_duration(shadow_for)) if shadow else None,
        deadline_s=parse_duration(deadline),
        compare_percent=compare,
    )
    body = {"agent": agent, "candidate": candidate, **plan.model_dump(mode="json")}
    _show_rollout(Client(url, key, config).call("POST", "/v1/admin/rollouts", json=body), as_json)


@rollout_app.command("status")
def rollout_status(
    rollout_id: Optional[str] = typer.Argument(None, help="One rollout's id; default: every active and recent rollout."),
    watch: bool = typer.Option(False, "--watch", help="Refresh every 2 s until the rollout ends."),
    url: Optional[str] = UrlOption, key: Optional[str] = KeyOption, config: Path = ConfigOption, as_json: bool = JsonOption,
) -> None:
    """Show rollouts: state, step, weight and the latest checks."""
    client = Client(url, key, config)
    if rollout_id is None:
        rollouts = client.call("GET", "/v1/admin/rollouts")["rollouts"]
        if as_json:
            print(json.dumps(rollouts, indent=2))
            return
        table = Table("id", "agent", "candidate", "state", "step", "weight", "reason")
        for r in rollouts:
            table.add_row(r["id"], r["agent"], r["candidate"], r["state"], str(r.get("step")), str(r.get("weight")), r.get("reason") or "")
        console.print(table)
        return
    while True:
        rollout = client.call("GET", f"/v1/admin/rollouts/{rollout_id}")
        _show_rollout(rollout, as_json)
        if not watch or rollout["state"] in ("succeeded", "failed", "aborted"):
            return
        time.sleep(2)


def _rollout_action(action: str):
    def command(
        rollout_id: str = typer.Argument(..., help="The rollout's id."),
        url: Optional[str] = UrlOption, key: Optional[str] = KeyOption, config: Path = ConfigOption, as_json: bool = JsonOption,
    ) -> None:
        _show_rollout(Client(url, key, config).call("POST", f"/v1/admin/rollouts/{rollout_id}/{action}"), as_json)

    command.__doc__ = {
        "pause": "Pause a rollout at its current weights.",
        "resume": "Resume a paused rollout.",
        "abort": "Abort a rollout: the candidate's weight goes to 0 at once.",
    }[action]
    return command


for _action in ("pause", "resume", "abort"):
    rollout_app.command(_action)(_rollout_action(_action))


def _show_rollout(rollout: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(rollout, indent=2))
        return
    console.print(
        f"[bold]{rollout['id']}[/] {rollout['agent']} → {rollout['candidate']} ({rollout.get('candidate_version')}): "
        f"[bold]{rollout['state']}[/], step {rollout.get('step')}, weight {rollout.get('weight')}%"
        + (f" — {rollout['reason']}" if rollout.get("reason") else "")
    )
    checks = rollout.get("checks") or []
    if checks:
        table = Table("step", "metric", "op", "observed", "threshold", "baseline", "verdict")
        for check in checks[-10:]:
            table.add_row(*(_cell(check.get(c)) for c in ("step", "metric", "op", "observed", "threshold", "baseline", "verdict")))
        console.print(table)


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))


def shadow(
    agent: str = typer.Argument(..., help="The agent whose requests are copied."),
    version: str = typer.Option(..., "--version", help="The version that receives the copies."),
    percent: int = typer.Option(..., "--percent", min=0, max=100, help="Share of requests copied; 0 stops."),
    url: Optional[str] = UrlOption, key: Optional[str] = KeyOption, config: Path = ConfigOption,
) -> None:
    """Copy a share of AGENT's requests to a shadow version (answers compared, never returned)."""
    print(json.dumps(Client(url, key, config).call("PUT", f"/v1/admin/agents/{agent}/shadow", json={"version": version, "percent": percent})))


@ab_app.command("report")
def ab_report(
    agent: str = typer.Argument(..., help="The agent whose versions are compared."),
    window: str = typer.Option("1h", "--window", help="How far back to look (e.g. 30m, 24h)."),
    url: Optional[str] = UrlOption, key: Optional[str] = KeyOption, config: Path = ConfigOption, as_json: bool = JsonOption,
) -> None:
    """Per version: requests, errors, latency, feedback accuracy or reward; per pair: the difference,
    its 95% CI, a fixed-horizon p-value and an always-valid sequential one (mSPRT)."""
    report = Client(url, key, config).call("GET", f"/v1/admin/experiments/{agent}", params={"window_s": parse_duration(window)})
    if as_json:
        print(json.dumps(report, indent=2))
        return
    versions = Table("version", "requests", "error_rate", "p50_ms", "accuracy", "mean_reward", title=f"{agent} (baseline {report.get('baseline')})")
    for version, row in report["versions"].items():
        versions.add_row(version, *(_cell(row.get(c)) for c in ("requests", "error_rate", "p50_ms", "accuracy", "mean_reward")))
    console.print(versions)
    comparisons = Table("candidate", "metric", "difference", "ci95", "p fixed", "p sequential", "decision")
    for c in report["comparisons"]:
        ci = c.get("ci95") or [None, None]
        comparisons.add_row(
            c["candidate"], c["metric"], _cell(c.get("difference")), f"[{_cell(ci[0])}, {_cell(ci[1])}]",
            _cell(c.get("p_value_fixed")), _cell(c.get("p_value_sequential")), c.get("decision", ""),
        )
    console.print(comparisons)


def cost(
    url: Optional[str] = UrlOption, key: Optional[str] = KeyOption, config: Path = ConfigOption, as_json: bool = JsonOption,
) -> None:
    """Cost per agent and version since the monitor started: CPU- and GPU-seconds and LLM tokens
    per request, priced with the orchestra's cost settings."""
    stats = Client(url, key, config).call("GET", "/v1/admin/stats")
    rows = [
        (agent, version, view["since_start"].get("requests", 0), view.get("cost") or {})
        for agent, versions in stats["agents"].items()
        for version, view in versions.items()
    ]
    if as_json:
        print(json.dumps([{"agent": a, "version": v, "requests": n, **c} for a, v, n, c in rows], indent=2))
        return
    table = Table("agent", "version", "requests", "cpu_s/req", "gpu_s/req", "tokens in/out per req", "cost/req", "total cost")
    for agent, version, requests, c in rows:
        since = c.get("since_start", c)
        tokens = f"{_cell(since.get('input_tokens_per_request'))}/{_cell(since.get('output_tokens_per_request'))}"
        table.add_row(
            agent, version, str(requests), _cell(since.get("cpu_s_per_request")), _cell(since.get("gpu_s_per_request")), tokens,
            _cell(since.get("cost_per_request")), f"{_cell(since.get('cost_total'))} {since.get('currency', '')}".strip(),
        )
    console.print(table)


def register(root: typer.Typer) -> None:
    root.add_typer(rollout_app, name="rollout")
    root.add_typer(ab_app, name="ab")
    root.command("shadow")(shadow)
    root.command("cost")(cost)
