#!/usr/bin/env python
"""The closed model lifecycle on a running baton (`make up`): drift → retrain → canary → promote,
and, with --broken, a broken candidate rolled back automatically. Every step is read back from the
audit log at the end.

    make up
    .venv/bin/python examples/closed_loop.py              # drift, retraining, guarded rollout, promotion
    .venv/bin/python examples/closed_loop.py --broken     # a broken candidate, rolled back by its guard

The `sentiment` agent of configs/orchestra.yaml serves `registry://sst2-sentiment@champion`, queues
unsure answers for review and retrains on drift (its `retrain` policy). On a fresh clone there is no
such model yet: the first run trains one with configs/train/sst2_sentiment_quick.yaml, promotes it
and redeploys, so the agent serves it (a few minutes on 2 cores).

Traffic comes from the repository's datasets: SST-2 sentences the model was not trained on are the
normal traffic; CLINC150 assistant requests ("set an alarm for 7am") are the drift. Exit status 0 when
the run showed what it set out to show, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cluster.registry import ModelRegistry  # noqa: E402
from cluster.storage import Storage  # noqa: E402

AGENT, MODEL = "sentiment", "sst2-sentiment"
QUICK_RECIPE = "configs/train/sst2_sentiment_quick.yaml"
SST2 = REPO.parent / "shared/datasets/sst2/train.tsv"
CLINC = REPO.parent / "shared/datasets/clinc150/val.jsonl"
LIFECYCLE = ("drift.alert", "retrain.", "rollout.", "admin.models.", "admin.deploy", "review.answer")
console = Console()


class Baton:
    def __init__(self, url: str, key: str):
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def get(self, path: str, **params: Any) -> Any:
        return self._checked(self.http.get(path, params=params))

    def post(self, path: str, body: dict | None = None) -> Any:
        return self._checked(self.http.post(path, json=body))

    @staticmethod
    def _checked(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise SystemExit(f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text[:400]}")
        return response.json()

    def served_model(self) -> str | None:
        agent = next(a for a in self.get("/v1/agents")["agents"] if a["name"] == AGENT)
        weights = {v["version"]: v["weight"] for v in agent["versions"]}
        return max(weights, key=weights.get) if any(v != "v1" for v in weights) else None


class Sender:
    """Invokes the agent from a thread at a steady rate, with texts from the current source."""

    def __init__(self, baton: Baton, texts: list[str], rate_per_s: float = 8.0):
        self.baton, self.texts, self.interval = baton, texts, 1.0 / rate_per_s
        self.sent, self.errors, self._stop = 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(0)
        while not self._stop.is_set():
            response = self.baton.http.post(f"/v1/agents/{AGENT}/invoke", json={"text": rng.choice(self.texts)})
            self.sent += 1
            self.errors += response.status_code >= 500
            time.sleep(self.interval)

    def __enter__(self) -> Sender:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def sst2_unseen(limit: int = 2000) -> list[str]:
    """SST-2 rows past the quick recipe's sample: same distribution, not trained on."""
    with SST2.open(encoding="utf-8") as handle:
        rows = [row["text"].strip() for row in csv.DictReader(handle, delimiter="\t")]
    random.Random(1).shuffle(rows)
    return [text for text in rows[-limit:] if len(text.split()) >= 4]


def clinc_requests(limit: int = 2000) -> list[str]:
    with CLINC.open(encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle][:limit]


def wait(what: str, check, timeout_s: float, every_s: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout_s
    with console.status(what) as status:
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            status.update(f"{what} ({deadline - time.monotonic():.0f} s left)")
            time.sleep(every_s)
    raise SystemExit(f"timed out: {what}")


def bootstrap(baton: Baton) -> None:
    """A fresh clone has no sentiment model: train the quick recipe, promote it and redeploy,
    with the same `baton` commands an operator would type."""
    console.rule("bootstrap: no registry model serves the sentiment agent yet")
    baton_cli = str(Path(sys.executable).parent / "baton")
    subprocess.run([baton_cli, "train", QUICK_RECIPE], cwd=REPO, check=True)
    version = ModelRegistry(Storage(str(REPO / ".baton"))).versions(MODEL)[-1].version
    subprocess.run([baton_cli, "models", "promote", MODEL, version, "--deploy", "--timeout", "900"], cwd=REPO, check=True)


def follow_rollout(baton: Baton, rollout_id: str, timeout_s: float = 1200) -> dict:
    """Print each state change and each decided check as it happens, in time order."""
    shown: set[tuple] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rollout = baton.get(f"/v1/admin/rollouts/{rollout_id}")
        events = [("t", t["at"], t) for t in rollout["history"]] + [("c", c["at"], c) for c in rollout["checks"] if c["verdict"] != "inconclusive"]
        for kind, at, event in sorted(events, key=lambda e: e[1]):
            key = (kind, at, event.get("metric"))
            if key in shown:
                continue
            shown.add(key)
            if kind == "t":
                step = "" if event["step"] is None else f" step {event['step']} ({rollout['plan']['steps'][event['step']]}%)"
                console.print(f"  [bold]{event['state']}[/]{step}" + (f" — {event['reason']}" if event.get("reason") else ""))
            else:
                baseline = "" if event["baseline"] is None else f", baseline {event['baseline']:.4g}"
                console.print(f"    check {event['metric']} {event['op']} {event['threshold']:.4g}: observed {event['observed']:.4g}{baseline} → [bold]{event['verdict']}[/]")
        # Finished once its effects are done too (weights, alias, the candidate drained and retired).
        if rollout["state"] in ("succeeded", "failed", "aborted") and rollout.get("effects") is None:
            return rollout
        time.sleep(2)
    raise SystemExit(f"rollout {rollout_id} did not finish in {timeout_s:.0f} s")


def closed_loop(baton: Baton) -> bool:
    normal, drifted = sst2_unseen(), clinc_requests()
    console.rule("1. normal traffic: SST-2 sentences the model has not seen")
    with Sender(baton, normal) as sender:
        time.sleep(45)
    console.print(f"sent {sender.sent} requests; drift report: {json.dumps(baton.get('/v1/admin/drift')['agents'].get(AGENT, {}))[:600]}")

    console.rule("2. drift: the same agent now gets assistant requests (CLINC150)")
    with Sender(baton, drifted) as sender:
        report = wait("waiting for a drift alert", lambda: _alerted(baton), timeout_s=300)
    console.print(f"sent {sender.sent} drifted requests; alert on {report}")

    console.rule("3. retraining: the policy's Ray job on the recipe plus reviewed labels")
    state = wait("waiting for the retraining job", lambda: _retraining(baton, {"training", "rolling_out"}), timeout_s=120)
    console.print(f"job {state.get('job')} ({state.get('trigger')})")
    with Sender(baton, normal) as sender:
        state = wait("training (a few minutes on 2 cores)", lambda: _retraining(baton, {"rolling_out"}) or _failed(baton), timeout_s=1800, every_s=5)
        if state.get("state") != "rolling_out":
            console.print(f"[red]retraining ended without a rollout: {state}")
            return False
        console.rule(f"4. guarded rollout {state['rollout']} of {state['candidate']}")
        rollout = follow_rollout(baton, state["rollout"])
    console.print(f"rollout {rollout['state']}; {sender.sent} requests sent meanwhile, {sender.errors} errors")
    console.print(f"aliases of {MODEL}: {baton.get(f'/v1/admin/models/{MODEL}')['aliases']}")
    return rollout["state"] == "succeeded"


def _alerted(baton: Baton) -> str | None:
    versions = baton.get("/v1/admin/drift")["agents"].get(AGENT, {})
    kinds = [f"{version}: {kind} (p={entry[kind]['p_value']:.2g})" for version, entry in versions.items() if entry.get("alert")
             for kind in ("prediction", "confidence", "input") if (entry.get(kind) or {}).get("drift")]
    return ", ".join(kinds) or None


def _retraining(baton: Baton, states: set[str]) -> dict | None:
    state = baton.get("/v1/admin/retraining")["agents"].get(AGENT) or {}
    return state if state.get("state") in states else None


def _failed(baton: Baton) -> dict | None:
    state = baton.get("/v1/admin/retraining")["agents"].get(AGENT) or {}
    return state if state.get("state") == "idle" and str(state.get("outcome", "")).startswith("retrain.failed") else None


def broken_candidate(baton: Baton) -> bool:
    """Register the champion with a classifier bias that answers NEGATIVE to everything, then roll it out."""
    import shutil
    import tempfile

    import torch
    from safetensors.torch import load_file, save_file

    console.rule("1. a broken candidate: the champion's weights, its classifier biased to NEGATIVE")
    registry = ModelRegistry(Storage(str(REPO / ".baton")))
    champion = registry.aliases(MODEL)["champion"]
    manifest = registry.manifest(MODEL, champion)
    source = registry.fetch(f"registry://{MODEL}:{champion}")
    workdir = Path(tempfile.mkdtemp(prefix="broken-"))
    shutil.copytree(source, workdir / "model")
    weights_path = workdir / "model" / "model.safetensors"
    weights = load_file(weights_path)
    bias = next(name for name in weights if name.endswith("classifier.bias"))
    negative = manifest.labels.index("NEGATIVE")
    weights[bias] = torch.full_like(weights[bias], -50.0)
    weights[bias][negative] = 50.0
    save_file(weights, weights_path, metadata={"format": "pt"})
    broken = registry.register(
        MODEL, workdir / "model", task=manifest.task, base_model=manifest.base_model, labels=manifest.labels,
        metrics=manifest.metrics, dataset=manifest.dataset.model_dump(), recipe=manifest.recipe,
        parent_version=champion, extra={**manifest.extra, "note": "deliberately broken by examples/closed_loop.py --broken"},
    )
    console.print(f"registered {MODEL}:{broken.version} (parent {champion})")
    plan = {"agent": AGENT, "candidate": f"registry://{MODEL}:{broken.version}", "steps": [25, 50, 100], "bake_s": 20,
            "min_requests": 60, "guards": ["error_rate<0.05", "p95_ms<3x", "labels>0.001"], "deadline_s": 600}
    with Sender(baton, sst2_unseen()) as sender:
        rollout = baton.post("/v1/admin/rollouts", plan)
        console.rule(f"2. guarded rollout {rollout['id']}")
        rollout = follow_rollout(baton, rollout["id"])
    served = next(a for a in baton.get("/v1/agents")["agents"] if a["name"] == AGENT)["versions"]
    console.print(f"rollout {rollout['state']}: {rollout.get('reason')}")
    console.print(f"weights now: { {v['version']: v['weight'] for v in served} }; {sender.sent} requests sent, {sender.errors} errors")
    console.print(f"aliases of {MODEL}: {baton.get(f'/v1/admin/models/{MODEL}')['aliases']}")
    return rollout["state"] == "failed"


def audit_trail(since: float) -> None:
    """The lifecycle's records, read from the audit log on the storage URI (the HTTP query returns
    only the newest 1,000 records, and this run's requests alone are more)."""
    from actors.audit import read_audit

    console.rule("the audit log: every lifecycle step")
    records = read_audit(Storage(str(REPO / ".baton")), since=since, limit=1_000_000)
    for record in records:
        if record["endpoint"].startswith(LIFECYCLE):
            output = json.loads(record["output"] or "null") or {}
            shown = {k: v for k, v in output.items() if v is not None and k not in ("plan", "checks")} if isinstance(output, dict) else output
            console.print(f"  {record['ts'][11:19]} {record['principal']:<20} {record['endpoint']:<16} {record['version'] or '':<5} {json.dumps(shown)[:150]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="baton's URL (default: the local instance)")
    parser.add_argument("--key", default=None, help="admin key (default: .baton/dev-key)")
    parser.add_argument("--broken", action="store_true", help="roll out a broken candidate and watch it rolled back")
    args = parser.parse_args()
    key = args.key or (REPO / ".baton/dev-key").read_text().strip()
    baton = Baton(args.url, key)
    started = time.time()
    if baton.served_model() is None:
        bootstrap(baton)
    ok = broken_candidate(baton) if args.broken else closed_loop(baton)
    time.sleep(3)  # the audit buffer flushes every second
    audit_trail(started)
    console.print("[green]done" if ok else "[red]the loop did not complete as expected")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
