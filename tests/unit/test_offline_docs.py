"""serve.docs: Swagger UI and ReDoc load nothing from outside the app, and headless Chromium
with every non-loopback address blocked still renders the operations.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serve.docs import mount_offline_docs

ABSOLUTE_URL = re.compile(r"""https?://[^\s"'<>]+""")
LOCAL_REFERENCE = re.compile(r"""(?:src|href)="(/[^"]*)\"""")
SWAGGER_OPERATION = re.compile(r'class="opblock-summary-method">(\w+)</span>.*?class="opblock-summary-path" data-path="([^"]+)"')
REDOC_OPERATION = re.compile(r'class="[^"]*http-verb (\w+)">\w+</span><span[^>]*>([^<]+)</span>')
OPERATIONS = {("GET", "/items/{item_id}"), ("POST", "/route"), ("DELETE", "/keys/{name}")}


def docs_app() -> FastAPI:
    app = FastAPI(title="offline docs", docs_url=None, redoc_url=None)

    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict:
        return {"item_id": item_id}

    @app.post("/route")
    async def route(text: str) -> dict:
        return {"text": text}

    @app.delete("/keys/{name}")
    async def revoke_key(name: str) -> dict:
        return {"revoked": name}

    mount_offline_docs(app)
    return app


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_docs_pages_reference_no_external_url_and_their_assets_are_served(page):
    client = TestClient(docs_app())
    response = client.get(page)
    assert response.status_code == 200
    assert ABSOLUTE_URL.findall(response.text) == []
    for reference in LOCAL_REFERENCE.findall(response.text):
        assert client.get(reference).status_code == 200, reference


def test_docs_urls_carry_the_root_path():
    client = TestClient(docs_app(), root_path="/api")
    html = client.get("/docs").text
    assert "'/api/openapi.json'" in html
    assert 'src="/api/docs/assets/swagger-ui-bundle.js"' in html
    assert 'href="/api/docs/assets/swagger-ui.css"' in html
    assert 'spec-url="/api/openapi.json"' in client.get("/redoc").text


def test_an_app_without_a_schema_is_refused():
    with pytest.raises(ValueError, match="openapi_url=None"):
        mount_offline_docs(FastAPI(openapi_url=None, docs_url=None, redoc_url=None))


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = shutil.which("chromium")
    if binary is None:
        reason = "chromium is not on PATH (Debian: apt-get install chromium; `make chromium` does it)"
        if os.environ.get("BATON_REQUIRE_CHROMIUM"):
            pytest.fail(f"{reason}, and BATON_REQUIRE_CHROMIUM is set")
        pytest.skip(f"{reason}; set BATON_REQUIRE_CHROMIUM=1 to make this a failure")
    return binary


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread on a free loopback port; yield its base URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))  # bound here, so no other process can take the port first
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        listener.close()


def render_offline(chromium: str, url: str, workdir: Path) -> tuple[str, list[str]]:
    """Load ``url`` in headless Chromium that can reach 127.0.0.1 only. Returns the DOM after the
    page's scripts ran and every URL the page asked for, from Chromium's own network log."""
    net_log = workdir / "net-log.json"
    command = [
        chromium,
        "--headless",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-gpu",
        "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
        f"--user-data-dir={workdir / 'profile'}",
        # No network but loopback: every host name fails to resolve, and every other address,
        # IP literals included, goes to a proxy on the discard port where nothing listens.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=127.0.0.1",
        f"--log-net-log={net_log}",
        # Lets the page's scripts fetch /openapi.json and render before the DOM is dumped.
        "--virtual-time-budget=10000",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, urls_requested_by_page(net_log, url)


def urls_requested_by_page(net_log: Path, page_url: str) -> list[str]:
    """The page and what it asked for; the browser's own background requests (update checks and
    the like) carry no initiator origin, are not the page's doing, and are blocked all the same."""
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    origin = "/".join(page_url.split("/")[:3])
    urls = []
    for event in log["events"]:
        params = event.get("params", {})
        if event["type"] == start_job and "url" in params:
            if params.get("initiator") == origin or params["url"] == page_url:
                urls.append(params["url"])
    return urls


@pytest.mark.slow
@pytest.mark.parametrize(
    ("page", "operation"), [("/docs", SWAGGER_OPERATION), ("/redoc", REDOC_OPERATION)], ids=["swagger-ui", "redoc"]
)
def test_docs_render_the_operations_with_no_network(chromium, tmp_path, page, operation):
    with serving(docs_app()) as base:
        dom, requested = render_offline(chromium, base + page, tmp_path)
    rendered = {(method.upper(), path) for method, path in operation.findall(dom)}
    assert rendered == OPERATIONS, dom[-3000:]
    assert f"{base}/openapi.json" in requested
    assert [url for url in requested if not url.startswith(base + "/")] == []


@pytest.mark.slow
def test_the_browser_really_has_no_network_so_stock_cdn_docs_stay_blank(chromium, tmp_path):
    """The control: FastAPI's own /docs, whose assets come from a CDN, renders nothing here."""
    app = FastAPI(title="stock docs")
    app.get("/items/{item_id}")(lambda item_id: {})
    with serving(app) as base:
        dom, requested = render_offline(chromium, base + "/docs", tmp_path)
    assert SWAGGER_OPERATION.findall(dom) == []
    assert any(url.startswith("https://cdn.jsdelivr.net/") for url in requested), requested
