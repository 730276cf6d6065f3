"""The /review page in headless Chromium, driven over the DevTools protocol: a reviewer enters
a key, reads the redacted input, picks one label from a button and types another, and the
answers land as labelled rows of a real ReviewQueue. The browser can reach 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi import Request

from actors.feedback import ReviewQueue, id_file
from actors.pii import PiiRedactor
from cluster.config import ReviewPolicy
from cluster.keys import KeyStore, Principal
from cluster.storage import Storage
from tests.unit.test_offline_docs import chromium, serving  # noqa: F401 (chromium is a fixture)
from tests.unit.test_review_routes import review_app

EMAIL = "jane.doe@example.com"
OFFLINE_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    # No network but loopback, as in test_offline_docs: the page must need nothing else.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1",
)


# Puts the pipe ends on the fds 3 and 4 that --remote-debugging-pipe expects, then runs Chromium
# (Popen cannot choose child fd numbers, and dash's redirections stop at fd 9).
MOVE_FDS_AND_EXEC = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
    "os.close(int(sys.argv[1])); os.close(int(sys.argv[2])); os.execv(sys.argv[3], sys.argv[3:])"
)


class DevTools:
    """A minimal DevTools-protocol client over ``--remote-debugging-pipe``: Chromium reads
    NUL-terminated JSON commands on its fd 3 and writes replies and events on its fd 4.
    Needs nothing beyond the standard library."""

    def __init__(self, binary: str, workdir: Path, timeout_s: float = 20.0):
        self.timeout_s = timeout_s
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        self._buffer = b""
        browser_in, self._to_browser = os.pipe()
        self._from_browser, browser_out = os.pipe()
        # Above 4, so that moving them to 3 and 4 cannot overwrite one with the other.
        child_in, child_out = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (browser_in, browser_out))
        os.close(browser_in)
        os.close(browser_out)
        self._log = open(workdir / "chromium.log", "wb")  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(
            [sys.executable, "-c", MOVE_FDS_AND_EXEC, str(child_in), str(child_out), binary,
             *OFFLINE_FLAGS, "--remote-debugging-pipe", f"--user-data-dir={workdir / 'profile'}", "about:blank"],
            pass_fds=(child_in, child_out), stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
        )
        os.close(child_in)
        os.close(child_out)
        self.session: str | None = None

    def send(self, method: str, params: dict | None = None, browser_level: bool = False) -> dict:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session is not None and not browser_level:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]
            self.events.append(reply)

    def _receive(self) -> dict:
        deadline = time.monotonic() + self.timeout_s
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"Chromium sent nothing for {self.timeout_s}s"
            chunk = os.read(self._from_browser, 1 << 16)
            assert chunk, f"Chromium closed the pipe (exit code {self.process.poll()})"
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def open_page(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, browser_level=True)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, browser_level=True)["sessionId"]
        self.send("Network.enable")
        self.send("Page.enable")
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def wait_event(self, method: str) -> dict:
        while not any(event.get("method") == method for event in self.events):
            self.events.append(self._receive())
        return next(event for event in self.events if event.get("method") == method)

    def evaluate(self, expression: str) -> Any:
        reply = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    def wait_for(self, expression: str) -> Any:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            # An element the page has not made yet reads as "not yet", not as an error.
            value = self.evaluate(f"(() => {{ try {{ return ({expression}); }} catch (error) {{ return null; }} }})()")
            if value:
                return value
            time.sleep(0.1)
        page = self.evaluate("document.body ? document.body.innerText : ''")
        raise AssertionError(f"not true within {self.timeout_s}s: {expression}\npage text: {page}")

    def click(self, selector: str) -> None:
        """A real mouse click at the element's centre, as a person would make."""
        x, y = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def type_into(self, selector: str, text: str) -> None:
        self.click(selector)
        self.send("Input.insertText", {"text": text})

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        try:
            self.send("Browser.close", browser_level=True)
            self.process.wait(timeout=15)
        except (AssertionError, OSError, subprocess.TimeoutExpired):  # a browser that will not close
            self.process.kill()
            self.process.wait(timeout=15)
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)
            self._log.close()


class QueuePort:
    """The ReviewPort over a real ReviewQueue, as the Gateway implements it (minus audit and monitor)."""

    def __init__(self, queue: ReviewQueue):
        self.queue = queue

    async def feedback(self, request: Request, body: dict, principal: Principal) -> dict:
        raise AssertionError("the review page never sends feedback")

    async def review_items(self, request: Request, agent: str | None, limit: int, principal: Principal) -> list[dict]:
        return await asyncio.to_thread(self.queue.pending, agent, limit, principal.role == "admin")

    async def answer_review(self, request: Request, request_id: str, label: str, principal: Principal) -> dict:
        return await asyncio.to_thread(self.queue.answer, request_id, label, principal.key_id)


def ticket(request_id: str, text: str, queued_at: float) -> dict:
    return {
        "request_id": request_id, "agent": "tickets", "version": "v2", "text": text,
        "output": {"label": "billing", "scores": {"billing": 0.41, "refund": 0.38, "shipping": 0.21}},
        "label": "billing", "confidence": 0.41, "ts": queued_at,
    }


@pytest.mark.slow
def test_a_reviewer_labels_the_queue_in_the_browser(chromium, tmp_path):  # noqa: F811 (the imported fixture)
    storage = Storage(str(tmp_path / "store"))
    keys = KeyStore(storage)
    review_key, reviewer = keys.create("review", "alice")
    queue = ReviewQueue(storage, {"tickets": ReviewPolicy(confidence_below=0.6)})
    redact = PiiRedactor(use_ner=False)
    assert queue.offer(ticket("r-1", f"I was charged twice, refund to {EMAIL} please", time.time()), redact)
    assert queue.offer(ticket("r-2", "Where is my parcel? It is late again.", time.time() + 1), redact)

    browser = DevTools(chromium, tmp_path)
    try:
        with serving(review_app(QueuePort(queue), keys.verify)) as base:
            browser.open_page(f"{base}/review")
            browser.wait_for("!document.getElementById('login').hidden")
            browser.type_into("#key", review_key)
            browser.click("#start")

            shown = browser.wait_for("!document.getElementById('item').hidden && document.getElementById('input').textContent")
            assert shown == "I was charged twice, refund to [EMAIL] please"
            assert EMAIL not in browser.evaluate("document.documentElement.outerHTML")
            assert browser.evaluate("document.getElementById('answer').textContent") == "billing"
            assert browser.evaluate("document.getElementById('confidence').textContent") == "0.410"
            buttons = browser.evaluate("[...document.querySelectorAll('#labels button')].map(b => b.dataset.label)")
            assert buttons == ["billing", "refund", "shipping"]  # the answer's scores, best first
            browser.click("#labels button[data-label='refund']")

            browser.wait_for("document.getElementById('input').textContent.startsWith('Where is my parcel')")
            browser.type_into("#typed", "delivery")
            browser.click("#submit-typed")
            browser.wait_for("!document.getElementById('empty').hidden")
            assert browser.evaluate("sessionStorage.getItem('baton-review-key')") == review_key
            requested = browser.requested_urls()
    finally:
        browser.close()

    rows = queue.labelled_rows("tickets")
    assert [(r["request_id"], r["label"], r["text"]) for r in rows] == [
        ("r-1", "refund", "I was charged twice, refund to [EMAIL] please"),
        ("r-2", "delivery", "Where is my parcel? It is late again."),
    ]
    answered = storage.read_json(storage.path("review", "answered", "tickets", id_file("r-1")))
    assert answered["answered_by"] == reviewer.key_id and queue.pending() == []
    assert f"{base}/review" in requested and any(url.startswith(f"{base}/v1/admin/review") for url in requested)
    assert [url for url in requested if not url.startswith(base + "/")] == []
