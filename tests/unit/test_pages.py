"""Decoding documents into pages: each supported format, the limits (checked before decoding),
and broken or hostile files, which must fail as 413/415/422 with a message naming the problem."""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib

import numpy as np
import pypdfium2 as pdfium
import pytest
from fpdf import FPDF
from PIL import Image

from actors.documents.model import Line
from actors.documents.pages import count_pages, decode_pages, page_documents, reading_order, sniff_media_type
from actors.invocation import Document
from cluster.config import DocumentLimits
from cluster.errors import BatonError, PayloadTooLarge, UnsupportedMediaType, ValidationFailed

LIMITS = DocumentLimits()
A4_AT_200_DPI = (1654, 2339)  # 210 × 297 mm


def encoded(image: Image.Image, format: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **save)
    return buffer.getvalue()


def document(data: bytes, media_type: str = "application/octet-stream") -> Document:
    return Document(data=data, media_type=media_type, filename="upload")


def text_pdf() -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=14)
    pdf.cell(0, 10, "INVOICE 2024-0117 from Acme Trading", new_x="LMARGIN", new_y="NEXT")
    pdf.cell(60, 10, "Total")
    pdf.cell(0, 10, "60.30", align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.cell(0, 10, "Thank you for your business")
    return bytes(pdf.output())


def image_pdf(pages: int = 1) -> bytes:
    pdf = FPDF()
    for _ in range(pages):
        pdf.add_page()
        pdf.image(Image.new("RGB", (200, 100), (200, 30, 30)), x=20, y=20, w=100)
    return bytes(pdf.output())


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width × height but carries one compressed row: the size check
    must refuse it from the header, long before the rows would be decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    row = zlib.compress(b"\x00" * (1 + width // 8))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b"")


def refused(data: bytes, error: type[BatonError], *fragments: str, limits: DocumentLimits = LIMITS) -> None:
    with pytest.raises(error) as caught:
        decode_pages(document(data), limits)
    for fragment in fragments:
        assert fragment in caught.value.message
    assert caught.value.status == error.status


# ---- formats ----


def test_png_is_one_rgb_page_with_transparency_on_white():
    image = Image.new("RGBA", (30, 20), (0, 0, 0, 0))
    image.putpixel((5, 5), (0, 0, 255, 255))
    [page] = decode_pages(document(encoded(image, "PNG"), "image/png"), LIMITS)
    assert (page.number, page.width, page.height) == (1, 30, 20)
    assert page.pixels.shape == (20, 30, 3) and page.pixels.dtype == np.uint8
    assert page.pixels[0, 0].tolist() == [255, 255, 255]
    assert page.pixels[5, 5].tolist() == [0, 0, 255]


def test_jpeg_is_turned_upright_by_its_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    data = encoded(Image.new("RGB", (40, 20), "white"), "JPEG", exif=exif)
    [page] = decode_pages(document(data, "image/jpeg"), LIMITS)
    assert (page.width, page.height) == (20, 40)
    assert page.pixels.shape == (40, 20, 3)


def test_tiff_pages_are_its_frames_and_can_be_chosen():
    frames = [Image.new("L", (10 + i, 20), 60 * i) for i in range(3)]
    data = encoded(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    assert count_pages(document(data), LIMITS) == 3
    pages = decode_pages(document(data, "image/tiff"), LIMITS)
    assert [(p.number, p.width) for p in pages] == [(1, 10), (2, 11), (3, 12)]
    assert pages[2].pixels[0, 0].tolist() == [120, 120, 120]
    [second] = decode_pages(document(data), LIMITS, pages=[2])
    assert (second.number, second.width) == (2, 11)


def test_sixteen_bit_tiff_is_stretched_not_clipped_to_white():
    values = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    data = encoded(Image.fromarray(values), "TIFF")
    [page] = decode_pages(document(data), LIMITS)
    assert page.pixels[:, :, 0].tolist() == [[0, 63], [127, 255]]


def test_pdf_text_layer_becomes_lines_with_boxes_without_rendering():
    [page] = decode_pages(document(text_pdf(), "application/pdf"), LIMITS)
    assert page.pixels is None
    layer = page.text_layer
    assert layer.source == "text_layer" and (layer.width, layer.height) == A4_AT_200_DPI
    assert [line.text for line in layer.lines] == ["INVOICE 2024-0117 from Acme Trading", "Total", "60.30", "Thank you for your business"]
    heading, label, amount, thanks = layer.lines
    # fpdf's default 10 mm margin at 200 dpi is 79 px; each cell is 10 mm (79 px) high.
    assert 79 < heading.box[0] < 100 and 79 < heading.box[1] < heading.box[3] < 158
    assert heading.box[3] < label.box[1] and label.box[3] < thanks.box[1]
    assert abs(label.box[1] - amount.box[1]) < 5 and amount.box[0] > 1000 and amount.box[2] < A4_AT_200_DPI[0]
    assert [word.text for word in heading.words] == ["INVOICE", "2024-0117", "from", "Acme", "Trading"]
    assert all(a.box[2] <= b.box[0] for a, b in zip(heading.words, heading.words[1:]))


def test_pdf_text_layer_boxes_cover_the_rendered_ink():
    data = text_pdf()
    [page] = decode_pages(document(data), LIMITS)
    pdf = pdfium.PdfDocument(data)
    try:
        ink = np.asarray(pdf[0].render(scale=LIMITS.pdf_dpi / 72).to_pil().convert("L")) < 128
    finally:
        pdf.close()
    inside = np.zeros_like(ink)
    for line in page.text_layer.lines:
        x0, y0, x1, y1 = (round(v) for v in line.box)
        inside[max(y0 - 2, 0) : y1 + 2, max(x0 - 2, 0) : x1 + 2] = True
    assert ink.sum() > 1000 and (ink & ~inside).sum() == 0


def test_pdf_without_text_is_rendered_at_the_configured_dpi():
    [page] = decode_pages(document(image_pdf()), LIMITS)
    assert page.text_layer is None
    assert page.pixels.shape == (A4_AT_200_DPI[1], A4_AT_200_DPI[0], 3)
    assert page.pixels[0, 0].tolist() == [255, 255, 255]
    red = page.pixels[300, 500]  # inside the image placed at 20 mm, 100 mm wide
    assert red[0] > 150 and red[1] < 80


def striped_pdf(pages: int) -> bytes:
    """A scanned-looking PDF whose page n carries an image n stripes wide (told apart once rendered)."""
    pdf = FPDF()
    for n in range(1, pages + 1):
        pdf.add_page()
        picture = Image.new("RGB", (300, 100), "white")
        picture.paste((0, 0, 0), (0, 0, 20 * n, 100))
        pdf.image(picture, x=0, y=0, w=150)
    return bytes(pdf.output())


def test_each_page_of_a_multi_page_pdf_goes_to_ocr_as_a_pdf_of_its_own():
    whole = document(striped_pdf(3))
    parts = page_documents(whole, LIMITS, [3, 1])
    assert sorted(parts) == [1, 3]
    for number, (part, number_in_part) in parts.items():
        assert number_in_part == 1 and part.media_type == "application/pdf" and part.filename == "upload"
        assert count_pages(part, LIMITS) == 1 and len(part.data) < len(whole.data)
        [cut] = decode_pages(part, LIMITS)
        [original] = decode_pages(whole, LIMITS, [number])
        assert np.array_equal(cut.pixels, original.pixels)  # the same page, rendered alike


def test_images_and_one_page_pdfs_go_to_ocr_as_they_are():
    tiff = document(encoded(Image.new("RGB", (40, 30), "white"), "TIFF", save_all=True, append_images=[Image.new("RGB", (40, 30))]))
    assert page_documents(tiff, LIMITS, [2]) == {2: (tiff, 2)}
    single = document(image_pdf(1))
    assert page_documents(single, LIMITS, [1]) == {1: (single, 1)}
    with pytest.raises(ValidationFailed, match="no page 4"):
        page_documents(document(image_pdf(3)), LIMITS, [4])


def test_declared_type_is_ignored_for_the_magic_bytes():
    assert sniff_media_type(text_pdf()) == "application/pdf"
    prefixed = b"junk from a mailer\r\n" + text_pdf()
    assert sniff_media_type(prefixed) == "application/pdf"
    assert decode_pages(document(prefixed), LIMITS)[0].text_layer.lines[1].text == "Total"
    assert sniff_media_type(encoded(Image.new("RGB", (2, 2)), "PNG")) == "image/png"
    assert sniff_media_type(encoded(Image.new("RGB", (2, 2)), "JPEG")) == "image/jpeg"
    [page] = decode_pages(Document(encoded(Image.new("RGB", (4, 3)), "PNG"), "application/pdf", "scan.pdf"), LIMITS)
    assert (page.width, page.height) == (4, 3)


# ---- limits ----


def test_a_pixel_bomb_is_refused_from_its_header():
    refused(png_header_only(20_000, 20_000), PayloadTooLarge, "page 1 is 20000×20000 = 400 Mpx", "the limit is 40 Mpx")


def test_a_pixel_bomb_above_pils_own_limit_is_ours_to_refuse():
    # 30000² is over PIL's 179 Mpx DecompressionBombError; the configured limit still decides.
    refused(png_header_only(30_000, 30_000), PayloadTooLarge, "30000×30000 = 900 Mpx")


def test_a_pdf_page_too_large_to_render_is_refused_before_rendering():
    limits = DocumentLimits(pdf_dpi=600, max_pixels_per_page=20_000_000)
    refused(image_pdf(), PayloadTooLarge, "page 1 is 4961×7016", "the limit is 20 Mpx", limits=limits)


def test_too_many_pages_names_the_count_and_the_limit():
    limits = DocumentLimits(max_pages=2)
    refused(image_pdf(pages=3), PayloadTooLarge, "3 pages", "the limit is 2 pages", limits=limits)
    with pytest.raises(PayloadTooLarge):
        count_pages(document(image_pdf(pages=3)), limits)


def test_too_many_bytes_names_the_size_and_the_limit():
    refused(text_pdf(), PayloadTooLarge, "bytes; the limit is 100 bytes", limits=DocumentLimits(max_bytes=100))


def test_a_page_that_does_not_exist_is_named():
    with pytest.raises(ValidationFailed, match="the document has 1 page; no page 4"):
        decode_pages(document(text_pdf()), LIMITS, pages=[1, 4])


# ---- broken and hostile files ----


def test_empty_file():
    refused(b"", ValidationFailed, "the file is empty")


def test_a_zip_renamed_pdf_is_unsupported_and_named():
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("word/document.xml", "<w:document/>")
    refused(archive.getvalue(), UnsupportedMediaType, "zip archive", "application/pdf", "image/png")


def test_unknown_bytes_are_unsupported():
    refused(b"hello, plain text", UnsupportedMediaType, "unknown type", "image/tiff")
    refused(encoded(Image.new("RGB", (2, 2)), "GIF"), UnsupportedMediaType, "GIF image")


def test_truncated_jpeg():
    data = encoded(Image.effect_noise((200, 200), 50).convert("RGB"), "JPEG")
    refused(data[: len(data) // 2], ValidationFailed, "corrupt", "truncated")


def test_truncated_png():
    data = encoded(Image.effect_noise((200, 200), 50), "PNG")
    refused(data[: len(data) // 2], ValidationFailed, "corrupt")


def test_truncated_pdf_and_garbled_pdf():
    data = text_pdf()
    refused(data[: len(data) * 6 // 10], ValidationFailed, "corrupt", "PDFium")
    garbled = data[:9] + random.Random(7).randbytes(len(data) - 9)
    refused(garbled, ValidationFailed, "corrupt")


@pytest.mark.filterwarnings("ignore:Tag data larger than file")
@pytest.mark.parametrize(
    "make",
    [
        lambda: encoded(Image.effect_noise((64, 48), 40), "PNG"),
        lambda: encoded(Image.effect_noise((64, 48), 40).convert("RGB"), "JPEG"),
        lambda: encoded(Image.new("RGB", (30, 20)), "TIFF"),
        text_pdf,
    ],
    ids=["png", "jpeg", "tiff", "pdf"],
)
def test_mutated_files_fail_only_with_baton_errors(make):
    original = make()
    rng = random.Random(len(original))
    for _ in range(40):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(8, len(data))] = rng.randrange(256)
        cut = rng.choice([len(data), rng.randrange(16, len(data))])
        try:
            decode_pages(document(bytes(data[:cut])), LIMITS)
        except BatonError:
            pass


# ---- reading order ----


def line(text: str, x0: float, y0: float, x1: float, y1: float) -> Line:
    return Line(text=text, box=(x0, y0, x1, y1), score=1.0)


def test_reading_order_is_rows_top_to_bottom_then_left_to_right():
    shuffled = [
        line("60.30", 320, 101, 380, 121),
        line("THANK YOU", 100, 200, 260, 222),
        line("TOTAL", 20, 99, 90, 120),
        line("SHOP NAME", 80, 10, 300, 32),
        line("RM", 250, 100, 280, 119),
    ]
    assert [l.text for l in reading_order(shuffled)] == ["SHOP NAME", "TOTAL", "RM", "60.30", "THANK YOU"]


def test_reading_order_keeps_close_rows_apart():
    # A slightly slanted scan: consecutive rows touch but overlap less than half their height.
    rows = [line("second", 10, 118, 200, 142), line("first", 10, 100, 200, 124)]
    assert [l.text for l in reading_order(rows)] == ["first", "second"]


def test_reading_order_follows_the_slope_of_a_tilted_scan():
    # Receipt 017 of SROIE, its top curled uphill: each box overlaps the next row's by half.
    tilted = [
        line("KLANG SELANGOR D.E, MALAYSIA", 162, 395, 654, 473),
        line("BANDAR BUKIT RAJA, 41050", 199, 366, 619, 439),
        line("No: 28, JALAN ASTANA 1C,", 205, 336, 603, 402),
        line("RM", 660, 400, 700, 440),  # short, right of KLANG and as high as its tilt puts it there
    ]
    in_order = ["No: 28, JALAN ASTANA 1C,", "BANDAR BUKIT RAJA, 41050", "KLANG SELANGOR D.E, MALAYSIA", "RM"]
    assert [l.text for l in reading_order(tilted, [-0.045, -0.05, -0.045, -0.045])] == in_order
    assert [l.text for l in reading_order(tilted)] != in_order
