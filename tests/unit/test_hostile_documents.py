"""Hostile documents against the parsers, without Ray: bombs, truncated and polyglot files and
PDFs with looping or lying page trees are refused with their 4xx before anything expands, at
each entry point the agents use; odd but valid files are still read."""

from __future__ import annotations

import base64
import zlib

import pytest

from actors.documents.pages import count_pages, decode_pages, sniff_media_type
from actors.documents.pdf_guard import check_pdf
from actors.invocation import Document
from cluster.config import DocumentLimits
from cluster.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from tests.unit import hostile_inputs as hostile

LIMITS = DocumentLimits()

# (name, file, error, fragment of the message, refused already by count_pages, before any page is decoded)
REFUSED = [
    ("png pixel bomb", hostile.pixel_bomb_png, PayloadTooLarge, "100000×100000", False),
    ("png text chunk bomb", hostile.text_chunk_bomb_png, PayloadTooLarge, "expands too far", True),
    ("tiff pixel bomb", lambda: hostile.tiff(60_000, 60_000), PayloadTooLarge, "60000×60000", False),
    ("tiff of 200,000 frames", lambda: hostile.tiff(1, 1, 200_000), PayloadTooLarge, "more than 50 pages", True),
    ("jpeg scan bomb", hostile.jpeg_scan_bomb, PayloadTooLarge, "2000 scans; the limit is 64", True),
    ("gzip bomb", hostile.gzip_bomb, UnsupportedMediaType, "gzip", True),
    ("truncated png", lambda: hostile.truncated(hostile.encoded(hostile.noise(), "PNG")), ValidationFailed, "truncated", False),
    ("truncated jpeg", lambda: hostile.truncated(hostile.encoded(hostile.noise(), "JPEG")), ValidationFailed, "truncated", False),
    ("truncated pdf", lambda: hostile.truncated(hostile.one_page_pdf()), ValidationFailed, "corrupt", True),
    ("pdf + zip polyglot", hostile.pdf_zip_polyglot, UnsupportedMediaType, "both a PDF and a zip archive", True),
    ("jpeg + pdf polyglot", hostile.jpeg_pdf_polyglot, UnsupportedMediaType, "both a JPEG image and a PDF", True),
    ("zip holding a pdf", lambda: hostile.zip_archive("a.pdf", hostile.one_page_pdf()), UnsupportedMediaType, "zip archive", True),
    ("pdf page tree listing itself", hostile.pdf_kids_self, ValidationFailed, "object 2 lists object 2, its own ancestor", True),
    ("pdf page tree listing an ancestor", hostile.pdf_kids_ancestor, ValidationFailed, "object 3 lists object 2, its own ancestor", True),
    ("pdf claiming a million pages", lambda: hostile.pdf_claiming_pages(1_000_000), PayloadTooLarge, "claims 1000000 pages", True),
    ("pdf claiming 2e9 pages", lambda: hostile.pdf_claiming_pages(2_000_000_000), PayloadTooLarge, "the limit is 50 pages", True),
    ("pdf flate bomb", hostile.pdf_flate_bomb, PayloadTooLarge, "object 4 expands to more than 268,435,456 bytes", True),
    ("pdf content used many times", hostile.pdf_shared_content, PayloadTooLarge, "167,772,160 bytes of content", True),
]


@pytest.mark.parametrize("name, make, error, fragment, before_decoding", REFUSED, ids=[case[0] for case in REFUSED])
def test_hostile_documents_are_refused_with_their_4xx(name, make, error, fragment, before_decoding):
    document = Document(make(), "application/octet-stream", name)
    entries = [count_pages, decode_pages] if before_decoding else [decode_pages]
    for entry in entries:
        with pytest.raises(error) as caught:
            entry(document, LIMITS)
        assert fragment in caught.value.message
        assert 400 <= caught.value.status < 500


def test_all_streams_together_have_a_limit_too():
    three_streams = hostile.pdf([hostile.CATALOG, b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", hostile.page(),
                                 *[hostile.stream(hostile.zeros_deflated(4), b"/Filter /FlateDecode")] * 3])
    with pytest.raises(PayloadTooLarge, match="expand to more than 8,388,608 bytes in all"):
        check_pdf(three_streams, DocumentLimits(max_pdf_inflated_bytes=8 * hostile.MEGABYTE))


def test_a_flate_bomb_under_ascii85_and_a_second_flate_layer_is_measured_whole():
    doubled = base64.a85encode(zlib.compress(hostile.zeros_deflated(300))) + b"~>"
    bomb = hostile.pdf([hostile.CATALOG, b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", hostile.page(),
                        hostile.stream(doubled, b"/Filter [/ASCII85Decode /FlateDecode /FlateDecode]")])
    with pytest.raises(PayloadTooLarge, match="object 4 expands"):
        check_pdf(bomb, LIMITS)


def test_a_loop_inside_an_object_stream_is_found_through_the_cross_reference_stream():
    node = b"<< /Type /Pages /Kids [3 0 R 2 0 R] /Count 1 >> "
    header = b"2 0 3 %d " % len(node)
    packed, first = header + node + hostile.page(), len(header)
    body = (
        b"%PDF-1.7\n1 0 obj\n" + hostile.CATALOG + b"\nendobj\n"
        + b"5 0 obj\n" + hostile.stream(zlib.compress(packed), b"/Type /ObjStm /N 2 /First %d /Filter /FlateDecode" % first)
        + b"\nendobj\n6 0 obj\n" + hostile.stream(b"\x00" * 4, b"/Type /XRef /Size 7 /Root 1 0 R /W [1 2 1]") + b"\nendobj\n"
    )
    with pytest.raises(ValidationFailed, match="object 2 lists object 2"):
        check_pdf(body, LIMITS)


@pytest.mark.parametrize(
    "data",
    [b"From: scanner@example.com\r\n\r\n" + hostile.one_page_pdf(), hostile.one_page_pdf()],
    ids=["mailer junk before the header", "plain"],
)
def test_a_pdf_with_junk_before_its_header_is_still_a_pdf(data):
    assert sniff_media_type(data) == "application/pdf"
    assert count_pages(Document(data, "application/pdf"), LIMITS) == 1


def test_rows_beyond_the_declared_size_are_never_decoded():
    [page] = decode_pages(Document(hostile.oversized_rows_png(), "image/png"), LIMITS)
    assert (page.width, page.height) == (10, 10)


def test_an_ordinary_progressive_jpeg_and_a_fifty_frame_tiff_are_read():
    progressive = hostile.encoded(hostile.noise((64, 64)), "JPEG", progressive=True)
    assert count_pages(Document(progressive, "image/jpeg"), LIMITS) == 1
    assert count_pages(Document(hostile.tiff(2, 2, 50), "image/tiff"), LIMITS) == 50


def test_content_shared_within_the_limits_is_read():
    shared = hostile.pdf_shared_content(megabytes=1, uses=3)
    assert [p.number for p in decode_pages(Document(shared, "application/pdf"), LIMITS)] == [1]
