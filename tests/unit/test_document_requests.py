"""Document requests at the front door, without Ray: multipart and base64 bodies become one
Invocation with the document's bytes, its sniffed type and the query; bad uploads get their
status before any agent runs; nothing is spooled to disk; pipelines take documents too."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from actors.invocation import Result
from actors.router import SemanticRouter
from actors.sessions import SqliteSessionStore
from cluster.config import OrchestraConfig
from cluster.keys import KeyStore
from cluster.registry import ModelRegistry
from cluster.storage import Storage
from serve.app import create_app
from serve.control import ControlPlane
from serve.ingress import Gateway
from tests.unit.agent_doubles import EchoTarget
from tests.unit.test_ingress import embed  # noqa: F401  (the module-scoped Embedder fixture)

MAX_BYTES = 3_000_000
CONFIG = {
    "audit": {"redact_names": False, "flush_interval_s": 0.05},
    "reporter": {"interval_s": 0.05},
    "limits": {"max_body_bytes": 4096, "documents": {"max_bytes": MAX_BYTES}},
    "agents": [
        {"name": "documents", "kind": "echo", "routable": False, "description": "fields from documents"},
        {"name": "weather", "kind": "echo", "description": "weather forecasts, temperature, rain and snow"},
    ],
    "pipelines": [{"name": "intake", "description": "extract, then echo the text", "steps": [
        {"name": "extract", "agent": "documents", "input": "input.document"},
        {"name": "echo", "agent": "weather", "input": "steps.extract.text"}]}],
}


class DocumentsDouble:
    """Test double for the documents agent: records the invocation, answers like extraction."""

    streams = False

    def __init__(self):
        self.seen = []

    async def call(self, invocation):
        self.seen.append(invocation)
        output = {
            "pages": 1,
            "results": [{"page": 1, "fields": {"total": 9.0}, "valid": True, "errors": [], "confidence": {"total": 0.9}, "boxes": {"total": [1, 2, 3, 4]}}],
            "text": "TOTAL 9.00",
            "source": {"sha256": hashlib.sha256(invocation.document.data).hexdigest(), "pages": 1, "read": [{"page": 1, "source": "ocr"}]},
        }
        return Result(output=output)

    async def stream(self, invocation):
        yield await self.call(invocation)


@pytest.fixture
def documents():
    return DocumentsDouble()


@pytest.fixture
def gateway(tmp_path, embed, documents):  # noqa: F811
    config = OrchestraConfig.model_validate({**CONFIG, "storage": str(tmp_path)})
    storage = Storage(str(tmp_path))
    return Gateway(
        config,
        keys=KeyStore(storage),
        registry=ModelRegistry(storage),
        router=SemanticRouter([a for a in config.agents if a.routable], config.router, embed),
        sessions=SqliteSessionStore(tmp_path / "sessions.sqlite3"),
        control=ControlPlane.in_process(config, str(tmp_path)),
        targets={"documents": {"v1": documents}, "weather": {"v1": EchoTarget("weather")}},
    )


@pytest.fixture
def http(gateway):
    key, _ = gateway.keys.create("admin", "unit")
    with TestClient(create_app(gateway), headers={"Authorization": f"Bearer {key}"}) as client:
        yield client


def png(size=(40, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "white").save(buffer, format="PNG")
    return buffer.getvalue()


def error_of(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code and body["request_id"]
    return body["message"]


def test_a_multipart_upload_reaches_the_documents_agent_whole(http, documents):
    data = png()
    response = http.post("/v1/extract", files={"file": ("scan.bin", data)}, data={"query": '{"total": 0.0}', "mode": "fields", "options": '{"pages": [1]}'})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["agent"], body["version"], body["pages"]) == ("documents", "v1", 1)
    assert body["results"][0]["fields"] == {"total": 9.0}
    [invocation] = documents.seen
    # The type comes from the bytes, not from the name the client gave.
    assert (invocation.document.data, invocation.document.media_type, invocation.document.filename) == (data, "image/png", "scan.bin")
    assert invocation.options == {"pages": [1], "query": {"total": 0.0}, "mode": "fields"}
    assert invocation.deadline is not None and invocation.deadline > time.time()


def test_a_filename_part_names_the_upload_and_is_checked(http, documents):
    named = http.post("/v1/extract", files={"file": ("scan.bin", png())}, data={"query": "*", "filename": "receipt.png"})
    assert named.status_code == 200, named.text
    assert documents.seen[-1].document.filename == "receipt.png"
    empty = http.post("/v1/extract", files={"file": ("scan.bin", png())}, data={"query": "*", "filename": ""})
    assert "filename" in error_of(empty, 422, "validation_error")


def test_base64_json_is_the_same_request(http, documents):
    data = png()
    response = http.post("/v1/extract", json={"document_b64": base64.b64encode(data).decode(), "filename": "a.png", "query": "*"})
    assert response.status_code == 200, response.text
    [invocation] = documents.seen
    assert invocation.document.data == data and invocation.options["query"] == "*" and invocation.options["mode"] == "fields"


@pytest.mark.parametrize(
    "files, data, status, code, mentions",
    [
        ({"file": ("a.pdf", b"PK\x03\x04zipzip")}, {}, 415, "unsupported_media_type", "zip"),
        ({"file": ("a.png", b"")}, {}, 422, "validation_error", "empty"),
        ({"other": ("a.png", png())}, {}, 422, "validation_error", "file"),
        ({"file": ("a.png", png())}, {"query": "{not json"}, 422, "validation_error", "query"),
        ({"file": ("a.png", png())}, {"mode": "poem"}, 422, "validation_error", "mode"),
        ({"file": ("a.png", png())}, {"surprise": "1"}, 422, "validation_error", "surprise"),
        ({"file": ("a.png", b"\x89PNG" + b"0" * MAX_BYTES)}, {}, 413, "payload_too_large", "limit"),
    ],
)
def test_bad_uploads_are_refused_before_any_agent_runs(http, documents, files, data, status, code, mentions):
    message = error_of(http.post("/v1/extract", files=files, data=data), status, code)
    assert mentions in message.lower()
    assert documents.seen == []


def test_bad_json_document_bodies(http, documents):
    assert "base64" in error_of(http.post("/v1/extract", json={"document_b64": "%%%"}), 422, "validation_error")
    assert "document_b64" in error_of(http.post("/v1/extract", json={"query": "*"}), 422, "validation_error")
    big = base64.b64encode(b"0" * (MAX_BYTES * 2)).decode()
    assert "limit" in error_of(http.post("/v1/extract", json={"document_b64": big}), 413, "payload_too_large")
    # Text endpoints keep their own, smaller body limit.
    assert "limit" in error_of(http.post("/v1/route", json={"text": "x" * 5000}), 413, "payload_too_large")
    assert documents.seen == []


def test_an_upload_never_spills_to_a_temporary_file(http, documents, monkeypatch):
    from python_multipart.multipart import File

    def refuse(self):
        raise AssertionError("the upload was written to disk")

    monkeypatch.setattr(File, "_get_disk_file", refuse)
    # Past python-multipart's default in-memory size (1 MiB), within the document limit.
    data = png((150, 150)) + b"\x00" * 2_000_000
    response = http.post("/v1/extract", files={"file": ("a.png", data)})
    assert response.status_code == 200, response.text
    assert documents.seen[0].document.data == data


def test_a_pipeline_takes_a_document_and_the_query_reaches_only_the_step_that_reads_it(http, documents, gateway):
    response = http.post("/v1/pipelines/intake", files={"file": ("a.png", png())}, data={"options": '{"query": {"total": 0.0}}'})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["result"]["echo"]["text"] == "TOTAL 9.00"
    assert [entry["step"] for entry in body["trace"]] == ["extract", "echo"]
    assert documents.seen[0].options == {"query": {"total": 0.0}}
    echoed = gateway.dispatcher.targets["weather"]["v1"].seen[0]
    assert echoed.text == "TOTAL 9.00" and echoed.options == {}
    # The same pipeline still takes a text body; its first step then finds no document.
    text = http.post("/v1/pipelines/intake", json={"text": "hello"})
    assert "input.document" in error_of(text, 422, "validation_error")


def test_the_audit_record_keeps_the_documents_hash_not_its_bytes(http, gateway):
    data = png()
    response = http.post("/v1/extract", files={"file": ("a.png", data)}, headers={"X-Request-ID": "doc-audit-1"})
    assert response.status_code == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        records = [r for r in http.get("/v1/admin/audit", params={"limit": 50}).json()["records"] if r["request_id"] == "doc-audit-1"]
        if records:
            break
        time.sleep(0.1)
    [record] = records
    assert record["input_sha256"] == hashlib.sha256(data).hexdigest()
    assert record["input_text"] is None and record["agent"] == "documents" and record["status_code"] == 200
    assert json.loads(record["output"])["results"][0]["fields"] == {"total": 9.0}
