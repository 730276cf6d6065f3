"""The document record store: Parquet round trip, content-addressed ids, search over text
chunks with the real MiniLM embedder, and the document_index specialist end to end."""

from __future__ import annotations

import hashlib
import itertools
import json
import os

import numpy as np
import pytest

from actors.documents.store import (
    CHUNK_CHARS,
    DocumentRecord,
    DocumentStore,
    chunk_spans,
)
from actors.embedding import Embedder
from actors.invocation import Invocation, drain
from actors.specialists.document_index import DocumentIndexSpecialist
from cluster.errors import ConfigError, NotFound, ValidationFailed
from cluster.storage import Storage

RECEIPTS = {
    "hardware.jpg": """SYARIKAT PERNIAGAAN GIN KEE
NO 290, JALAN AIR PANAS, SETAPAK, 53200 KUALA LUMPUR
GST REG: 000750337024
TAX INVOICE  CB-10019  15/01/2018 11:41
1 x STEEL WOOL SCOURER PAD 12PCS        RM 4.24
2 x PVC ELBOW JOINT 3/4 INCH            RM 3.18
1 x MASKING TAPE 24MM X 20M             RM 2.65
1 x CONCRETE NAIL 2 INCH 1KG            RM 6.36
TOTAL QTY 5   TOTAL INCL GST            RM 16.43
CASH RM 20.00   CHANGE RM 3.57
GOODS SOLD ARE NOT RETURNABLE""",
    "pharmacy.jpg": """GUARDIAN HEALTH AND BEAUTY SDN BHD
LOT G-12, MID VALLEY MEGAMALL, 59200 KUALA LUMPUR
RECEIPT NO 0045-1123-0987   03/04/2018 19:02
PANADOL ACTIVE FAST 20 TABLETS          RM 12.90
VITAMIN C 1000MG EFFERVESCENT 10S       RM 15.50
ANTISEPTIC LIQUID DETTOL 500ML          RM 16.80
FACE MASK 3 PLY 50 PCS                  RM 29.90
SUBTOTAL RM 75.10  ROUNDING RM 0.00
VISA CARD ************4417              RM 75.10
THANK YOU, GET WELL SOON""",
    "restaurant.jpg": """RESTORAN WAN SHENG
NO.2, JALAN TEMENGGUNG 19/9, 43200 CHERAS SELANGOR
TABLE 12   PAX 3   CASHIER ANNIE   21/03/2018 13:15
2 x NASI LEMAK AYAM GORENG              RM 17.00
1 x CHAR KUEY TEOW SPECIAL              RM 9.50
3 x TEH TARIK ICED                      RM 7.50
1 x ROTI CANAI BANJIR KARI              RM 3.20
SERVICE CHARGE 10%                      RM 3.72
TOTAL                                   RM 40.92
PLEASE COME AGAIN""",
    "bookshop.jpg": """POPULAR BOOK CO. (M) SDN BHD
NO 8, JALAN 7/118B, DESA TUN RAZAK, 56000 KUALA LUMPUR
INVOICE 34521   07/06/2018 16:40   MEMBER 8822 1734
OXFORD ADVANCED LEARNER'S DICTIONARY    RM 89.90
FABER-CASTELL COLOUR PENCILS 24 COLOURS RM 21.50
A4 EXERCISE BOOK 80 PAGES X 5           RM 9.00
STAEDTLER ERASER                        RM 1.60
MEMBER DISCOUNT 10%                     RM -12.20
NETT TOTAL                              RM 109.80
EXCHANGE WITHIN 7 DAYS WITH RECEIPT""",
    "petrol.jpg": """PETRONAS STESEN MINYAK SETIA ALAM
PERSIARAN SETIA DAGANG, 40170 SHAH ALAM
SALE 22/08/2018 07:55  PUMP 04  ATTENDANT 2
PRIMAX 95 FUEL 32.10 LITRE @ RM 2.20    RM 70.62
MESRA CAR WASH SHAMPOO 1L               RM 12.90
MINERAL WATER 1.5L                      RM 2.30
MESRA CARD POINTS EARNED 70
TOTAL                                   RM 85.82
DEBIT CARD APPROVED""",
    "laptop-invoice.pdf": """ALL IT HYPERMARKET SDN BHD
LOT 3.01, LOW YAT PLAZA, JALAN BUKIT BINTANG, 55100 KUALA LUMPUR
TAX INVOICE INV-2018-55621   30/09/2018
BILL TO: TAN WOON YANN, 12 JALAN DEDAP 13, JOHOR BAHRU
1 x LENOVO THINKPAD E480 14 INCH I5 8GB  RM 3,299.00
1 x LOGITECH WIRELESS MOUSE M185         RM 45.00
1 x SANDISK USB FLASH DRIVE 64GB         RM 39.90
EXTENDED WARRANTY 2 YEARS                RM 199.00
TOTAL INCL SST                           RM 3,582.90
PAYMENT: ONLINE BANK TRANSFER""",
}
# A line from the middle of each receipt, as a user who remembers it would type it.
QUERIES = {
    "hardware.jpg": "PVC elbow joint 3/4 inch",
    "pharmacy.jpg": "vitamin C 1000mg effervescent",
    "restaurant.jpg": "char kuey teow special",
    "bookshop.jpg": "Faber-Castell colour pencils",
    "petrol.jpg": "Mesra car wash shampoo",
    "laptop-invoice.pdf": "Logitech wireless mouse",
}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def unit_vectors(count: int, seed: int, dim: int = 8) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def plain_record(text: str, seed: int = 0, **fields) -> DocumentRecord:
    """A record with random vectors, for tests that do not need real embeddings."""
    spans = chunk_spans(text, 10_000)
    return DocumentRecord(sha256=sha(text), text=text, spans=spans, vectors=unit_vectors(len(spans), seed), **fields)


def embedded_record(embedder: Embedder, filename: str, text: str) -> DocumentRecord:
    spans = chunk_spans(text, 20_000)
    return DocumentRecord(
        sha256=sha(text), text=text, filename=filename, spans=spans, vectors=embedder([text[s:e] for s, e in spans])
    )


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> DocumentStore:
    uri = request.getfixturevalue("s3_uri") if request.param == "s3" else str(tmp_path / "store")
    return DocumentStore(Storage(uri))


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def test_put_get_round_trip_keeps_every_field_but_the_vectors(store):
    results = [{"page": 1, "fields": {"total": "16.43"}, "valid": True, "errors": [], "confidence": 0.93, "boxes": {}}]
    record = plain_record(
        RECEIPTS["hardware.jpg"], filename="hardware.jpg", media_type="image/jpeg", pages=1, pipeline="documents",
        language="en", fields=results, entities=[{"text": "SETAPAK", "type": "LOCATION", "start": 50, "end": 57, "score": 0.9}],
        pii_entities=[], redacted_text="[REDACTED]",
    )
    document_id = store.put(record)
    assert document_id == record.sha256[:32]
    path = store.storage.path("documents", "records", f"{document_id}.parquet")
    assert store.storage.fs.ls(os.path.dirname(path), detail=False) == [path]  # no temp file left behind
    got = store.get(document_id)
    assert "vectors" not in got and "chunk_starts" not in got
    assert got["fields"] == results and got["entities"][0]["type"] == "LOCATION" and got["pii_entities"] == []
    assert got["text"] == RECEIPTS["hardware.jpg"] and got["redacted_text"] == "[REDACTED]"
    assert (got["sha256"], got["filename"], got["media_type"], got["pages"]) == (record.sha256, "hardware.jpg", "image/jpeg", 1)
    assert (got["pipeline"], got["language"]) == ("documents", "en")
    assert got["stored_at"] == record.stored_at.isoformat() and got["stored_at"].endswith("+00:00")


def test_put_twice_overwrites_the_same_record(store):
    first = plain_record(RECEIPTS["petrol.jpg"], filename="scan-1.jpg")
    again = plain_record(RECEIPTS["petrol.jpg"], filename="scan-2.jpg")
    assert store.put(first) == store.put(again)
    assert len(store.storage.fs.ls(store.storage.path("documents", "records"))) == 1
    assert store.get(first.id)["filename"] == "scan-2.jpg"


@pytest.mark.parametrize(
    "bad", ["../../etc/passwd", "..", "a" * 31, "A" * 32, "0" * 31 + "/", "0" * 33, "0" * 32 + ".parquet", "", None]
)
def test_ids_other_than_32_lowercase_hex_are_refused_before_any_path(store, bad):
    with pytest.raises(ValidationFailed, match="document id"):
        store.get(bad)


@pytest.mark.parametrize("bad", ["0" * 63, "../" + "0" * 61, "G" * 64, None])
def test_a_record_needs_a_sha256_of_64_hex_digits(bad):
    with pytest.raises(ValidationFailed, match="sha256"):
        DocumentRecord(sha256=bad, text="x")


def test_get_of_an_absent_document_names_its_id(store):
    with pytest.raises(NotFound, match="0123456789abcdef0123456789abcdef"):
        store.get("0123456789abcdef0123456789abcdef")


def test_has_tells_whether_a_document_is_stored(store):
    record = plain_record(RECEIPTS["bookshop.jpg"])
    assert not store.has(record.sha256)
    store.put(record)
    assert store.has(record.sha256)
    assert not store.has(sha("another document"))
    with pytest.raises(ValidationFailed):
        store.has("../" * 10)


def test_chunks_cover_the_text_overlap_and_stop_at_the_limit():
    text = " ".join(f"word{i:04d}" for i in range(600))  # 5,399 characters
    spans = chunk_spans(text, 3_000)
    assert spans[0][0] == 0 and spans[-1][1] == 3_000
    assert all(end - start <= CHUNK_CHARS for start, end in spans)
    assert all(next_start < end for (_, end), (next_start, _) in itertools.pairwise(spans))  # they overlap
    assert all(text[start] != " " for start, _ in spans)
    assert chunk_spans("  \n ", 100) == [] and chunk_spans("short", 100) == [(0, 5)]


def test_search_checks_k_and_the_query_dimension(store):
    store.put(plain_record(RECEIPTS["pharmacy.jpg"]))
    for k in (0, 101, 2.0, True):
        with pytest.raises(ValidationFailed, match="k must be"):
            store.search(unit_vectors(1, 1)[0], k)
    with pytest.raises(ValidationFailed, match="dimensions"):
        store.search(np.ones(3), 5)


def test_the_query_words_lift_the_document_that_holds_them(store):
    # The second document's vector is a little off the query's; the words name it.
    first = plain_record("Kedai Maju, Jalan Ampang", seed=1)
    near = first.vectors + 0.1 * unit_vectors(1, seed=2)
    text = "Restoran Seri, Jalan Dedap 13"
    second = DocumentRecord(sha256=sha(text), text=text, spans=chunk_spans(text, 10_000), vectors=near / np.linalg.norm(near, axis=1, keepdims=True))
    store.put(first)
    store.put(second)
    query = first.vectors[0]
    assert store.search(query, 2)[0]["id"] == first.id
    hits = store.search(query, 2, "jalan dedap 13")
    assert hits[0]["id"] == second.id and hits[0]["score"] <= 1.0


def test_search_of_an_empty_store_finds_nothing(store):
    assert store.search(unit_vectors(1, 1)[0], 5) == []


def test_index_reloads_new_changed_and_removed_records(store):
    first = plain_record(RECEIPTS["pharmacy.jpg"], seed=1, filename="a.jpg")
    store.put(first)
    query = first.vectors[0]
    assert [hit["id"] for hit in store.search(query, 10)] == [first.id]

    second = plain_record(RECEIPTS["restaurant.jpg"], seed=2)
    store.put(second)
    hits = store.search(second.vectors[-1], 10)
    assert hits[0]["id"] == second.id and hits[0]["score"] == pytest.approx(1.0, abs=1e-4) and len(hits) == 2

    # Another writer (a second replica) rewrites and removes records behind this store's back.
    other = DocumentStore(store.storage)
    other.put(plain_record(RECEIPTS["pharmacy.jpg"], seed=1, filename="renamed.jpg"))
    store.storage.fs.rm(store.record_path(second.id))
    assert [(hit["id"], hit["filename"]) for hit in store.search(query, 10)] == [(first.id, "renamed.jpg")]


def test_search_reads_only_records_it_has_not_seen(store, monkeypatch):
    for seed, name in enumerate(["hardware.jpg", "pharmacy.jpg", "restaurant.jpg"]):
        store.put(plain_record(RECEIPTS[name], seed=seed))
    store.search(unit_vectors(1, 9)[0], 3)
    reads = []
    original = store._load_entry
    monkeypatch.setattr(store, "_load_entry", lambda *args: reads.append(args[0]) or original(*args))
    store.search(unit_vectors(1, 9)[0], 3)
    assert reads == []
    newest = plain_record(RECEIPTS["petrol.jpg"], seed=7)
    store.put(newest)
    store.search(unit_vectors(1, 9)[0], 3)
    assert reads == [newest.id]


@pytest.mark.slow
def test_search_finds_a_receipt_by_a_phrase_from_its_middle(store, embedder):
    ids = {name: store.put(embedded_record(embedder, name, text)) for name, text in RECEIPTS.items()}
    for name, query in QUERIES.items():
        hits = store.search(embedder([query])[0], 3)
        assert hits[0]["id"] == ids[name], (query, hits)
        assert hits[0]["filename"] == name and hits[0]["score"] > hits[1]["score"]
        assert hits[0]["snippet"] and "\n" not in hits[0]["snippet"]


@pytest.mark.slow
def test_search_finds_a_phrase_past_the_models_token_limit(store, embedder):
    # Four receipts as the pages of one expense claim: the laptop invoice lies past the
    # 256 tokens that one MiniLM vector of the whole text would see.
    claim = "\n".join(RECEIPTS[name] for name in ("petrol.jpg", "restaurant.jpg", "bookshop.jpg", "laptop-invoice.pdf"))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedder.model_path)
    assert len(tokenizer(claim[: claim.index("LENOVO")])["input_ids"]) > 256
    claim_id = store.put(embedded_record(embedder, "claim.pdf", claim))
    for name in ("hardware.jpg", "pharmacy.jpg", "petrol.jpg", "restaurant.jpg"):
        store.put(embedded_record(embedder, name, RECEIPTS[name]))
    hits = store.search(embedder(["Lenovo ThinkPad E480 laptop"])[0], 5)
    assert hits[0]["id"] == claim_id and "LENOVO" in hits[0]["snippet"]


def steps_payload(text: str) -> dict:
    return {
        "extract": {
            "pages": 1,
            "results": [{"page": 1, "fields": {"total": "85.82"}, "valid": True, "errors": [], "confidence": 0.9, "boxes": {}}],
            "text": text,
            "source": {"sha256": sha(text), "filename": "petrol.jpg", "media_type": "image/jpeg", "pages": 1},
        },
        "language": {"language": "en", "score": 0.99, "alternatives": []},
        "entities": {"entities": [{"text": "SHAH ALAM", "type": "LOCATION", "start": 60, "end": 69, "score": 0.95}]},
        "pii": {"redacted_text": text.replace("SHAH ALAM", "[LOCATION]"), "entities": [{"type": "ADDRESS", "start": 60, "end": 69}]},
    }


@pytest.mark.slow
def test_the_specialist_stores_a_pipelines_steps_and_finds_them(tmp_path):
    uri = str(tmp_path / "store")
    specialist = DocumentIndexSpecialist({"storage": uri, "pipeline": "documents"})
    text = RECEIPTS["petrol.jpg"]
    output = drain(specialist.stream(Invocation(text=json.dumps(steps_payload(text))))).output
    document_id = sha(text)[:32]
    assert output == {"id": document_id, "stored": True, "uri": f"{uri}/documents/records/{document_id}.parquet"}
    record = DocumentStore(Storage(uri)).get(document_id)
    assert (record["filename"], record["language"], record["pipeline"]) == ("petrol.jpg", "en", "documents")
    assert record["entities"][0]["text"] == "SHAH ALAM" and "[LOCATION]" in record["redacted_text"]
    assert record["fields"][0]["fields"]["total"] == "85.82"
    query = specialist._embedder(["car wash shampoo"])[0]
    assert specialist.store.search(query, 1)[0]["id"] == document_id


@pytest.mark.slow
def test_the_specialist_takes_renamed_steps_and_only_needs_extract(tmp_path):
    specialist = DocumentIndexSpecialist({"storage": str(tmp_path), "steps": {"extract": "ocr"}})
    payload = {"ocr": steps_payload(RECEIPTS["bookshop.jpg"])["extract"]}
    output = drain(specialist.stream(Invocation(text=json.dumps(payload)))).output
    record = specialist.store.get(output["id"])
    assert record["language"] is None and record["redacted_text"] is None and record["entities"] is None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "JSON"),
        ("[1, 2]", "object"),
        (json.dumps({"language": {"language": "en"}}), "'extract'"),
        (json.dumps({"extract": {"text": "x"}}), "'source'"),
        (json.dumps({"extract": {"text": "x", "source": {"sha256": "../x"}}}), "sha256"),
        (json.dumps({"extract": {"text": "x", "source": {"sha256": sha("x")}}, "pii": "oops"}), "'pii'"),
    ],
)
def test_the_specialist_refuses_input_that_is_not_a_pipelines_steps(tmp_path, text, message):
    specialist = DocumentIndexSpecialist({"storage": str(tmp_path)})
    with pytest.raises(ValidationFailed, match=message):
        drain(specialist.stream(Invocation(text=text)))


def test_the_specialist_needs_storage_and_known_step_roles():
    with pytest.raises(ConfigError, match="storage"):
        DocumentIndexSpecialist({}).load()
    with pytest.raises(ValueError):
        DocumentIndexSpecialist({"storage": "/tmp/x", "steps": {"ocr": "extract"}})
    assert not DocumentIndexSpecialist.batchable
