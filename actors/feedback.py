"""Ground truth for API.md §10: feedback attached to audited requests, and the human review
queue whose answers become labelled rows for retraining. Plain classes over ``Storage``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import random
import re
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from actors.audit import read_audit, to_utc
from cluster.config import ReviewPolicy
from cluster.errors import Conflict, NotFound, ValidationFailed
from cluster.storage import Storage, validate_segment

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
FEEDBACK_DIR = "feedback"
REVIEW_DIR = "review"
FEEDBACK_FIELDS = ("label", "reward", "correct")
# Feedback for a request older than this is refused: finding an unknown id must not scan all history.
FEEDBACK_MAX_AGE = timedelta(days=30)
MAX_LABEL_CHARS = 200


def create_json_exclusive(storage: Storage, path: str, payload: Any) -> bool:
    """Write ``payload`` at ``path`` unless a file is there already (False then).

    Readers see the whole file or none: locally a temp file is hard-linked into place, which
    fails if the name exists; on S3 the PUT carries If-None-Match, which S3 checks atomically.
    """
    data = json.dumps(payload, indent=2, sort_keys=True).encode("utf-8")
    directory, name = posixpath.split(path)
    storage.fs.makedirs(directory, exist_ok=True)
    if not storage.is_local:
        try:
            storage.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True
    tmp = posixpath.join(directory, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    storage.fs.pipe_file(tmp, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    return True


def checked_request_id(request_id: Any) -> str:
    """``request_id`` if it is one API.md §1 allows (1-128 of [A-Za-z0-9._-]); ValidationFailed otherwise."""
    if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
        raise ValidationFailed(f"request_id: must be 1-128 of [A-Za-z0-9._-], got {request_id!r}")
    return request_id


def id_file(request_id: str) -> str:
    """The file name for a request id: a digest, so that any id the API accepts ('..', '_x')
    is a safe single path segment. The id itself is inside the file."""
    return f"{hashlib.sha256(checked_request_id(request_id).encode()).hexdigest()[:32]}.json"


def model_label(output: str | dict | None) -> str | None:
    """The label an agent answered with, from its result or the audit record's JSON text."""
    if isinstance(output, str):
        try:
            output = json.loads(output)
        except json.JSONDecodeError:
            return None
    label = output.get("label") if isinstance(output, dict) else None
    return label if isinstance(label, str) else None


def find_request(storage: Storage, request_id: str, now: float | None = None) -> dict[str, Any]:
    """The audit record of the agent request ``request_id`` (the latest, should a caller have
    reused its own X-Request-ID). NotFound unless an agent answered it in FEEDBACK_MAX_AGE.
    Reads Parquet: call it off the event loop."""
    checked_request_id(request_id)
    since = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc) - FEEDBACK_MAX_AGE
    records = read_audit(storage, request_ids=[request_id], since=since, limit=20)
    if not records:
        raise NotFound(
            f"request_id: no request {request_id!r} in the audit log of the last {FEEDBACK_MAX_AGE.days} days"
            " (a request reaches it a few seconds after its response)"
        )
    answered = [record for record in records if record.get("agent")]
    if not answered:
        raise NotFound(f"request_id: request {request_id!r} was not answered by an agent, so it takes no feedback")
    return answered[-1]


class FeedbackStore:
    """One feedback per request, as ``<storage>/feedback/requests/<id_file(request_id)>``."""

    def __init__(self, storage: Storage, clock: Callable[[], float] = time.time):
        self.storage = storage
        self._clock = clock

    def path(self, request_id: str) -> str:
        return self.storage.path(FEEDBACK_DIR, "requests", id_file(request_id))

    def add(self, request: dict[str, Any], body: dict[str, Any], principal: str) -> dict[str, Any]:
        """Attach ``body``'s label, reward and/or correct to the audited ``request``; Conflict if
        it has feedback already. Returns the feedback outcome for the monitor."""
        given = {name: body[name] for name in FEEDBACK_FIELDS if body.get(name) is not None}
        if "label" in given:
            given["label"] = _checked_label(given["label"])
        if not given:
            raise ValidationFailed("body: give at least one of label, reward, correct")
        reward = _checked_reward(given.get("reward"))
        answered_label = model_label(request.get("output"))
        correct = _correctness(given.get("label"), given.get("correct"), answered_label)
        ts = self._clock()
        record = {
            "request_id": request["request_id"],
            "agent": request.get("agent"),
            "version": request.get("version"),
            "request_ts": request.get("ts"),
            "model_label": answered_label,
            "label": given.get("label"),
            "correct": correct,
            "reward": reward,
            "principal": principal,
            "ts": ts,
        }
        if not create_json_exclusive(self.storage, self.path(record["request_id"]), record):
            raise Conflict(f"request_id: request {record['request_id']!r} has feedback already")
        return {
            "kind": "feedback", "ts": ts, "agent": record["agent"], "version": record["version"],
            "request_id": record["request_id"], "correct": correct, "reward": reward,
        }

    def get(self, request_id: str) -> dict[str, Any] | None:
        path = self.path(request_id)
        self.storage.fs.invalidate_cache(path)  # s3fs caches listings; another replica may have written it
        return self.storage.read_json(path) if self.storage.exists(path) else None


def _checked_label(label: Any) -> str:
    label = label.strip() if isinstance(label, str) else ""
    if not 1 <= len(label) <= MAX_LABEL_CHARS:
        raise ValidationFailed(f"label: must be 1 to {MAX_LABEL_CHARS} characters besides spaces")
    return label


def _checked_reward(reward: Any) -> float | None:
    if reward is None:
        return None
    if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
        raise ValidationFailed(f"reward: must be a finite number, got {reward!r}")
    return float(reward)


def _correctness(label: str | None, correct: bool | None, answered_label: str | None) -> bool | None:
    """``correct`` as given, else derived from the right label; a contradiction is the caller's bug."""
    if label is None or answered_label is None:
        return correct
    agrees = label == answered_label
    if correct is not None and correct != agrees:
        raise ValidationFailed(
            f"correct: {correct} contradicts label {label!r}, since the model answered {answered_label!r}"
        )
    return agrees


class ReviewQueue:
    """Requests queued for a person (low confidence or sampled), per agent.

    Pending items are ``<storage>/review/pending/<agent>/<id_file(request_id)>``; an answer is
    created exclusively as ``review/answered/<agent>/<id_file(request_id)>`` (so two reviewers cannot both
    answer), then the pending file goes. At most ``max_items`` items wait per agent; offers
    beyond that are dropped, since a queue nobody works through only grows.
    """

    def __init__(
        self,
        storage: Storage,
        policies: dict[str, ReviewPolicy],
        rng: random.Random | None = None,
        max_items: int = 1000,
        clock: Callable[[], float] = time.time,
    ):
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.storage = storage
        self.policies = policies
        self.max_items = max_items
        self._rng = rng or random.Random()
        self._clock = clock

    def wants(self, agent: str, confidence: float | None) -> bool:
        """Whether a request of ``agent`` answered with ``confidence`` goes to review."""
        policy = self.policies.get(agent)
        if policy is None:
            return False
        if policy.confidence_below is not None and confidence is not None and confidence < policy.confidence_below:
            return True
        return policy.sample_share > 0 and self._rng.random() < policy.sample_share

    def offer(self, item: dict[str, Any], redact: Callable[[str], str]) -> bool:
        """Queue ``item`` ({request_id, agent, version, text, output, label, confidence, ts}).

        The text and every string of the output are stored redacted; the raw text too only where
        the agent's policy keeps it. False when the item is queued or answered already, or the
        agent's queue is full."""
        agent = validate_segment(item["agent"], "agent")
        request_id = checked_request_id(item["request_id"])
        if not isinstance(item.get("text"), str):
            raise ValueError(f"review item {request_id!r} has no input text for a reviewer to read")
        # _count lists afresh, so the exists check after it sees answers made by other processes.
        if self._count(agent) >= self.max_items or self.storage.exists(self._answered_file(agent, request_id)):
            return False
        policy = self.policies.get(agent)
        record = {
            "request_id": request_id,
            "agent": agent,
            "version": item.get("version"),
            "input_text": redact(item["text"]),
            "raw_text": item["text"] if policy is not None and policy.keep_raw_input else None,
            "result": _redact_strings(item.get("output"), redact),
            "model_label": item.get("label"),
            "confidence": item.get("confidence"),
            "requested_at": item.get("ts"),
            "queued_at": _iso(self._clock()),
        }
        return create_json_exclusive(self.storage, self.storage.path(REVIEW_DIR, "pending", agent, id_file(request_id)), record)

    def pending(self, agent: str | None = None, limit: int = 50, raw: bool = False) -> list[dict[str, Any]]:
        """Items waiting, oldest first, in API.md §10's shape; ``raw`` shows kept raw text (admin keys)."""
        pattern = [REVIEW_DIR, "pending", validate_segment(agent, "agent") if agent else "*", "*.json"]
        records = self._read_all(self._glob(pattern))
        records.sort(key=lambda r: (r["queued_at"], r["request_id"]))
        return [_public_item(record, raw) for record in records[:limit]]

    def answer(self, request_id: str, label: str, principal: str) -> dict[str, Any]:
        """Record a reviewer's label: NotFound if never queued, Conflict if answered already."""
        name = id_file(request_id)
        label = _checked_label(label)
        queued = self._glob([REVIEW_DIR, "pending", "*", name])
        if not queued:
            if self._glob([REVIEW_DIR, "answered", "*", name]):
                raise Conflict(f"request_id: review item {request_id!r} is answered already")
            raise NotFound(f"request_id: no review item {request_id!r} (GET /v1/admin/review lists them)")
        try:
            record = self.storage.read_json(queued[0])
        except FileNotFoundError:  # another reviewer answered it since the listing
            raise Conflict(f"request_id: review item {request_id!r} is answered already") from None
        record.update(label=label, answered_by=principal, answered_at=_iso(self._clock()))
        created = create_json_exclusive(self.storage, self._answered_file(record["agent"], request_id), record)
        # Also when another reviewer won: a pending file left by a crash between the two steps goes now.
        try:
            self.storage.fs.rm(queued[0])
        except FileNotFoundError:  # the other reviewer removed it first
            pass
        if not created:
            raise Conflict(f"request_id: review item {request_id!r} is answered already")
        return {key: record[key] for key in ("request_id", "agent", "version", "label", "model_label", "answered_at")}

    def labelled_rows(self, agent: str, since: float | str | datetime | None = None) -> list[dict[str, Any]]:
        """Answered items of ``agent`` since ``since``, oldest first, as training rows; the text is
        the raw input where the policy kept it, else the redacted one."""
        rows = [
            {"text": r["raw_text"] or r["input_text"], "label": r["label"],
             "request_id": r["request_id"], "answered_at": r["answered_at"]}
            for r in self._answered(agent, since)
        ]
        return sorted(rows, key=lambda row: (row["answered_at"], row["request_id"]))

    def new_labels(self, agent: str, since: float | str | datetime | None) -> int:
        return len(self._answered(agent, since))

    def _answered(self, agent: str, since: float | str | datetime | None) -> list[dict[str, Any]]:
        records = self._read_all(self._glob([REVIEW_DIR, "answered", validate_segment(agent, "agent"), "*.json"]))
        if since is None:
            return records
        low = to_utc(since)
        return [record for record in records if to_utc(record["answered_at"]) >= low]

    def _answered_file(self, agent: str, request_id: str) -> str:
        return self.storage.path(REVIEW_DIR, "answered", agent, id_file(request_id))

    def _count(self, agent: str) -> int:
        return len(self._glob([REVIEW_DIR, "pending", agent, "*.json"]))

    def _glob(self, segments: list[str]) -> list[str]:
        # Segments are validated names, digests or a literal '*': no user text reaches the pattern.
        # s3fs caches listings, per directory; other processes queue and answer items.
        self.storage.fs.invalidate_cache()
        return sorted(self.storage.fs.glob(posixpath.join(self.storage.root, *segments)))

    def _read_all(self, paths: list[str]) -> list[dict[str, Any]]:
        # One batched read: on S3 fsspec fetches the files concurrently. A file answered and
        # removed between the listing and the read is skipped.
        contents = self.storage.fs.cat(paths, on_error="omit") if paths else {}
        return [json.loads(contents[path]) for path in paths if path in contents]


def _public_item(record: dict[str, Any], raw: bool) -> dict[str, Any]:
    text = record["raw_text"] if raw and record.get("raw_text") is not None else record["input_text"]
    return {
        "request_id": record["request_id"], "agent": record["agent"], "version": record["version"],
        "input_text": text, "result": record["result"], "confidence": record["confidence"],
        "queued_at": record["queued_at"],
    }


def _redact_strings(value: Any, redact: Callable[[str], str]) -> Any:
    """Results quote their input (entities, echoes), so every string in them is redacted too."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redact_strings(item, redact) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_strings(item, redact) for item in value]
    return value


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat()
