"""Offline evaluation of a router on labelled requests: in-scope accuracy, out-of-scope
recall, in-scope rejection, a confusion table and decision latency.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from actors.router import SemanticRouter

NONE = "(none)"


@dataclass
class RoutingReport:
    n: int
    in_scope_accuracy: float
    oos_recall: float | None
    in_scope_rejection: float
    p50_ms: float
    p95_ms: float
    confusion: Counter = field(default_factory=Counter)

    def summary(self) -> dict:
        return {
            "in_scope_accuracy": round(self.in_scope_accuracy, 4),
            "oos_recall": None if self.oos_recall is None else round(self.oos_recall, 4),
            "in_scope_rejection": round(self.in_scope_rejection, 4),
            "n": self.n,
            "p50_ms": round(self.p50_ms, 3),
            "p95_ms": round(self.p95_ms, 3),
        }


def expected_agent(row: dict, label_field: str, none_label: str | None) -> str | None:
    label = row.get(label_field)
    return None if label is None or label == none_label else str(label)


def evaluate_router(
    router: SemanticRouter,
    rows: Sequence[dict],
    *,
    label_field: str = "agent",
    none_label: str | None = None,
    text_field: str = "text",
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> RoutingReport:
    """Route each row alone (as a request would be) and compare with its label.

    A row whose label is null or ``none_label`` should be taken by no agent; an in-scope
    row counts as correct only when routed to its agent (a rejection counts as wrong).
    """
    unknown = sorted({e for r in rows if (e := expected_agent(r, label_field, none_label))} - set(router.agent_names))
    if unknown:
        raise ValueError(f"labels {unknown[:5]} in field {label_field!r} are not agents of this config: {router.agent_names}")
    latencies, confusion = [], Counter()
    correct = rejected = in_scope = oos = oos_rejected = 0
    for row in progress(rows):
        start = time.perf_counter()
        decision = router.decide(str(row[text_field]))
        latencies.append((time.perf_counter() - start) * 1000)
        expected = expected_agent(row, label_field, none_label)
        got = decision.agent if decision.routed_by in ("router", "direct", "session") else None
        confusion[(expected or NONE, got or NONE)] += 1
        if expected is None:
            oos += 1
            oos_rejected += got is None
        else:
            in_scope += 1
            correct += got == expected
            rejected += got is None
    return RoutingReport(
        n=len(rows),
        in_scope_accuracy=correct / in_scope if in_scope else 0.0,
        oos_recall=oos_rejected / oos if oos else None,
        in_scope_rejection=rejected / in_scope if in_scope else 0.0,
        p50_ms=float(np.percentile(latencies, 50)) if latencies else 0.0,
        p95_ms=float(np.percentile(latencies, 95)) if latencies else 0.0,
        confusion=confusion,
    )
