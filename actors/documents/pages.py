"""Untrusted document bytes (PNG, JPEG, TIFF, PDF) to pages within DocumentLimits: sizes are
checked from headers before anything is decoded, and every failure is a BatonError."""

from __future__ import annotations

import io
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image, ImageOps, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

from actors.documents.model import Box, Line, Page, PageImage, Word
from actors.documents.pdf_guard import check_pdf
from actors.invocation import Document
from cluster.config import DocumentLimits
from cluster.errors import BatonError, PayloadTooLarge, UnsupportedMediaType, ValidationFailed

PNG, JPEG, TIFF, PDF = "image/png", "image/jpeg", "image/tiff", "application/pdf"
SUPPORTED = (PDF, PNG, JPEG, TIFF)
_NAMES = {PDF: "a PDF", PNG: "a PNG image", JPEG: "a JPEG image", TIFF: "a TIFF image"}
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", PNG),
    (b"\xff\xd8\xff", JPEG),
    (b"II*\x00", TIFF),
    (b"MM\x00*", TIFF),
)
# Formats people send by mistake, named in the 415 so they know what they sent.
_KNOWN_UNSUPPORTED = (
    (b"PK\x03\x04", "a zip archive (docx, xlsx and odt files are zips)"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"\xd0\xcf\x11\xe0", "a legacy Office file (doc, xls)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"{\\rtf", "an RTF document"),
    (b"<", "HTML or XML text"),
)
# The format's own class, not Image.open: Image.open applies PIL's global pixel limit, which
# would pre-empt the configured one with a different number; ours is checked per page instead.
_PIL_CLASSES = {PNG: PngImagePlugin.PngImageFile, JPEG: JpegImagePlugin.JpegImageFile, TIFF: TiffImagePlugin.TiffImageFile}
# A zip's end record (22 bytes and a comment of up to 64 KiB) closes the archive.
ZIP_TAIL = 22 + 0xFFFF
# Fewer non-space characters than this and a PDF page is a scan with stray text: OCR it.
MIN_TEXT_LAYER_CHARS = 20
POINTS_PER_INCH = 72
# A horizontal gap wider than this many text heights separates columns, not words.
COLUMN_GAP = 2.0

T = TypeVar("T")


def sniff_media_type(data: bytes) -> str:
    """The document's media type from its magic bytes; the declared type is not trusted, and a
    file that is also another format (a polyglot) is refused rather than read as one of them."""
    if not data:
        raise ValidationFailed("document: the file is empty")
    media_type = _magic_type(data)
    other = _also(data, media_type)
    if other is not None:
        raise UnsupportedMediaType(f"document: the file is both {_NAMES[media_type]} and {other}; send one document of one type")
    return media_type


def _magic_type(data: bytes) -> str:
    for magic, media_type in _SIGNATURES:
        if data.startswith(magic):
            return media_type
    if data[8:12] == b"WEBP" and data.startswith(b"RIFF"):
        raise _unsupported("a WebP image")
    if data[4:8] == b"ftyp":
        raise _unsupported("an HEIC/MP4-family file")
    # Another format's magic at byte 0 wins over a PDF header further on: that file is a polyglot.
    _refuse_known(data)
    # Readers accept a PDF header anywhere in the first kilobyte; some mailers prepend junk.
    if b"%PDF-" in data[:1024]:
        return PDF
    _refuse_known(data.lstrip())
    raise _unsupported("a file of unknown type")


def _refuse_known(data: bytes) -> None:
    for magic, name in _KNOWN_UNSUPPORTED:
        if data.startswith(magic):
            raise _unsupported(name)


def _also(data: bytes, media_type: str) -> str | None:
    """Another format the file holds besides its own: a PDF inside an image (PDF readers find
    the header anywhere), or a zip archive at the end (zip readers start from the end)."""
    if media_type != PDF and b"%PDF-" in data:
        return "a PDF"
    return "a zip archive" if _ends_in_zip(data) else None


def _ends_in_zip(data: bytes) -> bool:
    """Whether a zip's end record sits in the last 64 KiB, its central directory where it says."""
    start = max(0, len(data) - ZIP_TAIL)
    end = len(data)
    while (record := data.rfind(b"PK\x05\x06", start, end)) != -1:
        directory_size = int.from_bytes(data[record + 12:record + 16], "little")
        directory = record - directory_size
        if len(data) - record >= 22 and directory >= 0 and data.startswith(b"PK\x01\x02" if directory_size else b"PK\x05\x06", directory):
            return True
        end = record
    return False


def _unsupported(what: str) -> UnsupportedMediaType:
    return UnsupportedMediaType(f"document: the file is {what}; supported types: {', '.join(SUPPORTED)}")


def count_pages(document: Document, limits: DocumentLimits) -> int:
    """How many pages the document has; refuses what the limits forbid like decode_pages."""
    media_type = _checked_media_type(document, limits)
    opener = _open_pdf if media_type == PDF else _open_image
    with _as_validation_failure(), opener(document.data, media_type) as opened:
        return _checked_page_count(_page_count(opened, limits), limits)


def decode_pages(document: Document, limits: DocumentLimits, pages: Sequence[int] | None = None) -> list[PageImage]:
    """The chosen pages (1-based; None for all) decoded within the limits."""
    return list(iter_pages(document, limits, pages))


def iter_pages(document: Document, limits: DocumentLimits, pages: Sequence[int] | None = None) -> Iterator[PageImage]:
    """decode_pages one page at a time, so a long document never holds all its pixels at once."""
    media_type = _checked_media_type(document, limits)
    opener, decode = (_open_pdf, _pdf_page) if media_type == PDF else (_open_image, _image_page)
    with _as_validation_failure(), opener(document.data, media_type) as opened:
        count = _checked_page_count(_page_count(opened, limits), limits)
        for number in _chosen(pages, count):
            yield decode(opened, number, limits)


def text_layers(document: Document, limits: DocumentLimits, pages: Sequence[int] | None = None) -> dict[int, Page | None]:
    """Each chosen page's PDF text layer, or None where the page needs OCR; nothing is rendered,
    so a caller can send only the scanned pages to OCR. Images have no text layer."""
    media_type = _checked_media_type(document, limits)
    with _as_validation_failure(), (_open_pdf if media_type == PDF else _open_image)(document.data, media_type) as opened:
        count = _checked_page_count(_page_count(opened, limits), limits)
        if media_type != PDF:
            return {number: None for number in _chosen(pages, count)}
        return {number: _pdf_text_layer(opened, number, limits) for number in _chosen(pages, count)}


def page_documents(document: Document, limits: DocumentLimits, pages: Sequence[int]) -> dict[int, tuple[Document, int]]:
    """Each chosen page as a document to send to OCR elsewhere, with its number there. A PDF of
    several pages is cut into one-page PDFs, without rendering (a scan keeps its image as it
    is), so each OCR call carries its own page's bytes rather than the whole file again.
    Images go as they are: cutting a TIFF frame out would decode and re-encode it."""
    media_type = _checked_media_type(document, limits)
    if media_type != PDF:
        return {number: (document, number) for number in pages}
    with _as_validation_failure(), _open_pdf(document.data, media_type) as pdf:
        count = _checked_page_count(_page_count(pdf, limits), limits)
        if count == 1:
            return {number: (document, number) for number in _chosen(pages, count)}
        return {number: (Document(_one_page_pdf(pdf, number), PDF, document.filename), 1) for number in _chosen(pages, count)}


def _one_page_pdf(pdf: pdfium.PdfDocument, number: int) -> bytes:
    with _closing(pdfium.PdfDocument.new()) as part:
        part.import_pages(pdf, [number - 1])
        buffer = io.BytesIO()
        part.save(buffer)
    return buffer.getvalue()


def _pdf_text_layer(pdf: pdfium.PdfDocument, number: int, limits: DocumentLimits) -> Page | None:
    with _closing(pdf[number - 1]) as page:
        return _text_layer(page, number, limits.pdf_dpi / POINTS_PER_INCH) if page.get_rotation() == 0 else None


def _checked_media_type(document: Document, limits: DocumentLimits) -> str:
    size = len(document.data)
    if size > limits.max_bytes:
        raise PayloadTooLarge(f"document: the file is {size:,} bytes; the limit is {limits.max_bytes:,} bytes")
    media_type = sniff_media_type(document.data)
    if media_type == JPEG:
        _check_scans(document.data, limits)
    elif media_type == PDF:
        check_pdf(document.data, limits)
    return media_type


def _check_scans(data: bytes, limits: DocumentLimits) -> None:
    # Each scan starts with an SOS marker, which entropy-coded data never contains (it stuffs
    # 0xFF bytes); a thumbnail's scans count too, which the limit's margin allows for.
    scans = data.count(b"\xff\xda")
    if scans > limits.max_jpeg_scans:
        raise PayloadTooLarge(f"document: the JPEG has {scans} scans; the limit is {limits.max_jpeg_scans}")


def _checked_page_count(count: int, limits: DocumentLimits) -> int:
    if count < 1:
        raise ValidationFailed("document: the file has no pages")
    if count > limits.max_pages:
        raise PayloadTooLarge(f"document: the file has {_pages(count)}; the limit is {_pages(limits.max_pages)}")
    return count


def _pages(count: int) -> str:
    return f"{count} page" if count == 1 else f"{count} pages"


def _chosen(pages: Sequence[int] | None, count: int) -> list[int]:
    if pages is None:
        return list(range(1, count + 1))
    missing = [number for number in pages if not 1 <= number <= count]
    if missing:
        raise ValidationFailed(f"pages: the document has {_pages(count)}; no page {', '.join(map(str, missing))}")
    return list(dict.fromkeys(pages))


# Decoders of untrusted bytes fail with a zoo of types (OSError, SyntaxError, ValueError,
# struct.error, EOFError, PdfiumError...); every one means "this file is broken".
@contextmanager
def _as_validation_failure() -> Iterator[None]:
    try:
        yield
    except BatonError:
        raise
    # PIL still guards a TIFF's tile size with its own limit.
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise PayloadTooLarge(f"document: the image is too large to decode ({error})") from None
    except Exception as error:
        # PIL's own cap on a PNG's compressed text and ICC chunks: a decompression bomb, not damage.
        if isinstance(error, ValueError) and str(error).startswith("Decompressed data too large"):
            raise PayloadTooLarge(f"document: a compressed chunk of the image expands too far ({error})") from None
        raise ValidationFailed(f"document: the file is corrupt or unreadable ({type(error).__name__}: {error})") from None


def _check_pixels(number: int, width: float, height: float, limits: DocumentLimits) -> None:
    pixels = width * height
    if pixels > limits.max_pixels_per_page:
        raise PayloadTooLarge(
            f"page {number} is {round(width)}×{round(height)} = {_megapixels(pixels)} Mpx; "
            f"the limit is {_megapixels(limits.max_pixels_per_page)} Mpx"
        )


def _megapixels(pixels: float) -> str:
    return f"{pixels / 1e6:.3g}"


# ---- images (PNG, JPEG, TIFF) ----


@contextmanager
def _open_image(data: bytes, media_type: str) -> Iterator[Image.Image]:
    # Opening reads the header only; the pixels are decoded by load() after the size check, and
    # a truncated file fails there as long as PIL's LOAD_TRUNCATED_IMAGES stays False.
    with _PIL_CLASSES[media_type](io.BytesIO(data)) as image:
        yield image


def _page_count(opened: Image.Image | pdfium.PdfDocument, limits: DocumentLimits) -> int:
    if isinstance(opened, pdfium.PdfDocument):
        return len(opened)
    # A PNG or JPEG is one page even when it carries animation frames.
    return _tiff_frames(opened, limits.max_pages) if opened.format == "TIFF" else 1


def _tiff_frames(image: Image.Image, limit: int) -> int:
    """The frames, counted only up to the limit: PIL's n_frames walks every frame, in time
    quadratic in their number, which a small file of 200,000 empty frames makes minutes."""
    for frame in range(1, limit + 1):
        try:
            image.seek(frame)
        except EOFError:
            image.seek(0)
            return frame
    raise PayloadTooLarge(f"document: the file has more than {_pages(limit)}; the limit is {_pages(limit)}")


def _image_page(image: Image.Image, number: int, limits: DocumentLimits) -> PageImage:
    image.seek(number - 1)
    _check_pixels(number, *image.size, limits)
    image.load()
    upright = ImageOps.exif_transpose(image) if image.format == "JPEG" else image
    pixels = _rgb_array(upright)
    return PageImage(number=number, width=pixels.shape[1], height=pixels.shape[0], pixels=pixels)


def _rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode.startswith("I") or image.mode == "F":
        image = _eight_bit(image)
    if image.has_transparency_data:
        # Transparent areas become white paper, not the black their RGB values often hold.
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _eight_bit(image: Image.Image) -> Image.Image:
    # 16-bit and float scans: stretch to 0..255 rather than let convert() clip them to white.
    values = np.asarray(image, dtype=np.float64)
    top = values.max() if values.size else 0.0
    scaled = values * (255.0 / top) if top > 0 else values
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")


# ---- PDF ----


@contextmanager
def _open_pdf(data: bytes, media_type: str) -> Iterator[pdfium.PdfDocument]:
    pdf = pdfium.PdfDocument(data)
    try:
        yield pdf
    finally:
        pdf.close()


@contextmanager
def _closing(resource: T) -> Iterator[T]:
    try:
        yield resource
    finally:
        resource.close()


def _pdf_page(pdf: pdfium.PdfDocument, number: int, limits: DocumentLimits) -> PageImage:
    with _closing(pdf[number - 1]) as page:
        scale = limits.pdf_dpi / POINTS_PER_INCH
        width, height = (math.ceil(side * scale) for side in page.get_size())
        _check_pixels(number, width, height, limits)
        # Rotated pages are left to OCR: their text-layer coordinates would need the rotation applied.
        text_layer = _text_layer(page, number, scale) if page.get_rotation() == 0 else None
        if text_layer is not None:
            return PageImage(number=number, width=text_layer.width, height=text_layer.height, text_layer=text_layer)
        pixels = _render(page, scale)
        return PageImage(number=number, width=pixels.shape[1], height=pixels.shape[0], pixels=pixels)


def _render(page: pdfium.PdfPage, scale: float) -> np.ndarray:
    with _closing(page.render(scale=scale, rev_byteorder=True, fill_color=(255, 255, 255, 255))) as bitmap:
        pixels = np.array(bitmap.to_numpy(), dtype=np.uint8)  # a copy: the bitmap's buffer dies with it
    return pixels[:, :, :3] if pixels.ndim == 3 else np.repeat(pixels[:, :, None], 3, axis=2)


def _text_layer(page: pdfium.PdfPage, number: int, scale: float) -> Page | None:
    with _closing(page.get_textpage()) as textpage:
        chars = _chars(textpage)
    if sum(not char.isspace() for char, _ in chars) < MIN_TEXT_LAYER_CHARS:
        return None
    left, bottom, right, top = page.get_bbox()

    def to_pixels(box: Box) -> Box:
        x0, y0, x1, y1 = box
        return ((x0 - left) * scale, (top - y1) * scale, (x1 - left) * scale, (top - y0) * scale)

    segments = [_line(run) for words in _segments(chars, to_pixels) for run in _split_at_gaps(words)]
    width, height = math.ceil((right - left) * scale), math.ceil((top - bottom) * scale)
    return Page(number=number, width=width, height=height, lines=reading_order(segments), source="text_layer")


def _chars(textpage: pdfium.PdfTextPage) -> list[tuple[str, Box | None]]:
    """Every character with its PDF-space box; None marks a separator: a space, a line break,
    a character pdfium inserted or a control code (pdfium marks hyphenation with one)."""
    chars = []
    for index in range(textpage.count_chars()):
        char = chr(pdfium_c.FPDFText_GetUnicode(textpage, index))
        visible = char.isprintable() and not char.isspace() and pdfium_c.FPDFText_IsGenerated(textpage, index) != 1
        chars.append((char, _charbox(textpage, index) if visible else None))
    return chars


def _charbox(textpage: pdfium.PdfTextPage, index: int) -> Box | None:
    try:
        return textpage.get_charbox(index)
    except pdfium.PdfiumError:  # a glyph without geometry separates words rather than failing the page
        return None


def _segments(chars: list[tuple[str, Box | None]], to_pixels: Callable[[Box], Box]) -> list[list[Word]]:
    """pdfium's text lines (split at its line breaks) as words (split at spaces)."""
    segments: list[list[Word]] = [[]]
    letters: list[str] = []
    boxes: list[Box] = []
    for char, box in [*chars, ("\n", None)]:
        if box is not None:
            letters.append(char)
            boxes.append(to_pixels(box))
            continue
        if letters:
            segments[-1].append(Word(text="".join(letters), box=union_box(boxes), score=1.0))
            letters, boxes = [], []
        if char in "\r\n" and segments[-1]:
            segments.append([])
    return [words for words in segments if words]


# pdfium joins a receipt's label and its far-right amount into one line; OCR sees two
# detections there, and a text layer should read the same way.
def _split_at_gaps(words: list[Word]) -> list[list[Word]]:
    ordered = sorted(words, key=lambda word: word.box[0])
    runs = [[ordered[0]]]
    for previous, word in zip(ordered, ordered[1:]):
        height = max(previous.box[3] - previous.box[1], word.box[3] - word.box[1])
        if word.box[0] - previous.box[2] > COLUMN_GAP * height:
            runs.append([])
        runs[-1].append(word)
    return runs


def _line(words: list[Word]) -> Line:
    return Line(text=" ".join(word.text for word in words), box=union_box([w.box for w in words]), score=1.0, words=tuple(words))


def union_box(boxes: Sequence[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


# ---- reading order, shared with OCR ----

# Two lines share a printed row when they overlap vertically by this share of the shorter
# one. OCR boxes are padded well beyond the ink, so neighbouring rows overlap by up to ~40%.
ROW_OVERLAP = 0.6


@dataclass(frozen=True)
class _Level:
    """A line placed on its own centre line ``y = middle + slope × (x − centre)``."""

    line: Line
    centre: float
    middle: float
    slope: float
    height: float

    def y_at(self, x: float) -> float:
        return self.middle + self.slope * (x - self.centre)


def reading_order(lines: Sequence[Line], slopes: Sequence[float] | None = None) -> list[Line]:
    """Lines grouped into printed rows (rows top to bottom, each row left to right).

    ``slopes`` are the lines' text slopes (dy/dx; level when omitted). On a tilted or curled
    scan neighbouring rows' boxes overlap, so a line is compared with each row along the
    row's own slope rather than by its box.
    """
    levels = [_level(line, slope) for line, slope in zip(lines, slopes or [0.0] * len(lines))]
    rows: list[list[_Level]] = []
    for level in sorted(levels, key=lambda level: level.middle):
        row = next((row for row in reversed(rows) if _joins(level, _guide(row))), None)
        if row is None:
            rows.append([level])
        else:
            row.append(level)
    across = sum(level.centre for level in levels) / len(levels) if levels else 0.0
    rows.sort(key=lambda row: _guide(row).y_at(across))
    return [level.line for row in rows for level in sorted(row, key=lambda level: level.line.box[0])]


def _level(line: Line, slope: float) -> _Level:
    x0, y0, x1, y1 = line.box
    # A tilted line's box is taller than its text by |slope| × its width; the floor keeps
    # a slope that is too steep from shrinking the line to nothing.
    height = max(y1 - y0 - abs(slope) * (x1 - x0), 0.3 * (y1 - y0))
    return _Level(line=line, centre=(x0 + x1) / 2, middle=(y0 + y1) / 2, slope=slope, height=height)


def _guide(row: list[_Level]) -> _Level:
    # The widest member's slope is the row's most reliable one.
    return max(row, key=lambda level: level.line.box[2] - level.line.box[0])


def _joins(level: _Level, guide: _Level) -> bool:
    expected = guide.y_at(level.centre)
    top = max(level.middle - level.height / 2, expected - guide.height / 2)
    bottom = min(level.middle + level.height / 2, expected + guide.height / 2)
    return bottom - top >= ROW_OVERLAP * min(level.height, guide.height)
