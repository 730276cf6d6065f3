"""Feedback on audited requests and the human review queue (actors/feedback.py), on local
and non-local (memory://) storage: exclusive writes, redaction, order, bounds and label rows."""

from __future__ import annotations

import json
import random
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from actors.audit import AuditWriter
from actors.feedback import FEEDBACK_MAX_AGE, FeedbackStore, ReviewQueue, find_request, id_file, model_label
from actors.pii import PiiRedactor
from cluster.config import ReviewPolicy
from cluster.errors import Conflict, NotFound, ValidationFailed
from cluster.storage import Storage

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc).timestamp()
EMAIL = "jane.doe@example.com"
redact = PiiRedactor(use_ner=False)


class FakeClock:
    """Test double for time: advanced by hand."""

    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", "memory"])
def storage(request, tmp_path) -> Storage:
    """Local files (hard-link publish) and a non-local fsspec filesystem (the S3 code path)."""
    if request.param == "local":
        return Storage(str(tmp_path / "store"))
    return Storage(f"memory://baton-{uuid.uuid4().hex}")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def audited(request_id: str = "r-1", label: str | None = "billing", **fields) -> dict:
    """An audit record as read_audit returns it."""
    output = json.dumps({"label": label, "scores": {label: 0.8}}) if label else json.dumps({"text": "hi"})
    return {"request_id": request_id, "agent": "tickets", "version": "v2", "output": output,
            "ts": datetime.fromtimestamp(NOW - 60, timezone.utc).isoformat(), **fields}


# -- feedback ------------------------------------------------------------------------------


def test_a_right_label_gives_correct_true_and_the_monitor_outcome(storage, clock):
    store = FeedbackStore(storage, clock=clock)
    outcome = store.add(audited(), {"request_id": "r-1", "label": "billing"}, "key_a")
    assert outcome == {"kind": "feedback", "ts": NOW, "agent": "tickets", "version": "v2",
                       "request_id": "r-1", "correct": True, "reward": None}
    saved = store.get("r-1")
    assert saved["label"] == "billing" and saved["model_label"] == "billing" and saved["principal"] == "key_a"


def test_a_different_label_gives_correct_false_and_reward_alone_leaves_correct_unknown(storage):
    store = FeedbackStore(storage)
    assert store.add(audited("r-1"), {"label": "refund"}, "key_a")["correct"] is False
    assert store.add(audited("r-3"), {"label": " billing "}, "key_a")["correct"] is True
    outcome = store.add(audited("r-2"), {"reward": 3}, "key_a")
    assert outcome["correct"] is None and outcome["reward"] == 3.0 and isinstance(outcome["reward"], float)


def test_without_a_model_label_the_given_correct_is_kept_and_a_label_alone_says_nothing(storage):
    store = FeedbackStore(storage)
    assert store.add(audited("r-1", label=None), {"label": "billing"}, "k")["correct"] is None
    assert store.add(audited("r-2", label=None), {"label": "billing", "correct": False}, "k")["correct"] is False


def test_second_feedback_for_a_request_is_a_conflict_and_keeps_the_first(storage):
    store = FeedbackStore(storage)
    store.add(audited(), {"label": "billing"}, "key_a")
    with pytest.raises(Conflict, match="r-1"):
        store.add(audited(), {"label": "refund"}, "key_b")
    assert store.get("r-1")["label"] == "billing"


def test_concurrent_feedback_for_one_request_has_exactly_one_winner(storage):
    store = FeedbackStore(storage)
    results: list[str] = []

    def give(label: str) -> None:
        try:
            store.add(audited(), {"label": label}, "k")
            results.append("ok")
        except Conflict:
            results.append("conflict")

    threads = [threading.Thread(target=give, args=(f"label-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["conflict"] * 7 + ["ok"]
    assert store.get("r-1")["label"].startswith("label-")


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "at least one"), ({"label": "refund", "correct": True}, "contradicts"),
     ({"reward": float("nan")}, "reward"), ({"reward": True}, "reward"), ({"label": "  "}, "label")],
)
def test_bad_feedback_is_refused_and_writes_nothing(storage, body, field):
    store = FeedbackStore(storage)
    with pytest.raises(ValidationFailed, match=field):
        store.add(audited(), body, "k")
    assert store.get("r-1") is None
    store.add(audited(), {"label": "billing", "correct": True}, "k")  # a consistent retry still works


@pytest.mark.parametrize("request_id", ["a/b", "../../escape/x", "", "x" * 129, "white space", "r-1\n", None])
def test_request_ids_the_api_refuses_write_nothing(storage, request_id):
    with pytest.raises(ValidationFailed, match="request_id"):
        FeedbackStore(storage).add(audited(request_id), {"label": "billing"}, "k")
    assert not storage.fs.exists(storage.path("feedback")) or storage.fs.find(storage.path("feedback")) == []


@pytest.mark.parametrize("request_id", ["..", "-lead", "_x", "order_42", ".hidden", "x" * 128])
def test_every_id_the_api_accepts_takes_feedback_and_review_within_its_folder(storage, clock, request_id):
    store, queue = FeedbackStore(storage), queue_over(storage, clock)
    store.add(audited(request_id), {"label": "billing"}, "k")
    assert store.get(request_id)["request_id"] == request_id
    assert queue.offer(item(request_id), redact)
    assert queue.pending()[0]["request_id"] == request_id
    queue.answer(request_id, "refund", "k")
    assert queue.labelled_rows("tickets")[0]["request_id"] == request_id
    for path in storage.fs.find(storage.root):
        assert path.startswith(storage.path("feedback") + "/") or path.startswith(storage.path("review") + "/"), path


def test_model_label_reads_results_and_audit_json_text():
    assert model_label('{"label": "a", "scores": {"a": 1}}') == "a"
    assert model_label({"label": "b"}) == "b"
    assert model_label('{"tickets": {"label": "a"}}') is None  # a composite answers per agent
    assert model_label("not json") is None and model_label(None) is None


# -- finding the audited request -------------------------------------------------------------


def write_audit(storage: Storage, records: list[dict]) -> None:
    writer = AuditWriter(storage, store_input_text=False, batch_size=1_000, flush_interval_s=3_600)
    writer.write(records)
    writer.flush()


def test_find_request_gives_the_latest_answered_record(tmp_path):
    storage = Storage(str(tmp_path))
    write_audit(storage, [
        {"request_id": "r-1", "ts": NOW - 300, "endpoint": "/v1/route", "agent": "tickets", "version": "v1",
         "output": {"label": "billing"}},
        {"request_id": "r-1", "ts": NOW - 100, "endpoint": "/v1/route", "agent": "tickets", "version": "v2",
         "output": {"label": "refund"}},
        {"request_id": "r-1", "ts": NOW - 50, "endpoint": "POST /v1/feedback"},
        {"request_id": "admin-1", "ts": NOW - 10, "endpoint": "POST /v1/admin/keys"},
    ])
    found = find_request(storage, "r-1", now=NOW)
    assert found["version"] == "v2" and model_label(found["output"]) == "refund"
    with pytest.raises(NotFound, match="not answered by an agent"):
        find_request(storage, "admin-1", now=NOW)
    with pytest.raises(NotFound, match="no request 'r-404'"):
        find_request(storage, "r-404", now=NOW)


def test_find_request_ignores_requests_older_than_the_feedback_window(tmp_path):
    storage = Storage(str(tmp_path))
    old = NOW - FEEDBACK_MAX_AGE.total_seconds() - 3_600
    write_audit(storage, [{"request_id": "r-old", "ts": old, "endpoint": "/v1/route", "agent": "tickets"}])
    with pytest.raises(NotFound, match="last 30 days"):
        find_request(storage, "r-old", now=NOW)
    assert find_request(storage, "r-old", now=old + 60)["agent"] == "tickets"


# -- review queue ------------------------------------------------------------------------------


def item(request_id: str = "r-1", agent: str = "tickets", confidence: float = 0.4, text: str | None = None) -> dict:
    return {
        "request_id": request_id, "agent": agent, "version": "v2",
        "text": text if text is not None else f"Refund me, write to {EMAIL}",
        "output": {"label": "billing", "scores": {"billing": 0.4, "refund": 0.35}, "echo": f"from {EMAIL}"},
        "label": "billing", "confidence": confidence, "ts": NOW - 1,
    }


def queue_over(storage: Storage, clock: FakeClock, keep_raw: bool = False, **options) -> ReviewQueue:
    policies = {"tickets": ReviewPolicy(confidence_below=0.6, keep_raw_input=keep_raw), "faq": ReviewPolicy(sample_share=0.0)}
    return ReviewQueue(storage, policies, rng=random.Random(7), clock=clock, **options)


def test_wants_low_confidence_and_nothing_from_agents_without_a_policy(storage, clock):
    queue = queue_over(storage, clock)
    assert queue.wants("tickets", 0.59) and not queue.wants("tickets", 0.6)
    assert not queue.wants("tickets", None)  # no confidence, no sampling: nothing to go on
    assert not queue.wants("faq", 0.01) and not queue.wants("unknown-agent", 0.01)


def test_wants_samples_the_configured_share(storage, clock):
    queue = ReviewQueue(storage, {"chat": ReviewPolicy(sample_share=0.2)}, rng=random.Random(1), clock=clock)
    share = sum(queue.wants("chat", 0.99) for _ in range(4_000)) / 4_000
    assert 0.17 < share < 0.23


def test_offered_items_are_stored_redacted_and_listed_in_the_api_shape(storage, clock):
    queue = queue_over(storage, clock)
    assert queue.offer(item(), redact)
    assert queue.pending() == [{
        "request_id": "r-1", "agent": "tickets", "version": "v2", "input_text": "Refund me, write to [EMAIL]",
        "result": {"label": "billing", "scores": {"billing": 0.4, "refund": 0.35}, "echo": "from [EMAIL]"},
        "confidence": 0.4, "queued_at": datetime.fromtimestamp(NOW, timezone.utc).isoformat(),
    }]
    for path in storage.fs.find(storage.path("review")):
        assert EMAIL not in storage.fs.cat_file(path).decode()
    assert queue.pending(raw=True)[0]["input_text"] == "Refund me, write to [EMAIL]"  # nothing raw was kept


def test_raw_input_is_kept_only_under_keep_raw_input_and_shown_only_when_asked(storage, clock):
    queue = queue_over(storage, clock, keep_raw=True)
    queue.offer(item(), redact)
    assert queue.pending()[0]["input_text"] == "Refund me, write to [EMAIL]"
    assert queue.pending(raw=True)[0]["input_text"] == f"Refund me, write to {EMAIL}"
    queue.answer("r-1", "refund", "key_r")
    assert queue.labelled_rows("tickets")[0]["text"] == f"Refund me, write to {EMAIL}"


def test_pending_is_oldest_first_per_agent_and_limited(storage, clock):
    queue = queue_over(storage, clock)
    for n, (request_id, agent) in enumerate([("r-c", "tickets"), ("r-a", "faq"), ("r-b", "tickets")]):
        clock.now = NOW + n
        queue.offer(item(request_id, agent), redact)
    assert [i["request_id"] for i in queue.pending()] == ["r-c", "r-a", "r-b"]
    assert [i["request_id"] for i in queue.pending(agent="tickets")] == ["r-c", "r-b"]
    assert [i["request_id"] for i in queue.pending(limit=1)] == ["r-c"]
    assert queue.pending(agent="nobody") == []


def test_an_item_is_queued_once_and_not_again_after_its_answer(storage, clock):
    queue = queue_over(storage, clock)
    assert queue.offer(item(), redact) and not queue.offer(item(), redact)
    queue.answer("r-1", "refund", "key_r")
    assert not queue.offer(item(), redact) and queue.pending() == []


def test_a_full_queue_drops_new_offers_of_that_agent_only(storage, clock):
    queue = queue_over(storage, clock, max_items=2)
    assert [queue.offer(item(f"r-{n}"), redact) for n in range(3)] == [True, True, False]
    assert queue.offer(item("f-1", "faq"), redact)
    queue.answer("r-0", "refund", "key_r")
    assert queue.offer(item("r-2"), redact)  # an answer makes room


def test_offer_needs_input_text(storage, clock):
    with pytest.raises(ValueError, match="no input text"):
        queue_over(storage, clock).offer({**item(), "text": None}, redact)


def test_answer_moves_the_item_to_labelled_rows(storage, clock):
    queue = queue_over(storage, clock)
    queue.offer(item(), redact)
    clock.now = NOW + 30
    answered_at = datetime.fromtimestamp(NOW + 30, timezone.utc).isoformat()
    assert queue.answer("r-1", "  refund ", "key_r") == {
        "request_id": "r-1", "agent": "tickets", "version": "v2", "label": "refund", "model_label": "billing",
        "answered_at": answered_at,
    }
    assert queue.pending() == []
    assert queue.labelled_rows("tickets") == [
        {"text": "Refund me, write to [EMAIL]", "label": "refund", "request_id": "r-1", "answered_at": answered_at}
    ]


def test_answer_errors_unknown_twice_and_blank(storage, clock):
    queue = queue_over(storage, clock)
    queue.offer(item(), redact)
    with pytest.raises(ValidationFailed, match="label"):
        queue.answer("r-1", "   ", "key_r")
    with pytest.raises(NotFound, match="r-404"):
        queue.answer("r-404", "refund", "key_r")
    queue.answer("r-1", "refund", "key_r")
    with pytest.raises(Conflict, match="answered already"):
        queue.answer("r-1", "billing", "key_s")
    assert queue.labelled_rows("tickets")[0]["label"] == "refund"


def test_a_pending_file_left_by_a_crash_after_the_answer_is_a_conflict_and_goes(storage, clock):
    queue = queue_over(storage, clock)
    queue.offer(item(), redact)
    pending = storage.path("review", "pending", "tickets", id_file("r-1"))
    leftover = storage.fs.cat_file(pending)
    queue.answer("r-1", "refund", "key_r")
    storage.fs.pipe_file(pending, leftover)  # as if the process died before removing it
    with pytest.raises(Conflict):
        queue.answer("r-1", "billing", "key_s")
    assert queue.pending() == [] and queue.labelled_rows("tickets")[0]["label"] == "refund"


def test_concurrent_answers_have_exactly_one_winner(storage, clock):
    queue = queue_over(storage, clock)
    queue.offer(item(), redact)
    results: list[str] = []

    def answer(label: str) -> None:
        try:
            queue.answer("r-1", label, "k")
            results.append(label)
        except (Conflict, NotFound):
            results.append("refused")

    threads = [threading.Thread(target=answer, args=(f"label-{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [r for r in results if r != "refused"]
    assert len(winners) == 1 and queue.labelled_rows("tickets")[0]["label"] == winners[0]


def test_new_labels_and_rows_since(storage, clock):
    queue = queue_over(storage, clock)
    for n in range(3):
        queue.offer(item(f"r-{n}"), redact)
    for n in range(3):
        clock.now = NOW + 100 * n
        queue.answer(f"r-{n}", "refund", "k")
    since = datetime.fromtimestamp(NOW + 100, timezone.utc)
    assert queue.new_labels("tickets", since) == 2 and queue.new_labels("tickets", None) == 3
    assert [r["request_id"] for r in queue.labelled_rows("tickets", since=(NOW + 100))] == ["r-1", "r-2"]
    assert queue.new_labels("faq", since - timedelta(days=1)) == 0


def test_an_item_answered_between_listing_and_reading_is_a_conflict(storage, clock, monkeypatch):
    queue = queue_over(storage, clock)
    queue.offer(item(), redact)
    other_reviewer = queue_over(storage, clock)
    read_json = storage.read_json

    def answered_meanwhile(path: str):
        monkeypatch.setattr(storage, "read_json", read_json)
        other_reviewer.answer("r-1", "refund", "key_other")
        return read_json(path)

    monkeypatch.setattr(storage, "read_json", answered_meanwhile)
    with pytest.raises(Conflict, match="answered already"):
        queue.answer("r-1", "billing", "key_r")
    assert [r["label"] for r in queue.labelled_rows("tickets")] == ["refund"]
