"""A PDF's structure checked from its raw bytes before PDFium opens it: its compressed streams
must not expand past DocumentLimits (a zip bomb inside a PDF), and its page tree must neither
loop nor claim more pages than allowed. What this scan cannot follow is left to PDFium."""

from __future__ import annotations

import base64
import binascii
import itertools
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from cluster.config import DocumentLimits
from cluster.errors import PayloadTooLarge, ValidationFailed

OBJECT = re.compile(rb"(\d{1,10})\s+\d{1,5}\s+obj\b")
REFERENCE = re.compile(rb"(\d{1,10})\s+\d{1,5}\s+R\b")
# The keyword that ends a stream's dictionary and starts its data (after one end of line).
STREAM = re.compile(rb">>\s*stream[ \t]*(?:\r\n|\n|\r)?")
LENGTH = re.compile(rb"/Length\s+(\d{1,12})(\s+\d{1,5}\s+R)?")
FILTER = re.compile(rb"/Filter\s*(\[[^\]]*\]|/[^\s/\[\]<>()]+)")
NAME = re.compile(rb"/([^\s/\[\]<>()]+)")
CONTENTS = re.compile(rb"/Contents\s*(\[[^\]]*\]|\d{1,10}\s+\d{1,5}\s+R)")
ROOT = re.compile(rb"/Root\s+(\d{1,10})\s+\d{1,5}\s+R")
PAGES = re.compile(rb"/Pages\s+(\d{1,10})\s+\d{1,5}\s+R")
KIDS = re.compile(rb"/Kids\s*(\[[^\]]*\]|\d{1,10}\s+\d{1,5}\s+R)")
COUNT = re.compile(rb"/Count\s+(\d{1,20})")
OBJECT_STREAM = re.compile(rb"/Type\s*/ObjStm")
FIRST = re.compile(rb"/First\s+(\d{1,10})")
PACKED = re.compile(rb"/N\s+(\d{1,10})")
INTEGER = re.compile(rb"\d{1,10}")
SPACE = re.compile(rb"[ \t\r\n\f\x00]*")
FORM = re.compile(rb"/Subtype\s*/Form")
FLATE, HEX, A85 = {b"FlateDecode", b"Fl"}, {b"ASCIIHexDecode", b"AHx"}, {b"ASCII85Decode", b"A85"}
CHUNK = 1 << 20
# Bounds on the scan's own work, not on the file: past them the scan stops looking (PDFium
# decides), it never refuses. Page tree nodes visited (a few objects that share children
# describe billions of paths); objects unpacked from one object stream, and its largest size
# kept to unpack (real ones hold a few hundred objects in well under a megabyte).
MAX_TREE_NODES = 100_000
MAX_PACKED = 100_000
MAX_OBJECT_STREAM_BYTES = 32 * 1024 * 1024


@dataclass
class _Scan:
    """What the scan found: object bodies (stream data left out; the last definition wins),
    each stream's expanded size, and how often each object is referred to."""

    bodies: dict[int, bytes] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)
    forms: set[int] = field(default_factory=set)
    references: Counter = field(default_factory=Counter)
    roots: list[int] = field(default_factory=list)
    inflated: int = 0


def check_pdf(data: bytes, limits: DocumentLimits) -> None:
    """Refuse a PDF whose streams or page content expand too far (413), whose page tree loops
    (422), or whose page tree claims more pages than ``limits.max_pages`` (413)."""
    scan = _scan(data, limits)
    _check_content(scan, limits)
    _check_page_tree(scan, limits)


def _scan(data: bytes, limits: DocumentLimits) -> _Scan:
    scan, position = _Scan(), 0
    while (match := OBJECT.search(data, position)) is not None:
        _note_roots(scan, data[position:match.start()])
        position = _read_object(scan, data, int(match.group(1)), match.end(), limits)
    _note_roots(scan, data[position:])
    return scan


def _note_roots(scan: _Scan, between: bytes) -> None:
    """A classic trailer between objects names the catalog."""
    trailer = between.rfind(b"trailer")
    if trailer != -1 and (root := ROOT.search(between, trailer)) is not None:
        scan.roots.append(int(root.group(1)))


def _read_object(scan: _Scan, data: bytes, number: int, start: int, limits: DocumentLimits) -> int:
    """Record one ``N G obj ... endobj``; returns where the scan goes on."""
    end = data.find(b"endobj", start)
    end = len(data) if end == -1 else end
    stream = STREAM.search(data, start, end)
    if stream is None:
        _add_body(scan, number, data[start:end])
        return end + len(b"endobj")
    dictionary = data[start:stream.start() + 2]
    raw, after = _stream_data(data, dictionary, stream.end())
    _add_body(scan, number, dictionary)
    _add_stream(scan, number, dictionary, raw, limits)
    return after


def _stream_data(data: bytes, dictionary: bytes, start: int) -> tuple[bytes, int]:
    """The stream's bytes, as PDFium finds them: /Length when ``endstream`` follows it, else up
    to the next ``endstream``; and the position after it."""
    length = LENGTH.search(dictionary)
    if length is not None and length.group(2) is None:
        end = start + int(length.group(1))
        keyword = SPACE.match(data, min(end, len(data))).end()
        if data.startswith(b"endstream", keyword):
            return data[start:end], keyword + len(b"endstream")
    end = data.find(b"endstream", start)
    if end == -1:
        return data[start:], len(data)
    return data[start:end], end + len(b"endstream")


def _add_body(scan: _Scan, number: int, body: bytes) -> None:
    scan.bodies[number] = body
    scan.references.update(int(ref) for ref in REFERENCE.findall(body))
    if b"/XRef" in body and (root := ROOT.search(body)) is not None:
        scan.roots.append(int(root.group(1)))


def _add_stream(scan: _Scan, number: int, dictionary: bytes, raw: bytes, limits: DocumentLimits) -> None:
    keep = OBJECT_STREAM.search(dictionary) is not None
    kept: list[bytes] = []
    size = 0
    for chunk in _decoded(raw, _filters(dictionary)):
        size += len(chunk)
        scan.inflated += len(chunk)
        if size > limits.max_pdf_stream_bytes:
            raise PayloadTooLarge(
                f"document: the PDF's object {number} expands to more than {limits.max_pdf_stream_bytes:,} bytes; "
                f"that is the limit for one stream"
            )
        if scan.inflated > limits.max_pdf_inflated_bytes:
            raise _too_much(limits)
        keep = keep and size <= MAX_OBJECT_STREAM_BYTES
        if keep:
            kept.append(chunk)
    scan.sizes[number] = size
    if FORM.search(dictionary) is not None:
        scan.forms.add(number)
    if keep:
        _add_object_stream(scan, dictionary, b"".join(kept))


def _too_much(limits: DocumentLimits) -> PayloadTooLarge:
    return PayloadTooLarge(f"document: the PDF's compressed streams expand to more than {limits.max_pdf_inflated_bytes:,} bytes in all")


def _filters(dictionary: bytes) -> list[bytes]:
    found = FILTER.search(dictionary)
    return NAME.findall(found.group(1)) if found is not None else []


def _decoded(raw: bytes, filters: list[bytes]) -> Iterator[bytes]:
    """The stream through its filters as far as they only change the encoding: ASCII filters
    first, then any number of Flate layers; an image codec ends the chain (it decodes only
    when a page is rendered, within the page's pixel limit)."""
    chunks: Iterable[bytes] = [raw]
    for index, name in enumerate(filters):
        if name in FLATE:
            chunks = _inflate(chunks)
        elif index == 0 and name in HEX | A85:
            chunks = [_ascii_decoded(raw, name)]
        else:
            break
    return iter(chunks)


def _ascii_decoded(raw: bytes, name: bytes) -> bytes:
    text = raw.translate(None, b" \t\r\n\f\x00")
    try:
        if name in HEX:
            text = text.split(b">")[0]
            return binascii.unhexlify(text + b"0" * (len(text) % 2))
        return base64.a85decode(text.split(b"~>")[0])
    except ValueError:
        return b""


def _inflate(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Inflated output a chunk at a time, so measuring a bomb never holds it in memory."""
    inflater = zlib.decompressobj()
    try:
        for chunk in chunks:
            while chunk and not inflater.eof:
                out = inflater.decompress(chunk, CHUNK)
                chunk = inflater.unconsumed_tail
                if out:
                    yield out
        yield inflater.flush()
    except zlib.error:
        return  # damaged data: PDFium keeps what inflated before the damage, and so does the count


def _add_object_stream(scan: _Scan, dictionary: bytes, decoded: bytes) -> None:
    """The objects packed in an object stream: a header of number/offset pairs, then bodies."""
    first, packed = FIRST.search(dictionary), PACKED.search(dictionary)
    if first is None or packed is None:
        return
    start = int(first.group(1))
    header = itertools.islice(INTEGER.finditer(decoded, 0, start), 2 * min(int(packed.group(1)), MAX_PACKED))
    numbers = [int(match.group()) for match in header]
    pairs = list(zip(numbers[::2], numbers[1::2]))
    ends = [offset for _, offset in pairs[1:]] + [len(decoded) - start]
    for (number, offset), end in zip(pairs, ends):
        _add_body(scan, number, decoded[start + offset:start + end])


def _check_content(scan: _Scan, limits: DocumentLimits) -> None:
    """PDFium parses a page's content each time a page is loaded, and a form's each time it is
    used: content shared by many pages or forms costs once per use, however small the file."""
    parsed = sum(scan.sizes.get(number, 0) for body in scan.bodies.values() for number in _contents(scan, body))
    parsed += sum(scan.sizes[number] * max(1, scan.references[number]) for number in scan.forms)
    if parsed > limits.max_pdf_content_bytes:
        raise PayloadTooLarge(
            f"document: the PDF's pages expand to {parsed:,} bytes of content to parse; the limit is {limits.max_pdf_content_bytes:,}"
        )


def _contents(scan: _Scan, body: bytes) -> list[int]:
    found = CONTENTS.search(body)
    return [] if found is None else _refs(scan, found.group(1))


def _refs(scan: _Scan, value: bytes) -> list[int]:
    """The objects an array (direct, or one indirect reference to an array) refers to."""
    numbers = [int(n) for n in REFERENCE.findall(value)]
    if value.startswith(b"[") or len(numbers) != 1 or numbers[0] in scan.sizes:
        return numbers
    target = scan.bodies.get(numbers[0], b"").lstrip()
    return [int(n) for n in REFERENCE.findall(target)] if target.startswith(b"[") else numbers


def _check_page_tree(scan: _Scan, limits: DocumentLimits) -> None:
    top = _top_pages(scan)
    if top is None:
        return
    claimed = COUNT.search(scan.bodies[top])
    if claimed is not None and int(claimed.group(1)) > limits.max_pages:
        raise PayloadTooLarge(f"document: the PDF claims {int(claimed.group(1))} pages; the limit is {limits.max_pages} pages")
    kids = _kids(scan, top)
    if kids is not None:
        _walk(scan, top, kids, limits)


def _top_pages(scan: _Scan) -> int | None:
    """The page tree's root, from the catalog the latest trailer names."""
    catalog = scan.bodies.get(scan.roots[-1]) if scan.roots else None
    found = PAGES.search(catalog) if catalog is not None else None
    top = int(found.group(1)) if found is not None else None
    return top if top in scan.bodies else None


def _walk(scan: _Scan, top: int, kids: list[int], limits: DocumentLimits) -> None:
    """Depth first with the path kept: a node among its own ancestors is a loop."""
    stack, path, pages, seen = [(top, iter(kids))], {top}, 0, 0
    while stack and pages <= limits.max_pages and seen < MAX_TREE_NODES:
        node, kids = stack[-1]
        kid = next(kids, None)
        if kid is None:
            path.discard(node)
            stack.pop()
            continue
        if kid in path:
            raise ValidationFailed(f"document: the PDF's page tree loops: object {node} lists object {kid}, its own ancestor, among its pages")
        seen += 1
        grandchildren = _kids(scan, kid) if kid in scan.bodies else None
        if grandchildren is None:
            pages += 1
        else:
            stack.append((kid, iter(grandchildren)))
            path.add(kid)


def _kids(scan: _Scan, node: int) -> list[int] | None:
    """A page tree node's children; None for a page (or an object the scan did not find)."""
    found = KIDS.search(scan.bodies.get(node, b""))
    return None if found is None else _refs(scan, found.group(1))
