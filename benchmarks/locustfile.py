"""A mixed load on a running baton (``make up``) for locust: routed texts, direct sentiment invokes
of SST-2 review sentences, a supervisor and an SSE stream (text users), and receipt extractions
(a fixed number of document users), one CSV row per kind of request.

    .venv/bin/locust -f benchmarks/locustfile.py --headless -u 16 -r 4 -t 60s --csv /tmp/load --host http://127.0.0.1:8000

``make bench-load`` runs it through ``benchmarks/load.py``. The key is ``$BATON_KEY``, else
``$BATON_API_KEY``, else ``.baton/dev-key``. 429 and 503 answers are failures of their own: they
go to their own rows (``<kind> [<status> <error code>]``) and the user waits out ``Retry-After``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import gevent
from locust import HttpUser, between, constant_throughput, events, task

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECEIPT = REPO.parent / "shared" / "datasets" / "sroie-dev" / "000.jpg"
DEFAULT_REVIEWS = REPO.parent / "shared" / "datasets" / "sst2" / "train.tsv"
# Sentiment inputs drawn like the model's validation rows (a uniform sample of SST-2), so the load
# itself does not look like drift to the monitor, as a few repeated texts would.
REVIEW_SAMPLE, REVIEW_SEED = 1000, 0
RECEIPT_QUERY = {"company": "str", "date": "date", "address": "str", "total": 0.0}
REFUSED = (429, 503)
RETRY_AFTER_CAP_S = 30.0  # a refusal never parks a user for longer than this
TIMEOUT_S = 60.0
EXTRACT_TIMEOUT_S = 120.0

# Texts the semantic router of configs/orchestra.yaml sends to seven agents (sentiment, language,
# entities, pii, keyphrases, triage, summarize: checked with its router, each above the threshold);
# the row "route" mixes them, as real traffic would.
ROUTED_TEXTS = (
    "Terrible experience: the battery died after two days and nobody at support cared.",
    "Which language is this sentence written in? 'Het weer is vandaag erg mooi in Amsterdam.'",
    "Find all people and organizations: Satya Nadella met executives of Siemens in Munich.",
    "Redact the personal data in this message: call Maria Lopez on +44 20 7946 0958 or maria@example.com",
    "What are the key phrases of this article? Solar panel prices fell again as factories expanded output.",
    "2024-03-12T10:15:32Z ERROR [db-pool] connection is not available, request timed out after 30000ms",
    "Give me a short summary of this report: the board met on Monday, approved the budget, delayed the hiring plan and asked for a new forecast.",
)
SUPERVISOR_TEXT = "What language is this and who is mentioned? 'Gestern hat Olaf Scholz Paris besucht.'"
STREAM_TEXT = (  # routed to summarize
    "Give me a short summary of this report: sales grew four percent in the third quarter, costs rose "
    "faster than planned, and the company expects a flat fourth quarter."
)


@dataclass(frozen=True)
class Workload:
    """What every user shares, read once when the test starts."""

    key: str
    receipt_name: str
    receipt: bytes
    reviews: tuple[str, ...]


WORKLOAD: Workload | None = None


def api_key() -> str:
    """``$BATON_KEY``, else ``$BATON_API_KEY``, else the first line of ``.baton/dev-key``."""
    for variable in ("BATON_KEY", "BATON_API_KEY"):
        if os.environ.get(variable):
            return os.environ[variable].strip()
    for path in (Path.cwd() / ".baton" / "dev-key", REPO / ".baton" / "dev-key"):
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
    raise SystemExit("no API key: set BATON_KEY, or run `make up` (which writes .baton/dev-key)")


def sampled_reviews(path: Path) -> tuple[str, ...]:
    """A fixed uniform sample of the sentences of an SST-2 ``text<TAB>label`` file."""
    with path.open(encoding="utf-8") as rows:
        sentences = [line.split("\t", 1)[0].strip() for line in itertools.islice(rows, 1, None)]
    return tuple(random.Random(REVIEW_SEED).sample(sentences, min(REVIEW_SAMPLE, len(sentences))))


def retry_after_s(response) -> float:
    """The answer's ``Retry-After`` in seconds (1 s when absent or not a number), capped."""
    try:
        seconds = float(response.headers.get("Retry-After", "1"))
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_S)


def answers(response, valid) -> bool:
    """Whether the JSON body passes ``valid`` (a body that is not the expected shape does not)."""
    try:
        return bool(valid(response.json()))
    except (ValueError, KeyError, TypeError, IndexError):
        return False


def error_code(response) -> str:
    """The ``error.code`` of baton's error shape, or ``-`` for another body (e.g. Serve's own 503)."""
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "-"


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    parser.add_argument("--receipt", default=os.environ.get("BATON_RECEIPT", str(DEFAULT_RECEIPT)),
                        help="Receipt image sent to POST /v1/extract (default: SROIE dev 000.jpg).")
    parser.add_argument("--reviews", default=os.environ.get("BATON_REVIEWS", str(DEFAULT_REVIEWS)),
                        help="SST-2 train.tsv whose sentences the sentiment invokes send (default: ../shared/datasets/sst2).")
    parser.add_argument("--document-users", type=int, default=2,
                        help="Users that only extract receipts (at least 1; the others are text users).")
    parser.add_argument("--rate-per-user", type=float, default=0.0,
                        help="Requests per second each user aims at (locust's constant_throughput); 0 waits 0.1-0.5 s between requests.")


@events.init.add_listener
def _fix_document_users(environment, **_) -> None:
    # A fixed count: with weights, users pile up in the slowest kind (OCR) and starve the text path.
    if environment.parsed_options is not None:
        DocumentUser.fixed_count = max(1, environment.parsed_options.document_users)


@events.test_start.add_listener
def _read_workload(environment, **_) -> None:
    global WORKLOAD
    receipt, reviews = Path(environment.parsed_options.receipt), Path(environment.parsed_options.reviews)
    if not receipt.is_file():
        raise SystemExit(f"no receipt at {receipt}: pass --receipt PATH (a JPEG or PNG from ../shared/datasets/sroie-dev)")
    if not reviews.is_file():
        raise SystemExit(f"no review sentences at {reviews}: pass --reviews PATH (SST-2's train.tsv)")
    WORKLOAD = Workload(api_key(), receipt.name, receipt.read_bytes(), sampled_reviews(reviews))


class BatonUser(HttpUser):
    """What text and document users share: the key, the checks, the wait after a refusal."""

    abstract = True
    host = "http://127.0.0.1:8000"

    def wait_time(self) -> float:
        return self._wait(self)

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {WORKLOAD.key}"
        options = self.environment.parsed_options
        rate = options.rate_per_user if options is not None else 0.0
        # A fixed rate makes the offered load known (benchmarks/soak.py); the default is open-ended.
        self._wait = constant_throughput(rate) if rate > 0 else between(0.1, 0.5)

    def post(self, kind: str, path: str, valid, timeout: float = TIMEOUT_S, **request) -> None:
        """POST, record it under ``kind``, and wait out ``Retry-After`` after a refusal."""
        with self.client.post(path, name=kind, catch_response=True, timeout=timeout, **request) as response:
            pause = self.checked(response, kind, valid)
        gevent.sleep(pause)

    def checked(self, response, kind: str, valid) -> float:
        """Mark a ``catch_response`` answer refused (own row), failed or valid; the seconds to wait."""
        status = response.status_code
        if status in REFUSED:
            refusal = f"{status} {error_code(response)}"
            response.request_meta["name"] = f"{kind} [{refusal}]"
            response.failure(refusal)
            return retry_after_s(response)
        if not 200 <= status < 300:
            response.failure(f"{status} {error_code(response)}" if status else f"no answer: {type(response.error).__name__}")
        elif not answers(response, valid):
            response.failure(f"{status} unexpected body")
        else:
            response.success()
        return 0.0


class TextUser(BatonUser):
    """Mostly routed texts, then direct invokes, supervisor requests and streams."""

    def on_start(self) -> None:
        super().on_start()
        self.routed = itertools.cycle(ROUTED_TEXTS)

    @task(8)
    def route(self) -> None:
        self.post("route", "/v1/route", lambda body: "agent" in body and "result" in body, json={"text": next(self.routed)})

    @task(4)
    def invoke(self) -> None:
        self.post("invoke sentiment", "/v1/agents/sentiment/invoke", lambda body: "label" in body["result"],
                  json={"text": random.choice(WORKLOAD.reviews)})

    @task(2)
    def supervisor(self) -> None:
        self.post("supervisor analyst", "/v1/agents/analyst/invoke", lambda body: bool(body["trace"] and body["result"]),
                  json={"text": SUPERVISOR_TEXT})

    @task(2)
    def stream(self) -> None:
        """``/v1/route`` with ``stream: true``, read to its last event: the row ``stream`` is the
        whole stream, the row ``stream: first event`` the time to its first SSE event."""
        started, pause = time.perf_counter(), 0.0
        with self.client.post("/v1/route", json={"text": STREAM_TEXT, "stream": True}, name="stream", stream=True,
                              catch_response=True, timeout=TIMEOUT_S) as response:
            if response.status_code != 200:
                pause = self.checked(response, "stream", lambda body: False)
            else:
                self.read_events(response, started)
        gevent.sleep(pause)

    def read_events(self, response, started: float) -> None:
        """Read the SSE answer to its end; it must end with a ``result`` event."""
        first_ms, names, size = None, [], 0
        for line in response.iter_lines(decode_unicode=True):
            size += len(line) + 1
            if line.startswith("event: "):
                names.append(line.removeprefix("event: "))
                first_ms = first_ms if first_ms is not None else (time.perf_counter() - started) * 1000
        response.request_meta["response_time"] = (time.perf_counter() - started) * 1000
        response.request_meta["response_length"] = size
        if names and names[-1] == "result":
            response.success()
            self.environment.events.request.fire(
                request_type="SSE", name="stream: first event", response_time=first_ms, response_length=0,
                exception=None, context={}, response=None, url=None,
            )
        else:
            response.failure(f"stream ended with {names[-1] if names else 'no event'}")


class DocumentUser(BatonUser):
    """One receipt after another through ``POST /v1/extract`` (OCR, then fields)."""

    fixed_count = 2

    @task
    def extract(self) -> None:
        self.post("extract receipt", "/v1/extract", lambda body: body["results"][0]["fields"] is not None,
                  timeout=EXTRACT_TIMEOUT_S, files={"file": (WORKLOAD.receipt_name, WORKLOAD.receipt)},
                  data={"query": json.dumps(RECEIPT_QUERY)})
