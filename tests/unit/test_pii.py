"""Pattern detection, checksums and redaction in actors.pii."""

from __future__ import annotations

import pytest

from actors.pii import (
    CachedRedactor,
    EntityDetector,
    PiiRedactor,
    find_pattern_entities,
    iban_valid,
    luhn_valid,
    redact,
)


def found(text: str, types: list[str] | None = None) -> list[tuple[str, str]]:
    entities = find_pattern_entities(text, types)
    for entity in entities:
        assert text[entity["start"] : entity["end"]] == entity["text"]
    return [(entity["type"], entity["text"]) for entity in entities]


@pytest.mark.parametrize(
    ("digits", "valid"),
    [("4111111111111111", True), ("4111111111111112", False), ("378282246310005", True), ("79927398713", True)],
)
def test_luhn(digits: str, valid: bool) -> None:
    assert luhn_valid(digits) is valid


@pytest.mark.parametrize(
    ("iban", "valid"),
    [
        ("GB82WEST12345698765432", True),
        ("DE89370400440532013000", True),
        ("GB82WEST12345698765433", False),
        ("DE8937040044053201300", False),
        ("ZZ82WEST12345698765432", False),
    ],
)
def test_iban_checksum_and_length(iban: str, valid: bool) -> None:
    assert iban_valid(iban) is valid


def test_credit_card_needs_luhn() -> None:
    text = "Valid 4111 1111 1111 1111, invalid 4111 1111 1111 1112, dashed 5500-0000-0000-0004."
    assert found(text) == [("CREDIT_CARD", "4111 1111 1111 1111"), ("CREDIT_CARD", "5500-0000-0000-0004")]


def test_ibans_with_and_without_spaces() -> None:
    text = "Pay GB82 WEST 1234 5698 7654 32 or DE89370400440532013000 but not GB82 WEST 1234 5698 7654 33 please."
    assert ("IBAN", "GB82 WEST 1234 5698 7654 32") in found(text)
    assert ("IBAN", "DE89370400440532013000") in found(text)
    assert all("7654 33" not in value for kind, value in found(text) if kind == "IBAN")


def test_iban_stops_at_country_length_before_a_capitalised_word() -> None:
    assert found("IBAN DE89 3704 0044 0532 0130 00 AND more") == [("IBAN", "DE89 3704 0044 0532 0130 00")]


def test_ip_addresses_are_validated() -> None:
    text = "Hosts 192.168.1.10, 999.1.1.1, 2001:db8::1 and ::1; at 10:30:45 a MAC 00:1A:2B:3C:4D:5E; v1.2.3.4.5"
    assert found(text) == [("IP_ADDRESS", "192.168.1.10"), ("IP_ADDRESS", "2001:db8::1"), ("IP_ADDRESS", "::1")]


def test_emails_and_urls() -> None:
    text = "Write to john.doe+news@example.co.uk, see https://example.com/a?b=1). Also www.test.org."
    assert found(text) == [
        ("EMAIL", "john.doe+news@example.co.uk"),
        ("URL", "https://example.com/a?b=1"),
        ("URL", "www.test.org"),
    ]


def test_url_keeps_balanced_brackets() -> None:
    assert found("(see https://en.wikipedia.org/wiki/Foo_(bar))") == [("URL", "https://en.wikipedia.org/wiki/Foo_(bar)")]


@pytest.mark.parametrize(
    "phone",
    ["+1 (415) 555-0132", "+44 20 7946 0958", "020 7946 0958", "06 12 34 56 78", "415.555.0132", "+4915112345678"],
)
def test_phone_formats(phone: str) -> None:
    assert found(f"Call {phone} today.") == [("PHONE", phone)]


@pytest.mark.parametrize(
    "text",
    [
        "Born 12-03-1990, due 2024-03-12, on 12.03.2024.",
        "Between 1999 2000 2001 prices rose.",
        "It cost $1 250 000 in 2024.",
        "Order 12345678 shipped.",
        "Ext. 555-01",
    ],
)
def test_no_phone_in_dates_years_amounts_or_ids(text: str) -> None:
    assert found(text) == []


def test_card_is_not_a_phone() -> None:
    assert found("card 4111 1111 1111 1111") == [("CREDIT_CARD", "4111 1111 1111 1111")]


def test_types_filter_after_overlap_resolution() -> None:
    text = "IBAN GB82 WEST 1234 5698 7654 32, mail a@b.io"
    assert found(text, ["PHONE"]) == []
    assert found(text, ["EMAIL"]) == [("EMAIL", "a@b.io")]


def test_redact_exact_output() -> None:
    text = "Mail jane@example.com or call +44 20 7946 0958 from 10.0.0.1."
    assert redact(text, find_pattern_entities(text)) == "Mail [EMAIL] or call [PHONE] from [IP_ADDRESS]."


def test_redact_skips_a_span_overlapping_one_already_replaced() -> None:
    entities = [
        {"text": "Ann Lee", "type": "PERSON", "start": 0, "end": 7, "score": 0.9},
        {"text": "Lee", "type": "LOCATION", "start": 4, "end": 7, "score": 0.5},
    ]
    assert redact("Ann Lee here", entities) == "Ann [LOCATION] here"


def test_redactor_without_ner_keeps_names() -> None:
    redactor = PiiRedactor(use_ner=False)
    assert redactor("Tim Cook: tim@apple.com, 4111 1111 1111 1111") == "Tim Cook: [EMAIL], [CREDIT_CARD]"


def test_redactor_with_ner_removes_names_and_places() -> None:
    redactor = PiiRedactor()
    text = "Tim Cook flew to Paris; reach him at tim@apple.com."
    assert redactor(text) == "[PERSON] flew to [LOCATION]; reach him at [EMAIL]."


@pytest.mark.parametrize("use_ner", [True, False])
def test_unknown_redactor_type_is_rejected(use_ner: bool) -> None:
    with pytest.raises(ValueError, match="SSN"):
        PiiRedactor(use_ner=use_ner, types=["SSN"])


def test_pattern_beats_an_overlapping_name_even_when_its_type_is_not_wanted() -> None:
    # spaCy tags "www.JohnSmith.com" as an organisation; the URL pattern must win.
    text = "Contact Jane at jane.doe@acme.com or visit www.JohnSmith.com"
    [everything] = EntityDetector().detect([text])
    assert [(entity["type"], entity["text"]) for entity in everything] == [
        ("PERSON", "Jane"),
        ("EMAIL", "jane.doe@acme.com"),
        ("URL", "www.JohnSmith.com"),
    ]
    assert EntityDetector(["ORGANIZATION", "PERSON"]).detect([text]) == [[everything[0]]]


def test_many_redacts_each_text_as_one_call_does() -> None:
    redactor = PiiRedactor()
    texts = ["Tim Cook flew to Paris; reach him at tim@apple.com.", "no personal data here", "call +44 20 7946 0958 now"]
    assert redactor.many(texts) == [redactor(text) for text in texts]


class CountingRedactor:
    """Test double of PiiRedactor: records each batch it is asked to redact."""

    def __init__(self):
        self.batches: list[list[str]] = []

    def many(self, texts: list[str]) -> list[str]:
        self.batches.append(list(texts))
        return [text.upper() for text in texts]


def test_cached_redactor_redacts_only_unseen_texts_once_per_batch() -> None:
    inner = CountingRedactor()
    cached = CachedRedactor(inner)
    assert cached.many(["a", "b", "a"]) == ["A", "B", "A"]
    assert cached.many(["b", "c"]) == ["B", "C"]
    assert cached("a") == "A"
    assert inner.batches == [["a", "b"], ["c"]]


def test_cached_redactor_forgets_the_least_recently_used_beyond_its_size() -> None:
    inner = CountingRedactor()
    cached = CachedRedactor(inner, maxsize=2)
    cached.many(["a", "b"])
    cached("a")  # now b is the least recently used
    cached("c")
    cached.many(["a", "b"])
    assert inner.batches == [["a", "b"], ["c"], ["b"]]
    with pytest.raises(ValueError, match="maxsize"):
        CachedRedactor(inner, maxsize=0)


def test_the_redaction_cache_keeps_no_raw_text() -> None:
    raw = "Call Maria Lopez at +44 20 7946 0958 or maria.lopez@example.com"
    cached = CachedRedactor(PiiRedactor(use_ner=False))
    redacted = cached(raw)
    assert "maria.lopez@example.com" not in redacted and cached(raw) == redacted
    held = [*cached._cache.keys(), *cached._cache.values()]
    assert all(raw not in str(item) and "maria.lopez@example.com" not in str(item) for item in held)
    assert all(isinstance(key, bytes) and len(key) == 32 for key in cached._cache)


def unique_texts(count: int) -> list[str]:
    import uuid

    return [f"Customer {uuid.uuid4().hex[:10]} of Zorblax{uuid.uuid4().hex[:6]} wrote from c{uuid.uuid4().hex[:6]}@example.com" for _ in range(count)]


def test_redacting_unique_texts_leaves_spacys_string_store_as_it_was() -> None:
    """The audit writer redacts every request: without a memory zone spaCy would keep each
    new token of each text for ever (about 5 strings a text)."""
    redactor = PiiRedactor()
    redactor.many(unique_texts(5))
    strings = redactor._detector._nlp.vocab.strings
    before = len(strings)
    redacted = redactor.many(unique_texts(300))
    assert len(strings) == before
    assert all(text.endswith(" wrote from [EMAIL]") for text in redacted)
