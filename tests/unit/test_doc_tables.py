"""Tables rebuilt from boxes in actors.documents.tables: rows, columns, header, line items."""

from __future__ import annotations

from actors.documents.extraction import run_mode
from actors.documents.fields import extract_fields
from actors.documents.model import Line, Page, Word
from actors.documents.schema import compile_query
from actors.documents.tables import find_tables, group_rows, header_role, split_line


def cell(text: str, x0: float, y0: float, width: float | None = None, height: float = 20) -> Line:
    return Line(text, (x0, y0, x0 + (width if width is not None else 10 * len(text)), y0 + height), 0.98)


def text_layer_line(cells: list[tuple[str, float]], y0: float) -> Line:
    """A whole printed row as one line, its words placed at the given x positions."""
    words = []
    for text, x0 in cells:
        for offset, word in enumerate(text.split()):
            start = x0 + offset * 60
            words.append(Word(word, (start, y0, start + 8 * len(word), y0 + 20), 1.0))
    return Line(" ".join(text for text, _ in cells), (words[0].box[0], y0, words[-1].box[2], y0 + 20), 1.0, tuple(words))


INVOICE = Page(
    number=1,
    width=700,
    height=900,
    lines=[
        cell("ACME TRADING SDN BHD", 200, 20),
        cell("Invoice No: 42", 20, 80),
        cell("Description", 20, 200),
        cell("Qty", 330, 200),
        cell("Unit Price", 400, 200),
        cell("Amount", 560, 200),
        # Numbers sit right-aligned, not under the middle of their header.
        cell("Steel bolts M8", 20, 230),
        cell("10", 340, 231),
        cell("0.50", 440, 229),
        cell("5.00", 580, 230),
        cell("Hex nuts", 20, 260),
        cell("4", 345, 261),
        cell("1,250.00", 420, 260),
        cell("5,000.00", 540, 259),
        cell("Washers, zinc plated", 20, 290),
        cell("(bag of 100)", 20, 312),
        cell("2", 345, 336),
        cell("3.25", 440, 336),
        cell("6.50", 580, 336),
        cell("Subtotal", 400, 380),
        cell("5,011.50", 540, 380),
    ],
)


def test_rows_group_by_vertical_overlap() -> None:
    rows = group_rows(INVOICE.lines)
    texts = [[line.text for line in row] for row in rows]
    assert ["Description", "Qty", "Unit Price", "Amount"] in texts
    assert ["Hex nuts", "4", "1,250.00", "5,000.00"] in texts  # a pixel off is the same row


def test_header_roles() -> None:
    assert [header_role(text) for text in ["Description", "Qty", "Unit Price", "Amount", "Tax Code", "Hello"]] == [
        "description",
        "quantity",
        "price",
        "amount",
        "tax",
        None,
    ]


def test_invoice_table_rows_and_columns() -> None:
    tables = find_tables(INVOICE)
    assert len(tables) == 1
    table = tables[0]
    assert table.columns == ["Description", "Qty", "Unit Price", "Amount"]
    assert table.rows == [
        ["Steel bolts M8", "10", "0.50", "5.00"],
        ["Hex nuts", "4", "1,250.00", "5,000.00"],
        ["Washers, zinc plated (bag of 100)", "2", "3.25", "6.50"],  # a wrapped description joins its item
    ]
    assert table.box == (20, 200, 620, 356)  # header to last row; the subtotal closes the table


def test_line_items_map_columns_by_header_and_type() -> None:
    query = compile_query({"invoice_number": "str", "items": [{"description": "str", "quantity": 0, "unit_price": 0.0, "amount": 0.0}]})
    result = extract_fields([INVOICE], query)[0]
    assert result["fields"]["items"] == [
        {"description": "Steel bolts M8", "quantity": 10, "unit_price": 0.5, "amount": 5.0},
        {"description": "Hex nuts", "quantity": 4, "unit_price": 1250.0, "amount": 5000.0},
        {"description": "Washers, zinc plated (bag of 100)", "quantity": 2, "unit_price": 3.25, "amount": 6.5},
    ]
    assert result["valid"]
    assert result["boxes"]["items.1.amount"] == [540, 259, 620, 279]
    assert 0 < result["confidence"]["items.2.description"] <= 1


def test_item_fields_with_no_column_stay_null() -> None:
    query = compile_query({"items": [{"description": "str", "sku": "str", "amount": 0.0}]})
    items = extract_fields([INVOICE], query)[0]["fields"]["items"]
    assert [item["sku"] for item in items] == [None, None, None]
    assert [item["amount"] for item in items] == [5.0, 5000.0, 6.5]


def test_text_layer_rows_split_into_cells_at_wide_gaps() -> None:
    row = text_layer_line([("Item", 20), ("Qty", 300), ("Price", 420)], 10)
    assert [c.text for c in split_line(row)] == ["Item", "Qty", "Price"]
    page = Page(
        number=2,
        width=600,
        height=400,
        lines=[text_layer_line([("Item", 20), ("Qty", 300), ("Price", 420)], 10), text_layer_line([("Paper", 20), ("3", 305), ("2.10", 420)], 40)],
        source="text_layer",
    )
    assert run_mode([page], None, "table") == [
        {"page": 2, "tables": [{"columns": ["Item", "Qty", "Price"], "rows": [["Paper", "3", "2.10"]], "box": [20, 10, 460, 60]}]}
    ]


def test_aligned_rows_without_a_header() -> None:
    page = Page(
        number=1,
        width=600,
        height=400,
        lines=[cell("apples", 20, 10), cell("3.00", 300, 10), cell("pears", 20, 40), cell("4.50", 300, 40), cell("THANK YOU", 100, 120)],
    )
    tables = find_tables(page)
    assert [table.to_dict() for table in tables] == [
        {"columns": ["column_1", "column_2"], "rows": [["apples", "3.00"], ["pears", "4.50"]], "box": [20, 10, 340, 60]}
    ]


def test_no_table_on_a_page_of_prose() -> None:
    page = Page(number=1, width=600, height=400, lines=[cell("Dear customer,", 20, 10), cell("thank you for your order.", 20, 40)])
    assert find_tables(page) == []
    assert extract_fields([page], compile_query({"items": [{"description": "str"}]}))[0]["fields"]["items"] is None
