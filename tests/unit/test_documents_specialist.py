"""The documents specialist without Ray: pages go to the ``ocr`` agent it uses, one call per
page, all at once; a PDF's text layer needs no OCR call; the LLM engine's answer is checked
against the OCR text. The ocr and LLM agents here are test doubles reached through Peers."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from PIL import Image

from actors.dispatcher import Dispatcher
from actors.documents.model import Line, Page, Word
from actors.invocation import Document, Failure, Invocation, Result, drain
from actors.peers import Peers
from actors.specialists.documents import DocumentsSpecialist
from actors.traffic import TrafficTable
from cluster.errors import BatonError, Unavailable

RECEIPT_ROWS = [
    ("KEDAI MAJU TRADING SDN BHD", 40, 20),
    ("12, JALAN MERDEKA, 50000 KUALA LUMPUR", 40, 60),
    ("Date: 25/12/2018", 40, 120),
    ("TOTAL", 40, 300),
    ("RM 9.00", 300, 300),
]


def receipt_lines() -> list[Line]:
    lines = []
    for text, x, y in RECEIPT_ROWS:
        box = (float(x), float(y), float(x + 9 * len(text)), float(y + 20))
        lines.append(Line(text=text, box=box, score=0.99, words=(Word(text, box, 0.99),)))
    return lines


class OcrDouble:
    """Test double for the ocr agent: answers each page with the same receipt lines after a
    short wait, and records which pages it was asked for and how many calls ran at once."""

    streams = False

    def __init__(self, fail: BatonError | None = None):
        self.fail, self.pages, self.documents, self.active, self.peak = fail, [], [], 0, 0

    async def call(self, invocation: Invocation):
        self.pages.append(invocation.options["pages"])
        self.documents.append(invocation.document)
        self.active += 1
        self.peak = max(self.peak, self.active)
        await asyncio.sleep(0.05)
        self.active -= 1
        if self.fail is not None:
            return Failure(self.fail)
        page = Page(number=invocation.options["pages"][0], width=600, height=400, lines=receipt_lines())
        return Result(output={"pages": [page.to_dict()]})

    async def stream(self, invocation):
        yield await self.call(invocation)


class LlmDouble:
    """Test double for an LLM agent: replies with a fixed text and keeps the messages it got."""

    streams = False

    def __init__(self, reply: str):
        self.reply, self.messages = reply, []

    async def call(self, invocation: Invocation):
        self.messages.append(invocation.messages)
        return Result(output={"text": self.reply})

    async def stream(self, invocation):
        yield await self.call(invocation)


def specialist_with(ocr: OcrDouble, llm: LlmDouble | None = None) -> DocumentsSpecialist:
    targets = {"ocr": {"v1": ocr}, **({"writer": {"v1": llm}} if llm else {})}
    traffic = TrafficTable({name: {"weights": {"v1": 100}, "sticky": False} for name in targets})
    specialist = DocumentsSpecialist({"llm_agent": "writer" if llm else None})
    specialist.connect(Peers(Dispatcher(targets, traffic, default_timeout_s=10)))
    specialist.load()
    return specialist


def tiff(pages: int) -> Document:
    frames = [Image.new("RGB", (60, 40), "white") for _ in range(pages)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="TIFF", save_all=True, append_images=frames[1:])
    return Document(buffer.getvalue(), "image/tiff", "scan.tif")


def text_pdf() -> Document:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    pdf.add_page()
    for text in ("KEDAI MAJU TRADING SDN BHD", "Invoice Date: 25/12/2018", "Total Amount Due: RM 9.00"):
        pdf.cell(0, 10, text, new_x="LMARGIN", new_y="NEXT")
    return Document(bytes(pdf.output()), "application/pdf", "invoice.pdf")


def run(specialist: DocumentsSpecialist, document: Document, **options) -> dict:
    return drain(specialist.stream(Invocation(document=document, options=options))).output


QUERY = {"company": "str", "date": "date", "total": 0.0}


def test_every_page_goes_to_the_ocr_agent_at_once():
    ocr = OcrDouble()
    output = run(specialist_with(ocr), tiff(3), query=QUERY)
    assert sorted(ocr.pages) == [[1], [2], [3]] and ocr.peak == 3
    assert output["pages"] == 3 and [r["page"] for r in output["results"]] == [1, 2, 3]
    fields = output["results"][0]["fields"]
    assert fields == {"company": "KEDAI MAJU TRADING SDN BHD", "date": "2018-12-25", "total": 9.0}
    assert output["source"]["media_type"] == "image/tiff" and output["source"]["read"][0] == {"page": 1, "source": "ocr"}
    assert "TOTAL" in output["text"]


def scanned_pdf(pages: int) -> Document:
    from fpdf import FPDF

    pdf = FPDF()
    for _ in range(pages):
        pdf.add_page()
        pdf.image(Image.new("RGB", (300, 200), "white"), x=10, y=10, w=150)
    return Document(bytes(pdf.output()), "application/pdf", "scan.pdf")


def test_each_scanned_pdf_page_travels_alone_and_keeps_its_number():
    ocr, whole = OcrDouble(), scanned_pdf(3)
    output = run(specialist_with(ocr), whole, query=QUERY, pages=[3, 2])
    assert ocr.pages == [[1], [1]]  # page 1 of a one-page PDF each
    assert all(len(sent.data) < len(whole.data) for sent in ocr.documents)
    assert [r["page"] for r in output["results"]] == [3, 2]
    assert output["source"]["read"] == [{"page": 3, "source": "ocr"}, {"page": 2, "source": "ocr"}]


def test_only_the_asked_pages_are_read():
    ocr = OcrDouble()
    output = run(specialist_with(ocr), tiff(3), query=QUERY, pages=[2])
    assert ocr.pages == [[2]] and [r["page"] for r in output["results"]] == [2] and output["pages"] == 3
    with pytest.raises(BatonError, match="no page 4"):
        run(specialist_with(OcrDouble()), tiff(3), pages=[4])


def test_a_pdf_text_layer_needs_no_ocr_call():
    ocr = OcrDouble()
    output = run(specialist_with(ocr), text_pdf(), query=QUERY)
    assert ocr.pages == []
    assert output["source"]["read"] == [{"page": 1, "source": "text_layer"}]
    assert output["results"][0]["fields"]["date"] == "2018-12-25"
    assert output["results"][0]["fields"]["total"] == 9.0


def test_an_ocr_failure_is_the_requests_error():
    with pytest.raises(Unavailable):
        run(specialist_with(OcrDouble(fail=Unavailable("ocr is down", retry_after_s=2))), tiff(1), query=QUERY)


def test_the_llm_engine_is_validated_and_flags_what_the_page_does_not_hold():
    llm = LlmDouble(json.dumps({"company": "INVENTED HOLDINGS", "date": "25/12/2018", "total": "9.00"}))
    output = run(specialist_with(OcrDouble(), llm), tiff(1), query=QUERY, engine="llm")
    [result] = output["results"]
    assert result["fields"]["date"] == "2018-12-25" and result["fields"]["total"] == 9.0
    assert result["unverified"] == ["company"]
    # The LLM saw the page's OCR text, the schema and the scanned page itself.
    prompt = json.dumps(llm.messages[0])
    assert "RM 9.00" in prompt and "total" in prompt
    text_part, image_part = llm.messages[0][-1]["content"]
    assert text_part["type"] == "text" and image_part["image_url"]["url"].startswith("data:image/jpeg;base64,")


def test_the_llm_engine_needs_an_llm_agent():
    with pytest.raises(BatonError, match="llm") as caught:
        run(specialist_with(OcrDouble()), tiff(1), query=QUERY, engine="llm")
    assert caught.value.status == 422


@pytest.mark.parametrize(
    "options, mentions",
    [({"mode": "poem"}, "mode"), ({"query": {"total": "money"}}, "total"), ({"surprise": 1}, "surprise"), ({"pages": []}, "pages")],
)
def test_bad_options_are_422_naming_the_option(options, mentions):
    with pytest.raises(BatonError, match=mentions) as caught:
        run(specialist_with(OcrDouble()), tiff(1), **options)
    assert caught.value.status == 422


def test_text_input_is_refused():
    specialist = specialist_with(OcrDouble())
    with pytest.raises(BatonError, match="document") as caught:
        drain(specialist.stream(Invocation(text="TOTAL 9.00")))
    assert caught.value.status == 422
