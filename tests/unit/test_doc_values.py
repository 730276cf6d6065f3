"""Typed value parsers in actors.documents.values: dates, amounts, integers, booleans, strings."""

from __future__ import annotations

import pytest

from actors.documents.values import (
    clean_string,
    find_amounts,
    find_dates,
    parse_amount,
    parse_boolean,
    parse_date,
    parse_integer,
    parse_value,
)


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("25/12/2018", "2018-12-25"),
        ("12-01-19", "2019-01-12"),
        ("18/03/18", "2018-03-18"),
        ("10 MAR 2018", "2018-03-10"),
        ("10-Mar-18", "2018-03-10"),
        ("10th March 2018", "2018-03-10"),
        ("2018-03-10", "2018-03-10"),
        ("2018/3/1", "2018-03-01"),
        ("Mar 10, 2018", "2018-03-10"),
        ("March 10 2018", "2018-03-10"),
        ("10.03.2018", "2018-03-10"),
        ("19/10/2018 20:49:59", "2018-10-19"),
        ("10/03/2018 10:30 AM", "2018-03-10"),
        ("12/28/2017", "2017-12-28"),  # impossible day-first, so month-first
        ("20180304", "2018-03-04"),
    ],
)
def test_dates_in_many_formats(text: str, iso: str) -> None:
    assert parse_date(text) == iso


def test_month_first_option() -> None:
    assert parse_date("10/03/2018") == "2018-03-10"
    assert parse_date("10/03/2018", dayfirst=False) == "2018-10-03"
    assert parse_date("2018-03-10", dayfirst=False) == "2018-03-10"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "9.00",
        "20181304",
        "32/13/2018",
        "2018-13-01",
        "25/12-2018",
        "123/10/2018",
        "Date: 25/12/2018",
        "25/12/2018 and 26/12/2018",
        "1.234,56",
        None,
    ],
)
def test_not_dates(text: str | None) -> None:
    assert parse_date(text) is None


def test_find_dates_inside_a_line() -> None:
    assert find_dates("Date: 25/12/2018 Time: 10:30") == [("2018-12-25", 6, 16)]
    assert find_dates("HC03-7 - 15 WA14-3A") == []  # product codes
    assert [iso for iso, _, _ in find_dates("from 01/02/2019 to 28.02.2019")] == ["2019-02-01", "2019-02-28"]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("9.00", 9.0),
        ("RM 9.00", 9.0),
        ("RM9.00", 9.0),
        ("9.00 RM", 9.0),
        ("$1,234.50", 1234.5),
        ("USD 1,000", 1000.0),
        ("1,234.56", 1234.56),
        ("1.234,56", 1234.56),
        ("1.234,56 €", 1234.56),
        ("€ 12,50", 12.5),
        ("£3", 3.0),
        ("1,234,567.00", 1234567.0),
        ("-9.00", -9.0),
        ("-RM 0.02", -0.02),
        ("9.00-", -9.0),
        ("(12.50)", -12.5),
        (".50", 0.5),
        (7, 7.0),
    ],
)
def test_amounts(text: str, value: float) -> None:
    assert parse_amount(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "abc", "1.2.3,4,5", "12/10/2018", "RM", "9.00 9.00", "ten", None])
def test_not_amounts(text: str | None) -> None:
    assert parse_amount(text) is None


def test_find_amounts_skips_dates_times_and_percentages() -> None:
    found = find_amounts("25/12/2018 10:30 GST 6% TOTAL RM 9.00")
    assert [value for value, _, _ in found] == [9.0]
    _, start, end = found[0]
    assert "25/12/2018 10:30 GST 6% TOTAL RM 9.00"[start:end] == "RM 9.00"
    # A quantity beside a price is two numbers, not "2100.00".
    assert [value for value, _, _ in find_amounts("2 100.00")] == [2.0, 100.0]


def test_integers_booleans_strings() -> None:
    assert parse_integer("12") == 12
    assert parse_integer("1,234") == 1234
    assert parse_integer("12.5") is None
    assert parse_integer("x") is None
    assert parse_boolean("Paid") is True
    assert parse_boolean("no") is False
    assert parse_boolean("maybe") is None
    assert clean_string("  ACME \n  SDN   BHD ") == "ACME SDN BHD"
    assert clean_string("   ") is None


def test_parse_value_dispatches_on_kind() -> None:
    assert parse_value("date", "10 MAR 2018") == "2018-03-10"
    assert parse_value("number", "RM 1,234.50") == 1234.5
    assert parse_value("integer", "3") == 3
    assert parse_value("string", 12) == "12"
    assert parse_value("date", "not a date") is None
    assert parse_value("number", None) is None
