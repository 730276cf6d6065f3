"""Tables rebuilt from word and line boxes: rows by vertical overlap, columns from a header row
or from x-alignment across rows; line items mapped to a list field's item fields."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rapidfuzz import fuzz, process

from actors.documents.model import Box, Line, Page
from actors.documents.schema import FieldSpec
from actors.documents.values import find_amounts, parse_amount, parse_integer, parse_value

# A gap wider than this many character widths between two words splits them into two cells.
CELL_GAP_CHARS = 2.0
HEADER_MATCH = 80
HEADER_WORDS = {
    "description": ["description", "desc", "item", "items", "product", "particulars", "details", "code desc", "item description", "name"],
    "quantity": ["qty", "quantity", "q'ty", "units", "unit", "pcs", "no of units"],
    "price": ["price", "unit price", "u price", "rate", "s price", "each", "unit cost", "price rm"],
    "amount": ["amount", "total", "amt", "line total", "amount rm", "total rm", "value", "net amount"],
    "tax": ["tax", "gst", "vat", "tax code"],
    "discount": ["disc", "discount"],
    "code": ["code", "sku", "item code", "no", "#"],
}
NUMERIC_ROLES = {"quantity", "price", "amount", "tax", "discount"}
# A row of units under a header ("RM | RM", "(RM)") holds no item.
UNITS = re.compile(r"^\W*(RM|MYR|USD|EUR|GBP|SGD|\$|€|£|%|PCS?|QTY|UNIT)?\W*$", re.IGNORECASE)
TAX_CODE = re.compile(r"\s+[A-Z*]{1,3}$")
# Rows that close a table of line items.
TOTAL_WORDS = ("total", "sub total", "subtotal", "sub-total", "grand total", "gross", "rounding", "cash", "change", "balance")


@dataclass
class Table:
    """Columns (header texts, or ``column_N``), rows of cell texts (None where empty), and its box."""

    columns: list[str]
    rows: list[list[str | None]]
    box: Box
    cells: list[list[Line | None]]
    roles: list[str | None]

    def to_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": self.rows, "box": [round(v, 1) for v in self.box]}


def union_box(boxes: Iterable[Box]) -> Box:
    boxes = list(boxes)
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def _centre_y(box: Box) -> float:
    return (box[1] + box[3]) / 2


def same_row(a: Box, b: Box) -> bool:
    """Whether two boxes share at least half the height of the shorter one."""
    overlap = min(a[3], b[3]) - max(a[1], b[1])
    return overlap >= 0.5 * min(a[3] - a[1], b[3] - b[1])


def side_by_side(a: Box, b: Box) -> bool:
    """Whether two boxes barely overlap in x: lines of one row sit beside each other, while the
    tall boxes of a slanted scan can overlap in y one above the other."""
    return _overlap(a, b) <= 0.2 * min(a[2] - a[0], b[2] - b[0])


def group_rows(lines: Iterable[Line]) -> list[list[Line]]:
    """Lines grouped into printed rows, top to bottom, each left to right. A line joins a row when
    it shares the height of the row's first line: comparing with the whole row would let one tall
    or slanted box chain two printed rows together."""
    rows: list[list[Line]] = []
    for line in sorted(lines, key=lambda line: _centre_y(line.box)):
        if rows and same_row(rows[-1][0].box, line.box) and all(side_by_side(other.box, line.box) for other in rows[-1]):
            rows[-1].append(line)
        else:
            rows.append([line])
    return [sorted(row, key=lambda line: line.box[0]) for row in rows]


def split_line(line: Line) -> list[Line]:
    """A line split where its words leave a wide gap (a text layer prints a whole row as one line)."""
    words = [word for word in line.words if word.text.strip()]
    if len(words) < 2:
        return [line]
    char_width = (line.box[2] - line.box[0]) / max(len(line.text), 1)
    groups, current = [], [words[0]]
    for word in words[1:]:
        if word.box[0] - current[-1].box[2] > CELL_GAP_CHARS * char_width:
            groups.append(current)
            current = []
        current.append(word)
    groups.append(current)
    if len(groups) == 1:
        return [line]
    return [Line(" ".join(w.text for w in group), union_box(w.box for w in group), min(w.score for w in group), tuple(group)) for group in groups]


def _header_key(text: str) -> str:
    return " ".join("".join(ch if ch.isalnum() or ch in "#'" else " " for ch in text.casefold()).split())


def _best_role(key: str) -> tuple[str, float] | None:
    best = None
    for role, words in HEADER_WORDS.items():
        match = process.extractOne(key, words, scorer=fuzz.ratio, score_cutoff=HEADER_MATCH)
        if match and (best is None or match[1] > best[1]):
            best = (role, match[1])
    return best


def header_role(text: str) -> str | None:
    """The column role a header text names (description, quantity, price, amount, ...), if any:
    the whole header's, else its first word's that names one ("Price (GST Inc.)", "Desc/Item")."""
    key = _header_key(text)
    found = _best_role(key) if key else None
    for word in key.split() if found is None else ():
        found = _best_role(word)
        if found:
            break
    return found[0] if found else None


def _overlap(a: Box, b: Box) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0]))


def _closes_table(row: list[Line]) -> bool:
    key = _header_key(row[0].text)
    return key.startswith(TOTAL_WORDS) or bool(process.extractOne(key, TOTAL_WORDS, scorer=fuzz.ratio, score_cutoff=85))


def _row_height(rows: list[list[Line]]) -> float:
    heights = sorted(cell.box[3] - cell.box[1] for row in rows for cell in row)
    return heights[len(heights) // 2] if heights else 1.0


def _assign(row: list[Line], columns: list[Box]) -> list[Line | None]:
    """Each cell into the column it overlaps most, else the nearest one (numbers sit right-aligned
    under a centred header)."""
    placed: list[Line | None] = [None] * len(columns)
    for cell in row:
        overlaps = [_overlap(cell.box, column) for column in columns]
        if max(overlaps) > 0:
            index = overlaps.index(max(overlaps))
        else:
            centre = (cell.box[0] + cell.box[2]) / 2
            index = min(range(len(columns)), key=lambda i: min(abs(centre - columns[i][0]), abs(centre - columns[i][2])))
        if placed[index] is None:
            placed[index] = cell
        else:
            existing = placed[index]
            placed[index] = Line(f"{existing.text} {cell.text}", union_box([existing.box, cell.box]), min(existing.score, cell.score))
    return placed


def is_header_row(row: list[Line]) -> bool:
    """Whether a row names table columns: most of its cells name a role, one of them numeric,
    and none holds a number (a row "Item 2 | Total 77.20" is data)."""
    roles = [header_role(cell.text) for cell in row]
    named = [role for role in roles if role]
    return (
        len(named) >= 2
        and len(named) >= 0.6 * len(row)
        and any(role in NUMERIC_ROLES for role in named)
        and not any(find_amounts(cell.text) for cell in row)
    )


def _header_index(rows: list[list[Line]]) -> int | None:
    return next((index for index, row in enumerate(rows) if is_header_row(row)), None)


def _columns_from_alignment(rows: list[list[Line]]) -> list[Box]:
    """Column spans where cells of several rows overlap in x, merged left to right."""
    spans = sorted((cell.box for row in rows for cell in row), key=lambda box: box[0])
    columns: list[list[float]] = []
    for box in spans:
        if columns and box[0] <= columns[-1][2]:
            columns[-1][2] = max(columns[-1][2], box[2])
            columns[-1][3] = max(columns[-1][3], box[3])
        else:
            columns.append([box[0], box[1], box[2], box[3]])
    return [tuple(column) for column in columns]  # type: ignore[misc]


def _table_from_header(rows: list[list[Line]], header: int) -> Table:
    header_cells = rows[header]
    columns = [cell.box for cell in header_cells]
    gap_limit = 3 * _row_height(rows)
    body: list[list[Line | None]] = []
    previous_bottom = max(cell.box[3] for cell in header_cells)
    for row in rows[header + 1 :]:
        top = min(cell.box[1] for cell in row)
        if top - previous_bottom > gap_limit or _closes_table(row):
            break
        if not all(UNITS.match(cell.text) for cell in row):
            body.append(_assign(row, columns))
        previous_bottom = max(cell.box[3] for cell in row)
    body = _merge_wrapped(body, [header_role(cell.text) for cell in header_cells])
    return _make_table([cell.text for cell in header_cells], body, [header_role(cell.text) for cell in header_cells], header_cells)


def _merge_wrapped(body: list[list[Line | None]], roles: list[str | None]) -> list[list[Line | None]]:
    """A row holding text but no numbers continues the description of the item before or after it."""
    numeric = [i for i, role in enumerate(roles) if role in NUMERIC_ROLES]
    merged: list[list[Line | None]] = []
    pending: list[Line] = []
    for row in body:
        has_numbers = any(row[i] is not None and _parse_cell("number", row[i].text) is not None for i in numeric)
        if not has_numbers:
            pending.extend(cell for cell in row if cell is not None)
            continue
        if pending:
            text_index = next((i for i, role in enumerate(roles) if role == "description"), None)
            if text_index is not None:
                parts = pending + ([row[text_index]] if row[text_index] else [])
                row = list(row)
                row[text_index] = Line(" ".join(c.text for c in parts), union_box(c.box for c in parts), min(c.score for c in parts))
            pending = []
        merged.append(row)
    return merged


def _make_table(columns: list[str], body: list[list[Line | None]], roles: list[str | None], extra: list[Line]) -> Table:
    boxes = [cell.box for row in body for cell in row if cell] + [cell.box for cell in extra]
    return Table(
        columns=columns,
        rows=[[cell.text if cell else None for cell in row] for row in body],
        box=union_box(boxes),
        cells=body,
        roles=roles,
    )


def _aligned_runs(rows: list[list[Line]]) -> list[list[list[Line]]]:
    """Runs of consecutive rows with at least two cells each: a table with no header row."""
    runs, current = [], []
    for row in rows:
        if len(row) >= 2:
            current.append(row)
        else:
            if len(current) >= 2:
                runs.append(current)
            current = []
    if len(current) >= 2:
        runs.append(current)
    return runs


def page_cells(page: Page) -> list[list[Line]]:
    """The page as rows of cells."""
    return group_rows(cell for line in page.lines for cell in split_line(line))


def find_tables(page: Page) -> list[Table]:
    """The tables on a page: one per header row found, else one per run of aligned rows."""
    rows = page_cells(page)
    header = _header_index(rows)
    if header is not None:
        table = _table_from_header(rows, header)
        return [table] if table.rows else []
    tables = []
    for run in _aligned_runs(rows):
        columns = _columns_from_alignment(run)
        if len(columns) < 2:
            continue
        body = [_assign(row, columns) for row in run]
        tables.append(_make_table([f"column_{i + 1}" for i in range(len(columns))], body, [None] * len(columns), []))
    return tables


ITEM_ROLE_NAMES = {
    "description": "description",
    "desc": "description",
    "item": "description",
    "name": "description",
    "product": "description",
    "qty": "quantity",
    "quantity": "quantity",
    "count": "quantity",
    "units": "quantity",
    "price": "price",
    "unit_price": "price",
    "rate": "price",
    "amount": "amount",
    "total": "amount",
    "line_total": "amount",
    "tax": "tax",
    "discount": "discount",
    "code": "code",
    "sku": "code",
}


def _field_role(spec: FieldSpec) -> str | None:
    name = spec.name.casefold()
    if name in ITEM_ROLE_NAMES:
        return ITEM_ROLE_NAMES[name]
    return header_role(name.replace("_", " "))


def _column_parses(table: Table, column: int, kind: str) -> bool:
    values = [row[column] for row in table.cells if row[column] is not None]
    if not values:
        return False
    parsed = sum(_parse_cell(kind, cell.text) is not None for cell in values)
    return parsed >= 0.5 * len(values)


def _column_for(spec: FieldSpec, table: Table, used: set[int]) -> int | None:
    """The column whose header names the field's role and whose cells parse as its kind; a text
    field with no such header takes the widest text column."""
    role = _field_role(spec)
    candidates = [i for i, column_role in enumerate(table.roles) if column_role and column_role == role and i not in used]
    for index in candidates:
        if spec.kind == "string" or _column_parses(table, index, spec.kind):
            return index
    if spec.kind == "string" and role == "description":
        text_columns = [i for i in range(len(table.columns)) if i not in used and not _column_parses(table, i, "number")]
        if text_columns:
            return max(text_columns, key=lambda i: sum(len(row[i] or "") for row in table.rows))
    return None


def _parse_cell(kind: str, text: str) -> Any:
    if kind == "integer":
        # Quantities print as "1 PC" or "2.00"; the leading number is the count.
        value = parse_integer(text.split()[0]) if text.split() else None
        if value is None:
            amount = parse_amount(text.split()[0]) if text.split() else None
            value = int(amount) if amount is not None and float(amount).is_integer() else None
        return value
    if kind == "number":
        # An amount may carry a tax code: "5.30 SR".
        return parse_amount(TAX_CODE.sub("", text))
    return parse_value(kind, text)


def extract_items(pages: list[Page], spec: FieldSpec, path: str) -> tuple[list[dict[str, Any]] | None, dict[str, float], dict[str, Box]]:
    """A list-of-objects field as rows of the first table that fills any of its item fields:
    values, and confidence and box keyed ``path.N.field``."""
    item_fields = [child for child in spec.item.fields if child.kind not in ("object", "array")] if spec.item else []
    for page in pages:
        for table in find_tables(page):
            used: set[int] = set()
            mapping = {}
            for child in item_fields:
                column = _column_for(child, table, used)
                if column is not None:
                    mapping[child.name] = column
                    used.add(column)
            if not mapping:
                continue
            return _rows_to_items(table, spec, mapping, path)
    return None, {}, {}


def _rows_to_items(
    table: Table, spec: FieldSpec, mapping: dict[str, int], path: str
) -> tuple[list[dict[str, Any]], dict[str, float], dict[str, Box]]:
    items: list[dict[str, Any]] = []
    confidence: dict[str, float] = {}
    boxes: dict[str, Box] = {}
    for row in table.cells:
        item: dict[str, Any] = {}
        for child in spec.item.fields:
            cell = row[mapping[child.name]] if child.name in mapping else None
            value = _parse_cell(child.kind, cell.text) if cell else None
            item[child.name] = value
            if value is not None:
                key = f"{path}.{len(items)}.{child.name}"
                confidence[key] = round(cell.score * 0.9, 3)
                boxes[key] = cell.box
        if any(value is not None for value in item.values()):
            items.append(item)
    return items, confidence, boxes
