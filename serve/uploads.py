"""A document from a request body: a ``multipart/form-data`` upload or base64 in JSON, read
into memory within the configured limits (nothing touches the disk), its type sniffed from
its bytes, and the other fields checked against a request model."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import FormParser, parse_options_header

from actors.documents.pages import sniff_media_type
from actors.invocation import Document
from cluster.config import DocumentLimits
from cluster.errors import InvalidRequest, PayloadTooLarge, ValidationFailed

Fields = TypeVar("Fields", bound=BaseModel)
# Form parts that carry JSON (a query by example, options, metadata) rather than plain text.
JSON_PARTS = ("query", "options", "metadata")
MAX_FORM_PARTS = 16


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("multipart/form-data")


def body_limit(limits: DocumentLimits, json_limit: int) -> int:
    """Largest body of a document request: the document in base64, plus the JSON around it."""
    return limits.max_bytes * 4 // 3 + 4 + json_limit


async def read_document_request(request: Request, model: type[Fields], limits: DocumentLimits) -> tuple[Document, Fields]:
    """The document and the request's other fields, validated with ``model``."""
    if is_multipart(request):
        return _checked(*await _read_form(request, limits), model, limits)
    return document_from_payload(await json_object(request), model, limits)


def document_from_payload(payload: dict[str, Any], model: type[Fields], limits: DocumentLimits) -> tuple[Document, Fields]:
    """A JSON body's base64 document and its other fields."""
    return _checked(*_from_json(payload), model, limits)


def validated(model: type[Fields], fields: dict[str, Any]) -> Fields:
    """``fields`` as ``model``; errors name the body field, as FastAPI's own do."""
    try:
        return model.model_validate(fields)
    except ValidationError as error:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in error.errors()]) from None


def _checked(data: bytes, filename: str | None, fields: dict[str, Any], model: type[Fields], limits: DocumentLimits) -> tuple[Document, Fields]:
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"document is {len(data)} bytes; the limit is {limits.max_bytes}")
    # A ``filename`` part, when sent, wins over the upload's own name, and is checked like any part.
    parsed = validated(model, {**({"filename": filename} if filename is not None else {}), **fields})
    return Document(data=data, media_type=sniff_media_type(data), filename=getattr(parsed, "filename", None)), parsed


async def json_object(request: Request) -> dict[str, Any]:
    try:
        payload = json.loads(await request.body())
    # JSONDecodeError and UnicodeDecodeError are ValueErrors, and so is a number of more than
    # 4,300 digits; nesting deeper than the interpreter's recursion limit is a RecursionError.
    except RecursionError:
        raise InvalidRequest("request body is not valid JSON: nested too deeply") from None
    except ValueError as error:
        raise InvalidRequest(f"request body is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    return payload


def _from_json(payload: dict[str, Any]) -> tuple[bytes, str | None, dict[str, Any]]:
    fields = dict(payload)
    encoded = fields.pop("document_b64", None)
    if not isinstance(encoded, str) or not encoded:
        raise ValidationFailed("document_b64: required, the document's bytes in base64 (or send multipart/form-data with a 'file' part)")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationFailed("document_b64: not valid base64") from None
    return data, None, fields


async def _read_form(request: Request, limits: DocumentLimits) -> tuple[bytes, str | None, dict[str, Any]]:
    _, params = parse_options_header(request.headers["content-type"])
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidRequest("multipart/form-data body without a boundary")
    files: list[Any] = []
    values: dict[str, bytes] = {}

    def on_field(field) -> None:
        values[field.field_name.decode("utf-8", "replace")] = field.value or b""

    # Kept in memory up to the document limit: an upload never spills to a temporary file.
    config = {"MAX_MEMORY_FILE_SIZE": limits.max_bytes + 1, "MAX_FIELDS": MAX_FORM_PARTS, "MAX_BODY_SIZE": body_limit(limits, 1 << 20)}
    parser = FormParser("multipart/form-data", on_field, files.append, boundary=boundary, config=config)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > config["MAX_BODY_SIZE"]:
                raise PayloadTooLarge(f"request body over {config['MAX_BODY_SIZE']} bytes")
            parser.write(chunk)
        parser.finalize()
    except FormParserError as error:
        raise InvalidRequest(f"malformed multipart body: {error}") from None
    return _form_fields(files, values)


def _form_fields(files: list[Any], values: dict[str, bytes]) -> tuple[bytes, str | None, dict[str, Any]]:
    """The ``file`` part (an upload, or a plain part when the client sent no filename) and the rest."""
    others = sorted(f.field_name.decode("utf-8", "replace") for f in files if f.field_name != b"file")
    uploads = [f for f in files if f.field_name == b"file"]
    if others or len(uploads) + ("file" in values) != 1:
        raise ValidationFailed(f"file: send exactly one part named 'file' with the document (other file parts: {others})")
    if uploads:
        uploads[0].file_object.seek(0)
        data, name = uploads[0].file_object.read(), uploads[0].file_name
        uploads[0].close()
    else:
        data, name = values.pop("file"), None
    fields = {key: _form_value(key, raw.decode("utf-8", "replace")) for key, raw in values.items()}
    return data, name.decode("utf-8", "replace") if name else None, fields


def _form_value(name: str, text: str) -> Any:
    return _json_part(name, text) if name in JSON_PARTS else text


def _json_part(name: str, text: str) -> Any:
    if name == "query" and text.strip() == "*":
        return "*"
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValidationFailed(f"{name}: not valid JSON ({error.msg} at character {error.pos})") from None
    except RecursionError:
        raise ValidationFailed(f"{name}: not valid JSON (nested too deeply)") from None
    except ValueError as error:  # a number of more than 4,300 digits
        raise ValidationFailed(f"{name}: not valid JSON ({error})") from None
