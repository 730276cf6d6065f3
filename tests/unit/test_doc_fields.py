"""Field extraction in actors.documents.fields and the LLM helpers in actors.documents.extraction,
on synthetic pages built from lines with boxes, and on a few real receipts' cached OCR."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from actors.documents.evaluate import exact
from actors.documents.extraction import check_llm_answer, classify_pages, llm_messages, run_mode
from actors.documents.fields import LabelMatcher, extract_fields
from actors.documents.model import Line, Page, Word
from actors.documents.schema import compile_query
from cluster.errors import ValidationFailed

OCR_FIXTURES = Path(__file__).parent.parent / "data" / "ocr"
SROIE_QUERY = {"company": "str", "date": "date", "address": "str", "total": 0.0}
SROIE_KINDS = {"company": "string", "date": "date", "address": "string", "total": "number"}


def line(text: str, x0: float, y0: float, width: float | None = None, height: float = 20, score: float = 0.99) -> Line:
    """A line whose words are spread evenly over its box."""
    width = width if width is not None else 10 * len(text)
    words, cursor = [], 0
    for word in text.split():
        start = text.index(word, cursor)
        cursor = start + len(word)
        words.append(Word(word, (x0 + width * start / len(text), y0, x0 + width * cursor / len(text), y0 + height), score))
    return Line(text, (x0, y0, x0 + width, y0 + height), score, tuple(words))


def page_of(*lines: Line, number: int = 1) -> Page:
    return Page(number=number, width=600, height=900, lines=list(lines))


RECEIPT = page_of(
    line("handwritten note", 20, 0),
    line("ACME TRADING SDN BHD", 150, 30),
    line("(123456-X)", 200, 55),
    line("NO 5, JALAN BESAR,", 150, 80),
    line("81100 JOHOR BAHRU", 150, 105),
    line("TEL: 07-1234567", 150, 130),
    line("TAX INVOICE", 200, 160),
    line("Invoice No: INV-0042", 20, 190),
    line("Date", 20, 220),
    line("25/12/2018 10:30", 200, 220),
    line("Cashier:", 20, 250),
    line("MANIS", 200, 250),
    line("Sub Total", 20, 400),
    line("21.00", 490, 400),
    line("Total Qty", 20, 430),
    line("3", 490, 430),
    line("Grand Total", 20, 460),
    line("RM 21.00", 20, 485),
    line("Cash", 20, 520),
    line("50.00", 490, 520),
)


def fields_of(page: Page, query: object) -> dict:
    return extract_fields([page], compile_query(query))[0]


@pytest.mark.parametrize(
    ("printed", "role"),
    [
        ("TOTAL", "total"),
        ("Grand Total", "total"),
        ("Amount Due:", "total"),
        ("TOTAL RM", "total"),
        ("Total (incl. GST)", "total"),
        ("Nett Total", "total"),
        ("Total Amount", "total"),
        ("Tatal Sales (Inclusive of GST) :", "total"),  # OCR slip, fuzzy
        ("TOTAI:", "total"),
        ("Sub Total", "subtotal"),
        ("Total Qty", "quantity"),
        ("Total GST", "tax"),
        ("Rounding Adjustment", "rounding"),
        ("Date", "date"),
        ("Invoice Date:", "date"),
        ("Dated", "date"),
        ("Invoice No", "invoice_number"),
        ("Inv #", "invoice_number"),
        ("Bill No.", "invoice_number"),
    ],
)
def test_labels_by_synonym_and_fuzzy_match(printed: str, role: str) -> None:
    label = LabelMatcher().read(line(printed, 0, 0))
    assert label is not None and label.role == role


def test_a_line_that_is_no_label() -> None:
    matcher = LabelMatcher()
    assert matcher.read(line("KF MODELLING CLAY KIDDY FISH", 0, 0)) is None
    assert matcher.read(line("Cashier", 0, 0)).role == "cashier"  # not "cash"


def test_receipt_fields_right_of_below_and_letterhead() -> None:
    query = {"company": "str", "address": "str", "invoice_number": "str", "date": "date", "total": 0.0, "cashier": "str", "subtotal": 0.0}
    result = fields_of(RECEIPT, query)
    assert result["fields"] == {
        "company": "ACME TRADING SDN BHD",
        "address": "NO 5, JALAN BESAR, 81100 JOHOR BAHRU",
        "invoice_number": "INV-0042",  # same line, after the colon
        "date": "2018-12-25",  # right of its label
        "total": 21.0,  # below its label; not the sub total, not the quantity
        "cashier": "MANIS",
        "subtotal": 21.0,
    }
    assert result["valid"] and result["errors"] == []
    assert set(result["confidence"]) == set(query) == set(result["boxes"])
    assert all(0 < value <= 1 for value in result["confidence"].values())
    assert result["boxes"]["total"] == [20, 485, 100, 505]
    assert result["boxes"]["company"] == [150, 30, 350, 50]
    x0, _, x1, _ = result["boxes"]["invoice_number"]  # the words of the value, not the whole line
    assert x0 > 20 and x1 == 220


def test_not_found_is_null_never_invented() -> None:
    result = fields_of(RECEIPT, {"po_number": "str", "due_date": "date", "discount": 0.0})
    assert result["fields"] == {"po_number": None, "due_date": None, "discount": None}
    assert result["valid"] and result["confidence"] == {} and result["boxes"] == {}


def test_a_typed_field_takes_only_text_of_its_type() -> None:
    page = page_of(line("Date:", 20, 20), line("N/A", 200, 20), line("Total:", 20, 60), line("see below", 200, 60))
    assert fields_of(page, {"date": "date", "total": 0.0})["fields"] == {"date": None, "total": None}


def test_value_below_its_label() -> None:
    page = page_of(line("Invoice Date", 20, 20), line("10 MAR 2018", 20, 45), line("Amount Due", 300, 20), line("USD 1,234.50", 300, 45))
    assert fields_of(page, {"invoice_date": "date", "amount_due": 0.0})["fields"] == {"invoice_date": "2018-03-10", "amount_due": 1234.5}


def test_text_layer_rows_and_crowded_lines() -> None:
    words = [Word("Invoice", (20, 20, 80, 40), 1.0), Word("No", (85, 20, 105, 40), 1.0), Word("123", (110, 20, 140, 40), 1.0)]
    words += [Word("Date", (400, 20, 440, 40), 1.0), Word("25/12/2018", (445, 20, 545, 40), 1.0)]
    row = Line("Invoice No 123 Date 25/12/2018", (20, 20, 545, 40), 1.0, tuple(words))
    crowded = line("Cashier: MANIS Table: 5", 20, 80)
    result = fields_of(page_of(row, crowded), {"invoice_number": "str", "date": "date", "cashier": "str"})
    assert result["fields"] == {"invoice_number": "123", "date": "2018-12-25", "cashier": "MANIS"}
    assert result["boxes"]["date"] == [445, 20, 545, 40]


def test_month_first_dates() -> None:
    page = page_of(line("Date: 03/10/2018", 20, 20))
    assert extract_fields([page], compile_query({"date": "date"}), dayfirst=False)[0]["fields"]["date"] == "2018-03-10"


def test_rounded_total_wins_over_the_total_before_rounding() -> None:
    page = page_of(
        line("TOTAL AMT.", 20, 20), line("60.31", 400, 20),
        line("ROUNDING ADJ", 20, 50), line("-0.01", 400, 50),
        line("RH", 20, 80), line("60.30", 400, 80),
        line("CASH", 20, 110), line("70.30", 400, 110),
    )  # fmt: skip
    result = fields_of(page, {"total": 0.0})
    assert result["fields"]["total"] == 60.30
    assert result["boxes"]["total"] == [400, 80, 450, 100]


def test_nested_and_unknown_fields() -> None:
    page = page_of(line("ACME TRADING SDN BHD", 150, 20), line("PO Number: 7781", 20, 60), line("Reference No", 20, 90), line("R-9", 200, 90))
    result = fields_of(page, {"vendor": {"name": "str"}, "po_number": "str", "reference_number": "str"})
    assert result["fields"] == {"vendor": {"name": "ACME TRADING SDN BHD"}, "po_number": "7781", "reference_number": "R-9"}
    assert "vendor.name" in result["confidence"] and "vendor.name" in result["boxes"]


def test_wildcard_takes_every_label_value_pair() -> None:
    page = page_of(
        line("Invoice No: 123", 20, 20),
        line("Date:", 20, 50),
        line("25/12/2018", 200, 50),
        line("Total : RM 9.00", 20, 80),
        line("THANK YOU", 20, 110),
    )
    result = fields_of(page, "*")
    assert result["fields"] == {"invoice_no": "123", "date": "2018-12-25", "total": 9.0}
    assert result["valid"]
    assert set(result["boxes"]) == {"invoice_no", "date", "total"}


def test_one_result_per_page() -> None:
    second = page_of(line("Total: 5.00", 20, 20), number=2)
    results = extract_fields([RECEIPT, second], compile_query({"total": 0.0}))
    assert [(result["page"], result["fields"]["total"]) for result in results] == [(1, 21.0), (2, 5.0)]


def test_run_mode_text_and_errors() -> None:
    text = run_mode([RECEIPT], None, "text")
    assert text[0]["page"] == 1
    assert text[0]["lines"][1] == {"text": "ACME TRADING SDN BHD", "box": [150, 30, 350, 50], "score": 0.99}
    assert run_mode([RECEIPT], {"total": 0.0})[0]["fields"] == {"total": 21.0}
    with pytest.raises(ValidationFailed, match="mode"):
        run_mode([RECEIPT], {"total": 0.0}, "summary")
    with pytest.raises(ValidationFailed, match="options"):
        run_mode([RECEIPT], {"total": 0.0}, "fields", {"page_type": "invoice"})


def test_classify_pages_by_embedding_similarity() -> None:
    vocabulary = ["invoice", "receipt", "bank", "cash", "change", "balance", "account"]

    def embed(texts: list[str]) -> np.ndarray:
        vectors = np.array([[text.casefold().count(word) for word in vocabulary] for text in texts], dtype=np.float32) + 1e-3
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    receipt = page_of(line("Total 9.00 Cash 10.00 Change 1.00", 20, 20))
    statement = page_of(line("Account 1234 opening balance closing balance", 20, 20), number=2)
    labels = classify_pages([receipt, statement], ["invoice", "receipt", "bank statement"], embed)
    assert [label["label"] for label in labels] == ["receipt", "bank statement"]
    assert all(0 <= label["score"] <= 1 for label in labels)
    result = run_mode([receipt], {"total": 0.0}, "fields", {"page_type": ["invoice", "receipt"]}, embed=embed)
    assert result[0]["page_type"]["label"] == "receipt"


def test_llm_messages_carry_the_schema_and_the_ocr_text() -> None:
    query = compile_query({"total": 0.0, "date": "date"})
    messages = llm_messages(RECEIPT, query)
    assert [message["role"] for message in messages] == ["system", "user"]
    assert "one JSON object" in messages[0]["content"]
    assert '"total"' in messages[1]["content"] and "Grand Total" in messages[1]["content"]


def test_llm_answer_coerced_validated_and_unverified_flagged() -> None:
    query = compile_query({"company": "str", "date": "date", "total": 0.0, "invoice_number": "str", "vendor": {"name": "str"}})
    reply = (
        "Sure! Here it is:\n```json\n"
        '{"company": "Acme  Trading Sdn Bhd", "date": "25/12/2018", "total": "RM 21.00", '
        '"invoice_number": "INV-9999", "vendor": {"name": "Globex"}}\n```'
    )
    checked = check_llm_answer(reply, RECEIPT, query)
    assert checked["fields"] == {
        "company": "Acme Trading Sdn Bhd",
        "date": "2018-12-25",
        "total": 21.0,
        "invoice_number": "INV-9999",
        "vendor": {"name": "Globex"},
    }
    assert checked["valid"]
    assert checked["unverified"] == ["invoice_number", "vendor.name"]  # printed nowhere on the page


def test_llm_answer_of_the_wrong_type_is_nulled_with_an_error() -> None:
    query = compile_query({"date": "date", "total": 0.0})
    checked = check_llm_answer('{"date": "yesterday", "total": 21}', RECEIPT, query)
    assert checked["fields"] == {"date": None, "total": 21.0}
    assert not checked["valid"] and checked["errors"][0].startswith("$.date")


@pytest.mark.parametrize("reply", ["I cannot help with that.", "", "{not json", "[1, 2]"])
def test_garbage_llm_reply_gives_nulls_not_an_exception(reply: str) -> None:
    checked = check_llm_answer(reply, RECEIPT, compile_query({"total": 0.0, "date": "date"}))
    assert checked["fields"] == {"total": None, "date": None}
    assert not checked["valid"] and checked["errors"]


def _fixtures() -> list[str]:
    return sorted(path.stem for path in OCR_FIXTURES.glob("[0-9]*.json"))


@pytest.mark.parametrize("stem", _fixtures())
def test_real_receipts_from_cached_ocr(stem: str) -> None:
    page = Page.from_dict(json.loads((OCR_FIXTURES / f"{stem}.json").read_text()))
    gold = json.loads((OCR_FIXTURES / "gold.json").read_text())[stem]
    fields = extract_fields([page], compile_query(SROIE_QUERY))[0]["fields"]
    for name, kind in SROIE_KINDS.items():
        assert exact(fields[name], gold[name], kind), (name, fields[name], gold[name])


def test_scoring_normalises_before_comparing() -> None:
    from actors.documents.evaluate import char_f1, normalise, score

    assert normalise("date", "25/12/2018") == normalise("date", "2018-12-25") == "2018-12-25"
    assert normalise("number", "RM 9.00") == 9.0
    assert normalise("string", "  Acme\n Sdn  Bhd ") == "acme sdn bhd"
    assert exact("9.00", 9.0, "number") and exact(None, "", "string") and not exact(None, "9.00", "number")
    assert char_f1("abc", "abc") == 1.0 and char_f1(None, "abc") == 0.0
    assert char_f1("abcd", "abxd") == pytest.approx(0.75)  # LCS "abd": precision = recall = 3/4
    result = score(
        [
            ({"total": 9.0, "company": "ACME"}, {"total": "9.00", "company": "Acme Sdn Bhd"}),
            ({"total": None, "company": None}, {"total": "5.00", "company": "X"}),
        ],
        {"total": "number"},
    )
    assert result["n"] == 2
    assert result["fields"]["total"] == {"exact": 0.5, "char_f1": 0.5}
    assert result["fields"]["company"]["exact"] == 0.0 and 0 < result["fields"]["company"]["char_f1"] < 0.5
