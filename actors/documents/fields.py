"""Layout-aware field extraction over OCR'd pages: a label (synonyms, fuzzy match) is paired with
the typed value to its right on the same row or below it; company and address come from the
letterhead. Nothing is invented: a field not found is null."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from rapidfuzz import fuzz, process

from actors.documents.model import Box, Line, Page
from actors.documents.schema import FieldSpec, Query, validate
from actors.documents.tables import extract_items, group_rows, is_header_row, split_line, union_box
from actors.documents.values import find_amounts, find_dates, parse_boolean, parse_integer

LABEL_MATCH = 80  # rapidfuzz ratio (0-100) a printed label needs against a synonym
MAX_LABEL_WORDS = 6
BELOW_GAP_LINES = 1.6  # how far below a label (in label heights) its value may start
PAIRING_WEIGHT = {"same_line": 1.0, "right": 0.95, "below": 0.85}

# fmt: off
# Printed labels by role. Roles the query does not ask for still compete for each label, so
# "Sub Total" or "Total Qty" are never taken for "total".
LABELS: dict[str, list[str]] = {
    "total": [
        "total", "grand total", "amount due", "total amount", "nett total", "net total", "total incl gst",
        "total inclusive gst", "total incl tax", "total sales incl gst", "total sales inclusive gst",
        "total sales inclusive of gst", "rounded total", "round total", "total due", "total payable",
        "amount payable", "balance due", "total amt", "total sales", "net amount", "nett amount",
        "total after rounding", "total amount payable", "total to pay", "jumlah", "total inclusive", "tl",
        "total including gst", "total including tax", "total rounded", "total incl", "amount incl gst",
    ],
    "subtotal": [
        "sub total", "subtotal", "total excl gst", "total excluding gst", "total sales excluding gst",
        "total sales excl gst", "total before tax", "total before gst", "total exclusive gst", "sub-total",
        "total excl tax", "net sales", "total excluding tax", "gross total", "total amount excl gst",
    ],
    "tax": [
        "tax", "gst", "total gst", "vat", "sst", "service tax", "service charge", "gst amount", "total tax", "tax amount",
        "gst amt", "total gst amt", "total gst amount", "total tax amount",
    ],
    "quantity": ["qty", "quantity", "total qty", "total quantity", "total items", "no of items", "item count", "total item", "items"],
    "rounding": ["rounding", "rounding adjustment", "round adj", "rounding adj", "adjustment"],
    "cash": ["cash", "tendered", "cash tendered", "payment", "paid", "amount paid", "visa", "mastercard", "credit card", "card"],
    "change": ["change", "change due", "balance", "cash change"],
    "discount": ["discount", "disc", "total discount", "savings", "you saved"],
    "date": ["date", "invoice date", "dated", "receipt date", "bill date", "transaction date", "txn date", "issue date", "date time", "tarikh", "order date"],
    "due_date": ["due date", "payment due", "due by"],
    "time": ["time"],
    "invoice_number": [
        "invoice no", "invoice number", "inv no", "inv #", "invoice #", "bill no", "bill number", "receipt no",
        "receipt number", "receipt #", "doc no", "document no", "document number", "ref no", "reference no",
        "invoice", "inv", "slip no", "trans no", "transaction no", "order no", "cash bill no",
    ],
    "cashier": ["cashier", "served by", "operator", "salesperson", "staff"],
    "phone": ["tel", "phone", "telephone", "tel no", "phone no", "mobile", "hp", "fax"],
    "registration": ["gst id", "gst no", "gst reg no", "co reg no", "company no", "reg no", "roc no", "business reg no", "tax id", "vat no", "sst no"],
    "customer": ["customer", "bill to", "sold to", "customer name", "member", "name"],
    "email": ["email", "e mail"],
    "table": ["table", "table no"],
}
# Query field names by role, so "grand_total" or "vendor.name" find their rules.
ROLE_NAMES: dict[str, list[str]] = {
    "total": ["total", "grand_total", "total_amount", "amount_due", "amount", "total_due", "total_price", "net_total"],
    "subtotal": ["subtotal", "sub_total"],
    "tax": ["tax", "gst", "vat", "tax_amount", "total_tax"],
    "date": ["date", "invoice_date", "receipt_date", "bill_date", "transaction_date", "issue_date"],
    "due_date": ["due_date"],
    "invoice_number": ["invoice_number", "invoice_no", "invoice_id", "inv_no", "bill_no", "receipt_number", "receipt_no", "document_number", "invoice"],
    "company": [
        "company", "company_name", "vendor", "vendor_name", "merchant", "merchant_name", "store", "store_name",
        "seller", "seller_name", "supplier", "supplier_name", "shop", "shop_name", "business", "business_name",
    ],
    "address": ["address", "company_address", "vendor_address", "merchant_address", "store_address", "seller_address", "supplier_address"],
    "phone": ["phone", "telephone", "tel", "phone_number", "vendor_phone"],
    "cash": ["cash", "paid", "amount_paid", "tendered"],
    "change": ["change"],
    "rounding": ["rounding"],
    "discount": ["discount"],
    "quantity": ["quantity", "qty", "total_quantity", "item_count", "count"],
    "cashier": ["cashier"],
    "time": ["time"],
}
# fmt: on
ABBREVIATIONS = {"number": ["no", "#", "num"], "amount": ["amt"], "quantity": ["qty"], "reference": ["ref"], "account": ["acct", "a c"]}

LEGAL_SUFFIX = re.compile(
    r"\b(SDN\.?\s*BHD|BHD|BERHAD|S/B|SDN|LTD|LIMITED|LLC|L\.L\.C|INC|CORP|CORPORATION|CO|COMPANY|GMBH|PLC|PTE|PTY|LLP|S\.?A\.?R\.?L)\b\.?",
    re.IGNORECASE,
)
# A trade in a name makes it likelier a company name (it raises the confidence only).
TRADE_WORD = re.compile(
    r"\b(ENTERPRISES?|TRADING|TRADERS?|HOLDINGS|INDUSTRIES|RESTAURANTS?|RESTORAN|HARDWARE|MART|MARKET|SUPERMARKET|"
    r"HYPERMARKET|STATIONERY|BOOKS?|STORES?|SHOP|CAFE|BAKERY|PHARMACY|KEDAI|PERNIAGAAN|MOTOR|ELECTRICAL|GALLERY|"
    r"FOOD|KITCHEN|CENTRE|CENTER|SERVICES?|STATION|OUTLET|BISTRO|DELIGHTS?|MACHINERY|HOTEL|CLINIC|PETRO)\b",
    re.IGNORECASE,
)
DOCUMENT_TITLE = re.compile(
    r"^\W*(SIMPLIFIED\s*)?(TAX\s*)?(INVOICE|RECEIPT|OFFICIAL\s*RECEIPT|CASH\s*BILL|CASH\s*SALES?|BILL|"
    r"GUEST\s*CHECK|ORDER|WELCOME.*|THANK\s*YOU.*|COPY|DUPLICATE|ORIGINAL)\W*$",
    re.IGNORECASE,
)
# A company registration number on its own ("(742016-W)", "JM0325955-V"), or a line naming one.
REGISTRATION_NUMBER = re.compile(r"^\W*[A-Z]{0,3}[\s-]?\d[\dA-Z]{3,}[\s-]*[A-Z]?\W*$", re.IGNORECASE)
REGISTRATION_LABEL = re.compile(r"\b(CO\W?\s*R[EF]G|CO\.?\s*NO\b|COMPANY\s*(REG|NO)|ROC\s*NO|REG\.?\s*NO|BUSINESS\s*REG|BR\s*NO)", re.IGNORECASE)
ADDRESS_STOP = re.compile(
    r"\b(TEL|TELEPHONE|PHONE|FAX|H/?P|MOBILE|E-?MAIL|WWW|HTTP|GST|SST|VAT|TAX|INVOICE|RECEIPT|DATE|CASHIER)\b|@|\.COM\b",
    re.IGNORECASE,
)
PHONE_ONLY = re.compile(r"^[\W\d]*$")
POSTCODE = re.compile(r"\b\d{5}\b|\b[A-Z]{1,2}\d{1,2}[A-Z]?\s\d[A-Z]{2}\b|\b\d{3}\s?\d{3}\b")
ADDRESS_WORD = re.compile(
    r"\b(NO|LOT|JALAN|JLN|JL|TAMAN|TMN|LORONG|BATU|KAWASAN|BANDAR|STREET|ST|ROAD|RD|AVENUE|AVE|LANE|BLVD|DRIVE|DR|FLOOR|FLR|"
    r"LEVEL|SUITE|UNIT|BLOCK|BLK|BUILDING|PLAZA|MALL|SEKSYEN|SECTION|PERSIARAN|STRASSE|RUE|WAY)\b",
    re.IGNORECASE,
)
# A registration number printed after a name: "99 SPEED MART S/B 519537-X)".
REGISTRATION_TAIL = re.compile(r"\s*\(?\s*[A-Z]{0,3}\d{5,}\s?-?\s?[A-Z]\s*\)?\s*$", re.IGNORECASE)
# "Owned by: ACME SDN BHD" or Malay "Dimiliki: ...": the name is what follows.
OWNER_PREFIX = re.compile(r"^[^\W\d]+(\s[^\W\d]+)?\s*:\s*(?=\w)")
# A country closes an address.
COUNTRY_END = re.compile(
    r"\b(MALAYSIA|SINGAPORE|INDONESIA|THAILAND|PHILIPPINES|VIETNAM|INDIA|CHINA|AUSTRALIA|UNITED KINGDOM|UK|USA|U\.S\.A\.?|GERMANY|FRANCE)\W*$",
    re.IGNORECASE,
)
# "NO. 5", "LOT 1851-A", "78G, JALAN": a number then punctuation, unlike "32 PUB & BISTRO".
HOUSE_NUMBER = re.compile(r"^\W*((NO|LOT|UNIT)\W*\d+|\d+[A-Z]?\s*[,./-])", re.IGNORECASE)
# Another "Label:" later on the line ends a text value: "22497 Date: 12/01/2019".
NEXT_LABEL = re.compile(r"\s+[^\W\d][\w .#/]{0,24}[:：]")
CENTS = re.compile(r"[.,]\d{2}\b")
MAX_ADDRESS_ROWS = 6
MAX_NAME_ROWS = 6  # rows above the address where the company name may sit
LETTERHEAD_SHARE = 0.4  # the company and address sit in the top part of the page


@dataclass(frozen=True)
class Found:
    """One extracted value with its confidence in [0, 1] and its box on the page."""

    value: Any
    confidence: float
    box: Box
    text: str = ""  # the value as printed
    order: int = -1  # reading-order position of the label's line


@dataclass(frozen=True)
class Label:
    """A line read as a label: its role, match score (0-1), and the text after the label."""

    line: Line
    role: str
    score: float
    rest: str
    rest_start: int


def _label_key(text: str) -> str:
    """A label as compared: lower case, punctuation, bare numbers and currency codes dropped."""
    words = re.sub(r"[^\w#%']+", " ", text.casefold()).split()
    return " ".join(w for w in words if not re.fullmatch(r"[\d.,%]+|rm|myr|usd|eur|gbp|sgd", w))


def role_of(path: list[str]) -> str | None:
    """The known role a query field plays (``vendor.name`` is the company), if any."""
    joined = "_".join(path).casefold()
    last = path[-1].casefold()
    for name in (joined, last):
        for role, names in ROLE_NAMES.items():
            if name in names:
                return role
    return None


def synonyms_for(name: str) -> list[str]:
    """Label phrases for a field with no known role: its words, and their common abbreviations."""
    words = name.casefold().replace("-", "_").split("_")
    phrases = {" ".join(words)}
    for index, word in enumerate(words):
        for short in ABBREVIATIONS.get(word, []):
            phrases.add(" ".join(words[:index] + [short] + words[index + 1 :]))
    return sorted(phrases)


class LabelMatcher:
    """Reads lines as labels: the longest leading words of a line that fuzzily match a synonym."""

    def __init__(self, extra: dict[str, list[str]] | None = None):
        # The query's own field names come first, so they win a tie with a built-in role.
        vocabulary = {role: list(phrases) for role, phrases in (extra or {}).items()}
        for role, phrases in LABELS.items():
            vocabulary.setdefault(role, []).extend(phrases)
        self.phrases = [phrase for phrases in vocabulary.values() for phrase in phrases]
        self.roles = [role for role, phrases in vocabulary.items() for _ in phrases]

    def best(self, text: str) -> tuple[str, float] | None:
        key = _label_key(text)
        if not key:
            return None
        match = process.extractOne(key, self.phrases, scorer=fuzz.ratio, score_cutoff=LABEL_MATCH)
        return (self.roles[match[2]], match[1] / 100) if match else None

    def read(self, line: Line) -> Label | None:
        text = line.text
        colon = re.search(r"[:：]", text)
        if colon and _label_key(text[: colon.start()]):
            found = self.best(text[: colon.start()])
            return Label(line, found[0], found[1], *_rest(text, colon.end())) if found else None
        best: Label | None = None
        for match in re.finditer(r"\S+", text):
            prefix = text[: match.end()]
            # A word with digits is a value ("INV-2024-0815"), never part of a label.
            if len(prefix.split()) > MAX_LABEL_WORDS or any(char.isdigit() for char in match.group(0)):
                break
            found = self.best(prefix)
            # The longest matching prefix wins: "Total Qty" is a quantity, not a total.
            if found:
                best = Label(line, found[0], found[1], *_rest(text, match.end()))
        return best


def _rest(text: str, start: int) -> tuple[str, int]:
    """The text after a label, and where it starts in the line."""
    tail = text[start:]
    stripped = tail.lstrip(" :：")
    return stripped.rstrip(), start + len(tail) - len(stripped)


def _value_from_text(kind: str, text: str, dayfirst: bool = True) -> tuple[Any, int, int] | None:
    """The first value of the kind in the text as (value, start, end)."""
    if kind == "number":
        amounts = find_amounts(text)
        return amounts[0] if amounts else None
    if kind == "date":
        dates = find_dates(text, dayfirst)
        return dates[0] if dates else None
    stripped = text.strip(" :-")
    if not stripped:
        return None
    start = text.find(stripped)
    if kind == "integer":
        token = stripped.split()[0]
        value = parse_integer(token)
        return (value, start, start + len(token)) if value is not None else None
    if kind == "boolean":
        value = parse_boolean(stripped)
        return (value, start, start + len(stripped)) if value is not None else None
    following = NEXT_LABEL.search(stripped)
    if following:
        stripped = stripped[: following.start()]
    return (" ".join(stripped.split()), start, start + len(stripped))


def span_box(line: Line, start: int, end: int) -> Box:
    """The box of characters start..end of a line: its words there, else an even share of its width."""
    if start <= 0 and end >= len(line.text):
        return line.box
    boxes, cursor = [], 0
    for word in line.words:
        at = line.text.find(word.text, cursor)
        if at < 0:
            break
        cursor = at + len(word.text)
        if at < end and start < cursor:
            boxes.append(word.box)
    if boxes:
        return union_box(boxes)
    x0, y0, x1, y1 = line.box
    share = (x1 - x0) / max(len(line.text), 1)
    return (x0 + share * start, y0, x0 + share * end, y1)


def _right_of(label: Line, row: list[Line]) -> list[Line]:
    return sorted((line for line in row if line is not label and line.box[0] >= label.box[2] - 2), key=lambda line: line.box[0])


def _below(label: Line, lines: list[Line]) -> list[Line]:
    height = label.box[3] - label.box[1]
    under = [
        line
        for line in lines
        if line.box[1] >= label.box[3] - height * 0.3
        and line.box[1] - label.box[3] <= BELOW_GAP_LINES * height
        and min(line.box[2], label.box[2]) - max(line.box[0], label.box[0]) > 0
    ]
    return sorted(under, key=lambda line: line.box[1])[:1]


class PageLayout:
    """A page's lines, rows and labels, read once and shared by every field."""

    def __init__(self, page: Page, matcher: LabelMatcher, dayfirst: bool = True):
        self.page = page
        self.dayfirst = dayfirst
        # A text layer prints a whole row as one line; its cells are what labels and values are.
        self.rows = group_rows(cell for line in page.lines for cell in split_line(line))
        self.lines = [line for row in self.rows for line in row]
        self.row_of = {id(line): row for row in self.rows for line in row}
        self.position = {id(line): index for index, line in enumerate(self.lines)}
        headers = {id(line) for row in self.rows if is_header_row(row) for line in row}
        # A table's header row ("Description Qty Price Total") labels columns, not values.
        self.labels = {id(line): label for line in self.lines if id(line) not in headers and (label := matcher.read(line))}

    def labelled(self, role: str, kind: str) -> list[Found]:
        """Every value of the kind paired with a label of the role, in reading order."""
        found = []
        for label in self.labels.values():
            if label.role == role and (pair := self._pair(label, kind)):
                found.append(pair)
        return sorted(found, key=lambda item: item.order)

    def order(self, line: Line) -> int:
        return self.position[id(line)]

    def _pair(self, label: Label, kind: str) -> Found | None:
        line = label.line
        value = _value_from_text(kind, label.rest, self.dayfirst) if label.rest else None
        if value is not None:
            start, end = label.rest_start + value[1], label.rest_start + value[2]
            confidence = label.score * line.score * PAIRING_WEIGHT["same_line"]
            return Found(value[0], round(confidence, 3), span_box(line, start, end), line.text[start:end], self.order(line))
        for where, candidates in (("right", _right_of(line, self.row_of[id(line)])), ("below", _below(line, self.lines))):
            for other in candidates:
                other_label = self.labels.get(id(other))
                value = _value_from_text(kind, other.text, self.dayfirst) if other_label is None else None
                if value is not None:
                    confidence = label.score * other.score * PAIRING_WEIGHT[where]
                    return Found(
                        value[0], round(confidence, 3), span_box(other, value[1], value[2]), other.text[value[1] : value[2]], self.order(line)
                    )
                if kind == "string" or other_label is not None:
                    break
        return None

    def amounts_after(self, order: int) -> list[Found]:
        """Every amount printed on the lines after a reading-order position."""
        return [
            Found(value, line.score, span_box(line, start, end), line.text[start:end], index)
            for index, line in enumerate(self.lines[order + 1 :], start=order + 1)
            for value, start, end in find_amounts(line.text)
        ]

    def prints_cents(self) -> bool:
        """Whether most amounts on the page print two decimals (so a bare "3100" is an OCR slip)."""
        amounts = [text for line in self.lines for _, start, end in find_amounts(line.text) if (text := line.text[start:end])]
        return sum(bool(CENTS.search(text)) for text in amounts) > len(amounts) / 2


def choose_total(layout: PageLayout, found: list[Found]) -> Found | None:
    """The amount payable among the total-labelled amounts: with a non-zero rounding adjustment,
    a total above it plus the adjustment where that sum is printed below it; otherwise the last
    total above the payment lines (cash, change), which is not a tax summary's total."""
    if layout.prints_cents():
        found = [item for item in found if CENTS.search(item.text)] or found
    if not found:
        return None
    rounding = next((item for item in layout.labelled("rounding", "number") if item.value), None)
    above = [item for item in found if rounding is not None and item.order < rounding.order]
    for item in reversed(above):
        target = round(item.value + rounding.value, 2)
        printed = next((after for after in layout.amounts_after(rounding.order) if round(after.value, 2) == target), None)
        if printed is not None:
            return Found(target, item.confidence, printed.box, printed.text, printed.order)
    payments = [label.line for label in layout.labels.values() if label.role in ("cash", "change")]
    first_payment = min((layout.order(line) for line in payments if layout.order(line) > found[0].order), default=None)
    before = [item for item in found if first_payment is None or item.order < first_payment]
    return before[-1] if before else found[0]


def _is_noise(text: str) -> bool:
    """Too few letters, or all lower case: a handwritten note or a stamp, not the letterhead."""
    letters = [ch for ch in text if ch.isalpha()]
    return len(letters) < 3 or all(ch.islower() for ch in letters)


def _clean(text: str) -> str:
    """Text as returned: full-width forms folded (OCR reads "（" for "("), whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


@dataclass(frozen=True)
class HeadRow:
    """A letterhead row: its lines (registration numbers printed beside an address dropped) and text."""

    lines: tuple[Line, ...]
    text: str
    label: bool  # its first line reads as a label ("Document No", "Date")


def letterhead(layout: PageLayout) -> list[HeadRow]:
    """The rows in the top part of the page, where the company and its address are printed."""
    limit = layout.page.height * LETTERHEAD_SHARE if layout.page.height else float("inf")
    rows = []
    for row in layout.rows:
        if row[0].box[1] > limit:
            break
        kept = tuple(line for line in row if len(row) == 1 or not REGISTRATION_NUMBER.match(line.text))
        rows.append(HeadRow(kept, _clean(" ".join(line.text for line in kept)), id(row[0]) in layout.labels))
    return rows


def _skipped(row: HeadRow) -> bool:
    return _is_noise(row.text) or bool(
        DOCUMENT_TITLE.match(row.text) or REGISTRATION_NUMBER.match(row.text) or REGISTRATION_LABEL.search(row.text) or find_dates(row.text)
    )


def _is_address(row: HeadRow) -> bool:
    if REGISTRATION_NUMBER.match(row.text) or REGISTRATION_LABEL.search(row.text):
        return False
    return bool(POSTCODE.search(row.text) or ADDRESS_WORD.search(row.text) or HOUSE_NUMBER.match(row.text))


def _ends_open(text: str) -> bool:
    return text.count("(") > text.count(")") or bool(re.search(r"(&|\bAND|-)\s*$", text, re.IGNORECASE))


def _starts_continued(text: str) -> bool:
    return text.count(")") > text.count("(") or bool(re.match(r"^\W*(\(|&|SDN|BHD|S/B|LTD|INC|LLC|CO\b)", text, re.IGNORECASE))


def _name_rows(rows: list[HeadRow]) -> list[int]:
    """Indexes of the rows above the address that may name the company."""
    names = []
    for index, row in enumerate(rows):
        if _skipped(row):
            continue
        # "BOOK TA.K (TAMAN DAYA) SDN BHD" names a place but is a company.
        if (_is_address(row) and not LEGAL_SUFFIX.search(row.text)) or ADDRESS_STOP.search(row.text) or row.label or len(names) >= MAX_NAME_ROWS:
            break
        names.append(index)
    return names


def find_company(layout: PageLayout) -> tuple[Found | None, int | None]:
    """The company and the index of its last letterhead row: among the rows above the address,
    the first naming a legal form (SDN BHD, LTD, GmbH), else the first; a name broken over rows
    ("HARDWARE &" / "ELECTRICAL") is joined."""
    rows = letterhead(layout)
    names = _name_rows(rows)
    if not names:
        return None, None
    first = last = next((i for i in names if LEGAL_SUFFIX.search(rows[i].text)), names[0])
    # "RESTAURANT SDN BHD" alone is the end of a name printed over two rows.
    if first - 1 in names and len(LEGAL_SUFFIX.sub(" ", rows[first].text).split()) <= 1:
        first -= 1
    while first - 1 in names and (_starts_continued(rows[first].text) or _ends_open(rows[first - 1].text)):
        first -= 1
    while last + 1 in names and (_ends_open(rows[last].text) or _starts_continued(rows[last + 1].text)):
        last += 1
    used = rows[first : last + 1]
    text = OWNER_PREFIX.sub("", REGISTRATION_TAIL.sub("", _clean(" ".join(row.text for row in used))))
    lines = [line for row in used for line in row.lines]
    confidence = 0.9 if LEGAL_SUFFIX.search(text) else 0.75 if TRADE_WORD.search(text) else 0.5
    found = Found(text, round(confidence * min(line.score for line in lines), 3), union_box(line.box for line in lines), text)
    return found, last


def _ends_address(row: HeadRow) -> bool:
    """Whether a row after the address's first closes it: a registration, label, title, phone
    number or another company."""
    return bool(_skipped(row) or row.label or PHONE_ONLY.match(row.text) or LEGAL_SUFFIX.search(row.text))


def find_address(layout: PageLayout, company_row: int | None) -> Found | None:
    """The address: from the first address-like row after the company, up to the phone,
    registration, tax or document rows."""
    rows = letterhead(layout)
    start = 0 if company_row is None else company_row + 1
    used: list[HeadRow] = []
    parts: list[str] = []
    for row in rows[start:]:
        if not used and (_skipped(row) or not _is_address(row)):
            if not _skipped(row) and (ADDRESS_STOP.search(row.text) or row.label):
                break
            continue
        stop = ADDRESS_STOP.search(row.text)
        if stop:
            head = row.text[: stop.start()].strip(" ,.(")
            if head and _is_address(HeadRow(row.lines, head, False)):
                used.append(row)
                parts.append(head)
            break
        if used and _ends_address(row):
            break
        used.append(row)
        parts.append(row.text)
        if len(used) >= MAX_ADDRESS_ROWS or COUNTRY_END.search(row.text):
            break
    text = _clean(" ".join(parts))
    if not used or not re.search(r"\d", text):
        return None
    lines = [line for row in used for line in row.lines]
    confidence = (0.85 if POSTCODE.search(text) else 0.6) * min(line.score for line in lines)
    return Found(text, round(confidence, 3), union_box(line.box for line in lines), text)


def _first_date(layout: PageLayout) -> Found | None:
    """The first date printed on the page, at a lower confidence than a labelled one."""
    for line in layout.lines:
        dates = find_dates(line.text, layout.dayfirst)
        if dates:
            iso, start, end = dates[0]
            return Found(iso, round(0.6 * line.score, 3), span_box(line, start, end))
    return None


class FieldExtractor:
    """Extracts a query's fields from pages, one page at a time."""

    def __init__(self, query: Query, dayfirst: bool = True):
        self.query = query
        self.dayfirst = dayfirst
        extra: dict[str, list[str]] = {}
        self.roles: dict[str, str] = {}
        for path, _ in _scalar_paths(query.fields):
            key = ".".join(path)
            self.roles[key] = role_of(path) or f"field:{key}"
            if self.roles[key].startswith("field:"):
                extra[self.roles[key]] = synonyms_for(path[-1])
        self.matcher = LabelMatcher(extra)

    def page(self, page: Page) -> dict[str, Any]:
        found = _PageFields(self.roles, PageLayout(page, self.matcher, self.dayfirst))
        fields = found.object(self.query.fields, [])
        errors = validate(fields, self.query)
        return {"page": page.number, "fields": fields, "valid": not errors, "errors": errors, "confidence": found.confidence, "boxes": found.boxes}


class _PageFields:
    """One page's values, with confidence and box by dotted path for every value found."""

    def __init__(self, roles: dict[str, str], layout: PageLayout):
        self.roles = roles
        self.layout = layout
        self.confidence: dict[str, float] = {}
        self.boxes: dict[str, list[float]] = {}

    def _record(self, key: str, found: Found | None) -> Any:
        if found is None:
            return None
        self.confidence[key] = found.confidence
        self.boxes[key] = [round(v, 1) for v in found.box]
        return found.value

    def object(self, specs: tuple[FieldSpec, ...], prefix: list[str]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for spec in specs:
            path = prefix + [spec.name]
            key = ".".join(path)
            if spec.kind == "object":
                result[spec.name] = self.object(spec.fields, path)
            elif spec.kind == "array":
                result[spec.name] = self.array(spec, key)
            else:
                result[spec.name] = self._record(key, self.scalar(spec, key))
        return result

    def array(self, spec: FieldSpec, key: str) -> list[Any] | None:
        """Line items for a list of objects; every labelled value for a list of scalars."""
        if spec.item.kind == "object":
            items, confidence, boxes = extract_items([self.layout.page], spec, key)
            self.confidence.update(confidence)
            self.boxes.update({path: [round(v, 1) for v in box] for path, box in boxes.items()})
            return items
        found = self.layout.labelled(self.roles[key], spec.item.kind)
        return [self._record(f"{key}.{index}", item) for index, item in enumerate(found)] or None

    def scalar(self, spec: FieldSpec, key: str) -> Found | None:
        role = self.roles[key]
        if role == "company" and spec.kind == "string":
            return find_company(self.layout)[0]
        if role == "address" and spec.kind == "string":
            return find_address(self.layout, find_company(self.layout)[1])
        found = self.layout.labelled(role, spec.kind)
        if role == "total" and spec.kind == "number":
            return choose_total(self.layout, found)
        if found:
            return max(found, key=lambda item: item.confidence)
        if spec.kind == "date" and role == "date":
            # A receipt often prints its date with no label; the first date on it is that date.
            return _first_date(self.layout)
        return None


def _scalar_paths(specs: tuple[FieldSpec, ...], prefix: list[str] | None = None) -> list[tuple[list[str], FieldSpec]]:
    prefix = prefix or []
    paths = []
    for spec in specs:
        path = prefix + [spec.name]
        if spec.kind == "object":
            paths.extend(_scalar_paths(spec.fields, path))
        elif spec.kind == "array" and spec.item and spec.item.kind != "object":
            paths.append((path, spec.item))
        elif spec.kind != "array":
            paths.append((path, spec))
    return paths


def snake_case(text: str) -> str:
    return "_".join(re.sub(r"[^\w]+", " ", text.casefold()).split())


def _wildcard_value(text: str, dayfirst: bool) -> Any:
    dates = find_dates(text, dayfirst)
    if dates and dates[0][1] == 0:
        return dates[0][0]
    amounts = find_amounts(text)
    if len(amounts) == 1 and amounts[0][1] == 0 and amounts[0][2] == len(text) and re.search(r"[.,]\d{2}\b|RM|\$|€|£", text):
        return amounts[0][0]
    return " ".join(text.split())


def wildcard_fields(page: Page, dayfirst: bool = True) -> tuple[dict[str, Any], dict[str, float], dict[str, list[float]]]:
    """Every ``label: value`` pair printed on the page, keys snake_cased (the first of a repeated key wins)."""
    fields: dict[str, Any] = {}
    confidence: dict[str, float] = {}
    boxes: dict[str, list[float]] = {}
    rows = group_rows(page.lines)
    for row in rows:
        for index, line in enumerate(row):
            match = re.match(r"^\s*([^:：]{1,40}?)\s*[:：]\s*(.*)$", line.text)
            if not match or not re.search(r"[A-Za-z]", match.group(1)):
                continue
            key = snake_case(match.group(1))
            value_text, source = match.group(2).strip(), line
            if not value_text and index + 1 < len(row):
                source = row[index + 1]
                value_text = source.text.strip()
            if not key or not value_text or key in fields:
                continue
            fields[key] = _wildcard_value(value_text, dayfirst)
            confidence[key] = round(0.8 * source.score, 3)
            boxes[key] = [round(v, 1) for v in union_box([line.box, source.box])]
    return fields, confidence, boxes


def extract_fields(pages: list[Page], query: Query, dayfirst: bool = True) -> list[dict[str, Any]]:
    """One result per page: ``{"page", "fields", "valid", "errors", "confidence", "boxes"}``.

    ``confidence`` and ``boxes`` are keyed by dotted path (``vendor.name``, ``items.0.amount``)
    and hold only the fields found; a field not found is null in ``fields``.
    """
    if query.wildcard:
        results = []
        for page in pages:
            fields, confidence, boxes = wildcard_fields(page, dayfirst)
            errors = validate(fields, query)
            results.append({"page": page.number, "fields": fields, "valid": not errors, "errors": errors, "confidence": confidence, "boxes": boxes})
        return results
    extractor = FieldExtractor(query, dayfirst)
    return [extractor.page(page) for page in pages]
