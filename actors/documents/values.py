"""Typed value parsers for extracted fields: dates in the many printed formats to ISO 8601,
money amounts to numbers, integers, booleans and strings; ``find_*`` locate them inside a line."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

from dateutil import parser as date_parser

MONTHS = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
# Both separators the same: "03-7 - 15" in a product code is not a date.
# A four-digit year may run straight into a time, as OCR prints "10-03-201823:03:06".
_YEAR = r"(?:\d{4}(?=\d{1,2}:\d{2})|\d{4}(?!\d)|\d{2}(?!\d))"
_NUMERIC_DATE = rf"\d{{1,2}}\s?(?P<sep>[/.-])\s?\d{{1,2}}\s?(?P=sep)\s?{_YEAR}"
_ISO_DATE = r"\d{4}(?P<iso_sep>[/.-])\d{1,2}(?P=iso_sep)\d{1,2}(?!\d)"
_DAY_MONTH_YEAR = rf"\d{{1,2}}(?:st|nd|rd|th)?[\s./-]*{MONTHS}[\s.,/-]*{_YEAR}"
_MONTH_DAY_YEAR = rf"{MONTHS}\s*\d{{1,2}}(?:st|nd|rd|th)?,?\s*\d{{4}}(?!\d)"
# Nothing alphanumeric may run into the match: "123/10/2018" is not "23/10/2018", nor is
# product code "HC03-7 - 15" a date.
DATE_PATTERN = re.compile(
    rf"(?<![\w/.-])(?:{_ISO_DATE}|{_NUMERIC_DATE}|{_DAY_MONTH_YEAR}|{_MONTH_DAY_YEAR})",
    re.IGNORECASE,
)
# "20180304" alone is a date; inside a line eight digits are more often a code, so only whole.
COMPACT_ISO = re.compile(r"^(19|20)\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])$")
_TIME_SUFFIX = re.compile(r"^[\s,T]*\d{1,2}:\d{2}(?::\d{2})?\s*(?:[ap]\.?m\.?)?\s*$", re.IGNORECASE)

CURRENCY = r"(?:RM|MYR|USD|US\$|EUR|GBP|SGD|S\$|A\$|\$|€|£|¥|₹)"
_NUMBER = r"\d{1,3}(?:[,.']\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d+)?|[.,]\d{1,2}"
AMOUNT_PATTERN = re.compile(
    rf"(?<![\w.,])(?P<open>\()?(?P<sign>[-−])?\s*(?:{CURRENCY}\s*)?(?P<sign2>[-−])?\s*(?P<number>{_NUMBER})"
    rf"(?:\s*{CURRENCY})?(?P<trail>-)?(?P<close>\))?(?![\w%])(?!\s%)",
    re.IGNORECASE,
)
_WHOLE_AMOUNT = re.compile(
    rf"^(?P<open>\()?(?P<sign>[-−])?\s*(?:{CURRENCY}\s*)?(?P<sign2>[-−])?\s*(?P<number>{_NUMBER})\s*"
    rf"(?:{CURRENCY})?(?P<trail>-)?(?P<close>\))?$",
    re.IGNORECASE,
)
_INTEGER = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+$|^[+-]?\d+$")
_TRUE = {"true", "yes", "y", "paid", "1", "x", "✓", "☑"}
_FALSE = {"false", "no", "n", "unpaid", "0", "☐"}


def clean_string(text: str | None) -> str | None:
    """The text with its whitespace collapsed; None when nothing is left."""
    if text is None:
        return None
    collapsed = " ".join(str(text).split())
    return collapsed or None


def _to_iso(candidate: str, dayfirst: bool) -> str | None:
    candidate = re.sub(r"\s+", " ", candidate).strip(" .,")
    yearfirst = bool(re.match(r"^\d{4}", candidate))
    try:
        when = date_parser.parse(candidate, dayfirst=dayfirst and not yearfirst, yearfirst=yearfirst)
    except (ValueError, OverflowError):
        return None
    # Two-digit years land within a century; beyond these bounds it was not a date.
    if not 1900 <= when.year <= dt.date.today().year + 30:
        return None
    return when.date().isoformat()


def find_dates(text: str, dayfirst: bool = True) -> list[tuple[str, int, int]]:
    """Every date printed in the text as (ISO date, start, end), left to right."""
    found = []
    for match in DATE_PATTERN.finditer(text):
        iso = _to_iso(match.group(0), dayfirst)
        if iso:
            found.append((iso, match.start(), match.end()))
    return found


def parse_date(text: str | None, dayfirst: bool = True) -> str | None:
    """The ISO date when the text is one date (a time may follow it), else None.

    Day-first by default (``10/03/2018`` is 10 March); ``dayfirst=False`` reads month-first.
    A bare ``20180304`` is read as year, month, day.
    A reading impossible one way (``12/28/2017``) is taken the other way.
    """
    if text is None:
        return None
    text = str(text).strip()
    if COMPACT_ISO.match(text):
        return _to_iso(f"{text[:4]}-{text[4:6]}-{text[6:]}", dayfirst)
    dates = find_dates(text, dayfirst)
    if len(dates) != 1:
        return None
    iso, start, end = dates[0]
    if text[:start].strip(" :") or not (end == len(text) or _TIME_SUFFIX.match(text[end:]) or not text[end:].strip(" .,")):
        return None
    return iso


def _number_value(number: str) -> float | None:
    number = number.replace(" ", "").replace("'", "")
    if number.startswith((".", ",")):
        number = "0" + number
    commas, dots = number.count(","), number.count(".")
    if commas and dots:
        # The separator printed last is the decimal one: 1.234,56 and 1,234.56.
        decimal = "," if number.rfind(",") > number.rfind(".") else "."
        group = "." if decimal == "," else ","
        number = number.replace(group, "").replace(decimal, ".")
    elif commas:
        head, _, tail = number.rpartition(",")
        # One comma before exactly three digits groups thousands; otherwise it is a decimal comma.
        number = number.replace(",", "") if commas > 1 or len(tail) == 3 else f"{head}.{tail}"
    elif dots > 1:
        number = number.replace(".", "")
    try:
        return float(number)
    except ValueError:
        return None


def _signed(match: re.Match[str]) -> float | None:
    value = _number_value(match.group("number"))
    if value is None:
        return None
    negative = match.group("sign") or match.group("sign2") or match.group("trail") or (match.group("open") and match.group("close"))
    return -value if negative else value


def parse_amount(text: str | None) -> float | None:
    """The number when the text is one money amount (``RM 1,234.50``, ``1.234,56 €``, ``-9.00``)."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    match = _WHOLE_AMOUNT.match(str(text).strip())
    return _signed(match) if match else None


def find_amounts(text: str) -> list[tuple[float, int, int]]:
    """Every amount printed in the text as (value, start, end), dates and times left out."""
    taken = [(start, end) for _, start, end in find_dates(text)]
    taken += [m.span() for m in re.finditer(r"\d{1,2}:\d{2}(?::\d{2})?", text)]
    found = []
    for match in AMOUNT_PATTERN.finditer(text):
        start, end = match.span()
        if any(start < t_end and t_start < end for t_start, t_end in taken):
            continue
        value = _signed(match)
        if value is not None:
            found.append((value, start, end))
    return found


def parse_integer(text: str | None) -> int | None:
    """The integer when the text is one (``12``, ``1,234``), else None."""
    if text is None or isinstance(text, bool):
        return None
    if isinstance(text, int):
        return text
    if isinstance(text, float):
        return int(text) if text.is_integer() else None
    text = str(text).strip()
    return int(text.replace(",", "")) if _INTEGER.match(text) else None


def parse_boolean(text: str | None) -> bool | None:
    """True/False for yes/no words (``paid``, ``Y``, ``true``), else None."""
    if text is None:
        return None
    if isinstance(text, bool):
        return text
    word = str(text).strip().casefold()
    return True if word in _TRUE else False if word in _FALSE else None


PARSERS: dict[str, Callable[[Any], Any]] = {
    "string": clean_string,
    "date": parse_date,
    "number": parse_amount,
    "integer": parse_integer,
    "boolean": parse_boolean,
}


def parse_value(kind: str, value: Any) -> Any:
    """The value as its field kind wants it, or None when it does not parse as that kind."""
    if value is None:
        return None
    if kind == "string" and not isinstance(value, str):
        value = str(value)
    return PARSERS[kind](value)
