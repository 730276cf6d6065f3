"""Hostile inputs, built in memory: decompression and pixel bombs, truncated and polyglot files,
PDFs with looping or lying page trees, and text that is long, deep, broken or unusual. The
unit tests feed them to the parsers, the integration tests to the running service."""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib

from PIL import Image

MEGABYTE = 1 << 20
ZWJ_FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"
EMOJI = ("\U0001f600", "\U0001f44d\U0001f3fd", ZWJ_FAMILY, "\U0001f1eb\U0001f1f7", "\u2764\ufe0f", "\U0001f3f3\ufe0f\u200d\U0001f308")
# Latin, Arabic (right to left), CJK, Devanagari with zero-width joiners, and bidi overrides.
MIXED_SCRIPTS = "Invoice مرحبا بالعالم 你好世界 नमस्ते क्\u200dष \u202egnp.exe\u202c Zoë "


# ---- images ----


def encoded(image: Image.Image, format: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **save)
    return buffer.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, idat: bytes, extra: bytes = b"") -> bytes:
    """An 8-bit greyscale PNG claiming width × height, with the given compressed rows."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + extra + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def pixel_bomb_png(side: int = 100_000) -> bytes:
    """Seventy bytes that claim side² pixels: the header check must refuse it."""
    return png(side, side, zlib.compress(b"\x00" * 64))


def text_chunk_bomb_png(megabytes: int = 64) -> bytes:
    """A 10×10 PNG whose compressed text chunk expands to megabytes of zeros."""
    return png(10, 10, zlib.compress(b"\x00" * 110), extra=_png_chunk(b"zTXt", b"Comment\x00\x00" + zeros_deflated(megabytes)))


def oversized_rows_png(megabytes: int = 64) -> bytes:
    """A 10×10 PNG whose rows inflate to megabytes: only the declared rows may be read."""
    return png(10, 10, zeros_deflated(megabytes))


def noise(size: tuple[int, int] = (300, 300)) -> Image.Image:
    return Image.effect_noise(size, 50).convert("RGB")


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def jpeg_scan_bomb(scans: int = 2000, side: int = 1000) -> bytes:
    """A small progressive JPEG with its last scan repeated: each scan re-decodes the image."""
    data = encoded(Image.new("RGB", (side, side), "white"), "JPEG", progressive=True, quality=50)
    segments = _jpeg_segments(data)
    own = [s for s in segments if s[1] == 0xDA]
    return data[:2] + b"".join(segments[:-1]) + own[-1] * (scans - len(own)) + segments[-1]


def _jpeg_segments(data: bytes) -> list[bytes]:
    """The segments after SOI; a scan segment includes its entropy-coded data."""
    segments, position = [], 2
    while data[position + 1] != 0xD9:
        end = position + 2 + int.from_bytes(data[position + 2:position + 4], "big")
        if data[position + 1] == 0xDA:
            end = _marker_after(data, end)
        segments.append(data[position:end])
        position = end
    return [*segments, data[position:position + 2]]


def _marker_after(data: bytes, position: int) -> int:
    while True:
        position = data.index(b"\xff", position)
        if data[position + 1] == 0 or 0xD0 <= data[position + 1] <= 0xD7:  # stuffed byte or restart marker
            position += 2
            continue
        return position


def tiff(width: int, height: int, frames: int = 1) -> bytes:
    """A little-endian TIFF of ``frames`` 8-bit grey frames claiming width × height, all sharing
    one byte of strip data: 200,000 frames fit in 20 MB."""
    entries_per_frame = 8
    frame_size = 2 + 12 * entries_per_frame + 4
    strip = 8 + frames * frame_size
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    for index in range(frames):
        following = 8 + (index + 1) * frame_size if index + 1 < frames else 0
        entries = ((256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
                   (273, 4, 1, strip), (278, 4, 1, height), (279, 4, 1, 1))
        out += struct.pack("<H", entries_per_frame) + b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", following)
    return bytes(out) + b"\x00"


# ---- archives and compression ----


def zeros_deflated(megabytes: int) -> bytes:
    """A zlib stream of megabytes of zeros, built without compressing them all: after a full
    flush each megabyte compresses to the same block, so the block is repeated."""
    compressor, block = zlib.compressobj(9), bytes(MEGABYTE)
    head = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    checksum = 1
    for _ in range(megabytes):
        checksum = zlib.adler32(block, checksum)
    end = compressor.flush()[:-4] + struct.pack(">I", checksum)
    return head + repeated * (megabytes - 1) + end


def gzip_bomb(megabytes: int = 100) -> bytes:
    return gzip.compress(bytes(megabytes * MEGABYTE), compresslevel=1)


def zip_archive(name: str = "word/document.xml", content: bytes = b"<w:document/>") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, content)
    return buffer.getvalue()


# ---- PDF ----


def pdf(objects: list[bytes], root: int = 1) -> bytes:
    """A PDF of the given object bodies (numbered from 1) with a correct cross-reference table."""
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % offset for offset in offsets))
    out.write(b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, root, xref))
    return out.getvalue()


def stream(data: bytes, entries: bytes = b"") -> bytes:
    return b"<< /Length %d %s >>\nstream\n%s\nendstream" % (len(data), entries, data)


CATALOG = b"<< /Type /Catalog /Pages 2 0 R >>"


def page(parent: int = 2, extra: bytes = b"") -> bytes:
    return b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 200 200] %s >>" % (parent, extra)


def one_page_pdf() -> bytes:
    return pdf([CATALOG, b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", page()])


def pdf_kids_self() -> bytes:
    """The page tree's root lists itself among its kids."""
    return pdf([CATALOG, b"<< /Type /Pages /Kids [3 0 R 2 0 R] /Count 1 >>", page()])


def pdf_kids_ancestor() -> bytes:
    """An intermediate node lists the root, its parent, among its kids."""
    return pdf([CATALOG, b"<< /Type /Pages /Kids [3 0 R] /Count 2 >>",
                b"<< /Type /Pages /Parent 2 0 R /Kids [4 0 R 2 0 R] /Count 2 >>", page(parent=3)])


def pdf_claiming_pages(count: int) -> bytes:
    return pdf([CATALOG, b"<< /Type /Pages /Kids [3 0 R] /Count %d >>" % count, page()])


def pdf_flate_bomb(megabytes: int = 300) -> bytes:
    """One page whose content stream inflates to megabytes of zeros."""
    return pdf([CATALOG, b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", page(extra=b"/Contents 4 0 R"),
                stream(zeros_deflated(megabytes), b"/Filter /FlateDecode")])


def pdf_shared_content(megabytes: int = 16, uses: int = 10) -> bytes:
    """A content stream under every per-stream limit that one page lists ``uses`` times."""
    contents = b"/Contents [" + b" ".join([b"4 0 R"] * uses) + b"]"
    return pdf([CATALOG, b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", page(extra=contents),
                stream(zeros_deflated(megabytes), b"/Filter /FlateDecode")])


def pdf_zip_polyglot() -> bytes:
    """A PDF with a zip archive appended: PDF readers and zip readers both open it."""
    return one_page_pdf() + zip_archive()


def jpeg_pdf_polyglot() -> bytes:
    """A JPEG with a PDF appended: image viewers show the JPEG, PDF readers find the PDF."""
    return encoded(Image.new("RGB", (16, 16), "white"), "JPEG") + one_page_pdf()


# ---- text ----


def emoji(count: int) -> str:
    """``count`` code points of emoji, ZWJ sequences, flags and skin tones among them."""
    cycle = "".join(EMOJI)
    return (cycle * (count // len(cycle) + 1))[:count]


def mixed_scripts(count: int) -> str:
    return (MIXED_SCRIPTS * (count // len(MIXED_SCRIPTS) + 1))[:count]


def control_characters(count: int) -> str:
    """Every C0 control character, NUL included, and DEL, between words."""
    controls = "".join(map(chr, range(32))) + "\x7f"
    return (("word" + controls) * (count // (len(controls) + 4) + 1))[:count]


def nested_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth
