"""The ``documents`` specialist: a document's pages (its PDF text layer, else OCR by the ``ocr``
agent it uses, one call per page, all at once) turned into validated fields, text lines or
tables, with a rules engine on the CPU or an LLM agent as the engine."""

from __future__ import annotations

import base64
import hashlib
import io
import time
from dataclasses import replace
from typing import Any, ClassVar, Iterator, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from actors.documents.extraction import check_llm_answer, classify_pages, llm_messages, run_mode
from actors.documents.model import Page
from actors.documents.pages import count_pages, decode_pages, page_documents, sniff_media_type, text_layers
from actors.documents.schema import Query, compile_query
from actors.invocation import Document, Invocation, StreamItem
from actors.specialists.base import Specialist, package_version
from actors.specialists.ocr import OcrSpecialist
from cluster.config import DocumentLimits
from cluster.errors import ValidationFailed

MAX_PAGE_TYPES = 20


class DocumentsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limits: DocumentLimits = Field(default_factory=DocumentLimits, description="Bytes, pages, pixels and time per document; set from limits.documents.")
    ocr_agent: str = Field("ocr", description="The agent (in this agent's 'uses') that reads pages; without it OCR runs in this replica.")
    ocr: dict[str, Any] = Field(default_factory=dict, description="Params of the in-replica OCR, used only when no OCR agent is connected.")
    llm_agent: str | None = Field(None, description="The LLM agent (in 'uses') that engine 'llm' asks; None turns that engine off.")
    llm_page_image: bool = Field(True, description="Engine 'llm': send each scanned page's image beside its OCR text.")
    llm_image_side: int = Field(1600, ge=256, le=8192, description="Engine 'llm': longest side, in pixels, of the page image sent.")


class DocumentsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: dict[str, Any] | Literal["*"] = Field(
        "*", description="Fields wanted: a schema by example, a JSON Schema, or '*' for every key-value pair found."
    )
    mode: Literal["fields", "text", "table"] = Field("fields", description="fields (validated JSON), text (lines with boxes) or table.")
    engine: Literal["rules", "llm"] = Field("rules", description="rules: layout-aware extraction on the CPU; llm: the configured LLM agent.")
    pages: list[int] | None = Field(None, min_length=1, description="1-based pages to read; default all.")
    page_type: list[str] | None = Field(
        None, min_length=1, max_length=MAX_PAGE_TYPES, description="Classify each page as one of these types (e.g. invoice, receipt, bank statement)."
    )
    dayfirst: bool = Field(True, description="Read an ambiguous date such as 03/04/2024 day first (3 April); false reads it month first.")


class DocumentsSpecialist(Specialist):
    kind: ClassVar[str] = "documents"
    Params = DocumentsParams
    Options = DocumentsOptions
    reads_documents: ClassVar[bool] = True

    def _load(self) -> None:
        self._ocr = None if self._ocr_connected() else OcrSpecialist({**self.params.ocr, "limits": self.params.limits.model_dump()})
        if self._ocr is not None:
            self._ocr.load()
        self._embedder = None

    def _ocr_connected(self) -> bool:
        return self.peers is not None and self.params.ocr_agent in self.peers

    def _model_name(self) -> str:
        ocr = f"agent {self.params.ocr_agent}" if self._ocr_connected() else "in-replica OCR"
        return f"baton layout rules ({package_version('jsonschema')}, {package_version('rapidfuzz')}); pages by {ocr}"

    def _predict(self, texts: list[str], options: list[Any]) -> list[dict]:
        raise ValidationFailed("the documents agent reads a document; send a file (POST /v1/extract)")

    def signals(self, output: dict) -> tuple[str | None, float | None]:
        confidences = [c for r in output["results"] for c in (r.get("confidence") or {}).values() if c is not None]
        kinds = [r["page_type"]["label"] for r in output["results"] if r.get("page_type")]
        return (kinds[0] if kinds else None), (sum(confidences) / len(confidences) if confidences else None)

    def stream(self, invocation: Invocation) -> Iterator[StreamItem]:
        document = self._document(invocation)
        options = self.validate_options(invocation.options)
        query = compile_query(options.query) if options.mode == "fields" else None
        self.load()
        total = count_pages(document, self.params.limits)
        # pages.py refuses a page the document lacks, naming it.
        numbers = list(dict.fromkeys(options.pages)) if options.pages else list(range(1, total + 1))
        pages = self._read_pages(document, numbers, invocation)
        if options.engine == "llm" and query is not None:
            results = self._llm_fields(pages, query, invocation)
        else:
            results = run_mode(pages, query, options.mode, {"dayfirst": options.dayfirst}, embed=self._embed)
        if options.page_type:
            for result, kind in zip(results, classify_pages(pages, options.page_type, self._embed)):
                result["page_type"] = kind
        output = {
            "pages": total,
            "results": results,
            "text": "\n\n".join(page.text for page in pages),
            "source": {
                "sha256": hashlib.sha256(document.data).hexdigest(),
                "filename": document.filename,
                "media_type": sniff_media_type(document.data),
                "pages": total,
                "read": [{"page": p.number, "source": p.source} for p in pages],
            },
        }
        yield self.result(output)

    @staticmethod
    def _document(invocation: Invocation) -> Document:
        if invocation.document is None:
            raise ValidationFailed("the documents agent reads a document; send a file (POST /v1/extract)")
        return invocation.document

    def _read_pages(self, document: Document, numbers: list[int], invocation: Invocation) -> list[Page]:
        """Text-layer pages as they are; the others through OCR, in this replica or, when the
        ocr agent is connected, one call per page (carrying only that page where it can), all at once."""
        if self._ocr is not None:
            return [self._ocr.read_page(image) for image in decode_pages(document, self.params.limits, numbers)]
        read = text_layers(document, self.params.limits, numbers)
        scanned = [n for n in numbers if read[n] is None]
        parts = page_documents(document, self.params.limits, scanned) if scanned else {}
        deadline = self._page_deadline(invocation)
        calls = [
            (self.params.ocr_agent, invocation.derive(document=part, options={"pages": [number_in_part]}, deadline=deadline, stream=False))
            for part, number_in_part in (parts[n] for n in scanned)
        ]
        for number, called in zip(scanned, self.peers.invoke_all(calls) if calls else []):
            if not called.ok:
                raise called.error
            [read[number]] = [replace(Page.from_dict(page), number=number) for page in called.result.output["pages"]]
        return [read[n] for n in numbers]

    def _page_deadline(self, invocation: Invocation) -> float:
        page_deadline = time.time() + self.params.limits.page_timeout_s
        return page_deadline if invocation.deadline is None else min(page_deadline, invocation.deadline)

    def _llm_fields(self, pages: list[Page], query: Query, invocation: Invocation) -> list[dict]:
        agent = self.params.llm_agent
        if agent is None or self.peers is None or agent not in self.peers:
            raise ValidationFailed("options.engine: 'llm' needs an LLM agent in this documents agent's params.llm_agent and uses")
        document = invocation.document
        calls = [
            (agent, invocation.derive(messages=tuple(with_page_image(llm_messages(page, query), document, page, self.params)), options={}, stream=False))
            for page in pages
        ]
        results = []
        for page, called in zip(pages, self.peers.invoke_all(calls)):
            if not called.ok:
                raise called.error
            results.append(check_llm_answer(called.result.output.get("text", ""), page, query))
        return results

    def _embed(self, texts: list[str]):
        if self._embedder is None:
            from actors.embedding import Embedder

            self._embedder = Embedder()
        return self._embedder(texts)


def with_page_image(messages: list[dict], document: Document, page: Page, params: DocumentsParams) -> list[dict]:
    """The messages with the scanned page's image beside its OCR text, as an OpenAI image part
    (providers that read images get it; text-only ones drop it). A text-layer page has none."""
    if page.source != "ocr" or not params.llm_page_image:
        return messages
    [image] = decode_pages(document, params.limits, [page.number])
    if image.pixels is None:
        return messages
    picture = Image.fromarray(image.pixels)
    picture.thumbnail((params.llm_image_side, params.llm_image_side))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    *before, last = messages
    return [*before, {"role": last["role"], "content": [{"type": "text", "text": last["content"]}, {"type": "image_url", "image_url": {"url": url}}]}]
