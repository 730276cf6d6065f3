"""The OCR specialist: a real receipt and a drawn page read back in reading order, text
layers passed through without OCR, the request contract, and tesseract's absence."""

from __future__ import annotations

import io
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fpdf import FPDF
from PIL import Image, ImageDraw, ImageFont

from actors.documents.model import Line, Page, PageImage, Word
from actors.documents.pages import decode_pages
from actors.invocation import Document, Invocation, drain
from actors.specialists import ocr
from actors.specialists.ocr import OcrParams, OcrSpecialist
from cluster.config import DocumentLimits
from cluster.errors import ConfigError, ValidationFailed

DATASET = Path(__file__).parents[3] / "shared/datasets/sroie-dev"


@pytest.fixture(scope="module")
def specialist() -> OcrSpecialist:
    loaded = OcrSpecialist({"threads": 2})
    loaded.load()
    return loaded


def drawn_page(rows: list[tuple[int, int, str]], size: tuple[int, int] = (900, 400)) -> PageImage:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=40)
    for x, y, text in rows:
        draw.text((x, y), text, fill="black", font=font)
    return PageImage(number=1, width=size[0], height=size[1], pixels=np.asarray(image))


def text_pdf() -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=14)
    pdf.cell(0, 10, "A page whose text layer makes OCR needless", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


class SpyEngine:
    made: list[SpyEngine] = []

    def __init__(self, threads: int | None = None, spin: bool = True):
        self.threads, self.spin, self.calls = threads, spin, 0
        SpyEngine.made.append(self)

    def lines(self, pixels: np.ndarray) -> tuple[list[Line], list[float]]:
        self.calls += 1
        return [Line(text="spied", box=(1, 1, 9, 9), score=0.5)], [0.0]


@pytest.fixture
def spied(monkeypatch) -> OcrSpecialist:
    monkeypatch.setattr(ocr, "RapidOcrEngine", SpyEngine)
    SpyEngine.made = []
    return OcrSpecialist()


# ---- real OCR ----


@pytest.mark.slow
def test_a_scanned_receipt_is_read_in_reading_order(specialist):
    if not DATASET.is_dir():
        pytest.skip(f"the SROIE sample receipts are not at {DATASET}")
    [image] = decode_pages(Document((DATASET / "001.jpg").read_bytes(), "image/jpeg"), DocumentLimits())
    page = specialist.read_page(image)
    texts = [line.text for line in page.lines]
    assert page.source == "ocr" and (page.width, page.height) == (439, 1004)
    assert "INDAH GIFT & HOME DECO" in texts and "60.30" in texts
    company, total = texts.index("INDAH GIFT & HOME DECO"), texts.index("60.30")
    assert company < texts.index("TAMAN JOHOR JAYA,") < total
    # Tel and Fax share one printed row: separate lines, left before right.
    assert texts.index("Fax:07-3558160") == texts.index("Tel:07-3507405") + 1
    tops = [line.box[1] for line in page.lines]
    assert all(later > earlier - 15 for earlier, later in zip(tops, tops[1:]))
    company_line = page.lines[company]
    assert [word.text for word in company_line.words] == ["INDAH", "GIFT", "&", "HOME", "DECO"]
    assert all(company_line.box[0] - 1 <= w.box[0] < w.box[2] <= company_line.box[2] + 1 for w in company_line.words)


@pytest.mark.slow
def test_a_drawn_page_is_read_back_row_by_row(specialist):
    page = specialist.read_page(drawn_page([(40, 40, "INVOICE 4711"), (600, 200, "12.50"), (40, 200, "TOTAL DUE")]))
    assert [line.text for line in page.lines] == ["INVOICE 4711", "TOTAL DUE", "12.50"]
    assert all(line.score > 0.8 for line in page.lines)
    assert [word.text for word in page.lines[0].words] == ["INVOICE", "4711"]


@pytest.mark.slow
def test_a_blank_page_has_no_lines(specialist):
    page = specialist.read_page(PageImage(number=3, width=200, height=100, pixels=np.full((100, 200, 3), 255, np.uint8)))
    assert (page.number, page.lines, page.source) == (3, [], "ocr")


@pytest.mark.slow
def test_the_thread_count_reaches_onnxruntime(specialist):
    assert specialist._engines._wide._ocr.cfg.EngineConfig.onnxruntime.intra_op_num_threads == 2


def spinning(engine: ocr.RapidOcrEngine) -> list[str | None]:
    """Each of the engine's sessions' allow_spinning entry (None: onnxruntime's default, spinning)."""
    entries = []
    for stage in (engine._ocr.text_det, engine._ocr.text_cls, engine._ocr.text_rec):
        options = stage.session.session.get_session_options()
        try:
            entries.append(options.get_session_config_entry("session.intra_op.allow_spinning"))
        except RuntimeError:  # no such entry
            entries.append(None)
    return entries


@pytest.mark.slow
def test_spinning_can_be_turned_off_for_an_engine_and_only_for_it(specialist):
    still = ocr.RapidOcrEngine(2, spin=False)
    assert spinning(still) == ["0", "0", "0"]
    assert spinning(specialist._engines._wide) == [None, None, None]
    assert spinning(ocr.RapidOcrEngine(2)) == [None, None, None]  # the wrapper is gone once the models are open
    assert OcrParams().spin is True


@pytest.mark.slow
def test_side_by_side_engines_are_single_threaded_and_read_alike(specialist):
    reader = OcrSpecialist({"side_by_side": 2})
    reader.load()
    narrow = reader._engines._free
    assert [engine._ocr.cfg.EngineConfig.onnxruntime.intra_op_num_threads for engine in narrow] == [1, 1]
    assert reader._engines._wide._ocr.cfg.EngineConfig.onnxruntime.intra_op_num_threads == -1  # onnxruntime's default
    page = drawn_page([(40, 40, "INVOICE 4711"), (40, 200, "TOTAL DUE")])
    expected = [line.text for line in specialist.read_page(page).lines]
    assert [line.text for line in narrow[0].lines(page.pixels)[0]] == expected


@pytest.mark.slow
def test_stream_reads_the_chosen_pages_of_a_document(specialist):
    pages = [Image.new("RGB", (600, 200), "white") for _ in range(2)]
    ImageDraw.Draw(pages[1]).text((30, 60), "SECOND PAGE", fill="black", font=ImageFont.load_default(size=50))
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    invocation = Invocation(document=Document(buffer.getvalue(), "image/tiff"), options={"pages": [2]})
    result = drain(specialist.stream(invocation))
    [page] = result.output["pages"]
    assert page["page"] == 2 and [line["text"] for line in page["lines"]] == ["SECOND PAGE"]
    assert result.label is None and result.score == page["lines"][0]["score"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract is not installed")
def test_tesseract_reads_a_drawn_page():
    reader = OcrSpecialist({"engine": "tesseract"})
    page = reader.read_page(drawn_page([(40, 40, "INVOICE 4711"), (40, 200, "TOTAL DUE")]))
    assert [line.text for line in page.lines] == ["INVOICE 4711", "TOTAL DUE"]


# ---- no OCR model needed ----


def test_a_text_layer_page_passes_through_without_ocr(spied):
    layer = Page(number=1, width=10, height=10, lines=[Line("kept", (0, 0, 5, 5), 1.0)], source="text_layer")
    assert spied.read_page(PageImage(number=1, width=10, height=10, text_layer=layer)) is layer
    result = drain(spied.stream(Invocation(document=Document(text_pdf(), "application/pdf"))))
    [page] = result.output["pages"]
    assert page["source"] == "text_layer" and page["lines"][0]["text"] == "A page whose text layer makes OCR needless"
    [engine] = SpyEngine.made
    assert engine.calls == 0
    spied.read_page(PageImage(number=1, width=4, height=4, pixels=np.zeros((4, 4, 3), np.uint8)))
    assert engine.calls == 1


def test_text_input_and_unknown_options_are_refused(spied):
    with pytest.raises(ValidationFailed, match="the ocr agent reads a document"):
        drain(spied.stream(Invocation(text="read me")))
    with pytest.raises(ValidationFailed, match="reads a document"):
        spied.predict(["read me"])
    document = Document(text_pdf(), "application/pdf")
    with pytest.raises(ValidationFailed, match=r"options\.dpi: unknown option; allowed: pages"):
        drain(spied.stream(Invocation(document=document, options={"dpi": 300})))
    with pytest.raises(ValidationFailed, match=r"options\.pages\[0\]"):
        drain(spied.stream(Invocation(document=document, options={"pages": [0]})))


def test_signals_are_the_mean_line_score():
    output = {"pages": [{"lines": [{"score": 0.5}, {"score": 1.0}]}, {"lines": []}]}
    assert OcrSpecialist().signals(output) == (None, 0.75)
    assert OcrSpecialist().signals({"pages": [{"lines": []}]}) == (None, None)


def test_describe_names_the_engine_and_models():
    described = OcrSpecialist().describe()
    assert described["kind"] == "ocr" and described["model"].startswith("rapidocr 3.10.0 (PP-OCRv6 small")
    assert described["params"]["limits"]["pdf_dpi"] == DocumentLimits().pdf_dpi
    assert OcrSpecialist.reads_documents  # so the deployment builder passes the orchestra's limits


def test_missing_tesseract_is_a_clear_load_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="tesseract is not installed"):
        OcrSpecialist({"engine": "tesseract"}).load()


def test_tesseract_tsv_becomes_lines_with_word_boxes():
    tsv = (
        "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n"
        "4\t1\t1\t1\t1\t0\t10\t20\t200\t30\t-1\t\n"
        "5\t1\t1\t1\t1\t1\t10\t20\t80\t30\t96.5\tTOTAL\n"
        "5\t1\t1\t1\t1\t2\t120\t21\t90\t29\t90.5\t12.50\n"
        "5\t1\t1\t1\t2\t1\t10\t60\t50\t30\t-1\t \n"
        "5\t1\t2\t1\t1\t1\t10\t100\t70\t30\t80\t\"quoted\n"
    )
    total, quoted = ocr._tesseract_lines(tsv)
    assert (total.text, total.box, total.score) == ("TOTAL 12.50", (10, 20, 210, 50), pytest.approx(0.935))
    assert total.words == (Word("TOTAL", (10, 20, 90, 50), 0.965), Word("12.50", (120, 21, 210, 50), 0.905))
    assert quoted.text == '"quoted'


def test_lines_without_engine_word_boxes_get_spread_words():
    # rapidocr omits the word entry of a line it found no word boxes for; later lines keep theirs.
    entries = [(("B", 0.9, [[50, 0], [60, 0], [60, 10], [50, 10]]),)]
    first, second = ocr._aligned_words(["A1 A2", "B"], entries)
    assert first == ()
    assert second == (Word("B", (50.0, 0.0, 60.0, 10.0), 0.9),)
    spread = ocr._spread_words("AB CD", (0, 0, 50, 10), 0.7)
    assert spread == (Word("AB", (0, 0, 20, 10), 0.7), Word("CD", (30, 0, 50, 10), 0.7))


def test_slopes_are_the_edges_of_long_detections():
    downhill = [[0, 0], [500, 20], [500, 60], [0, 40]]  # 0.04
    level = [[0, 100], [400, 100], [400, 130], [0, 130]]
    short = [[0, 200], [40, 230], [40, 260], [0, 230]]  # too short to trust: gets the median
    assert ocr._slopes([downhill, downhill, level, short]) == pytest.approx([0.04, 0.04, 0.0, 0.04])
    assert ocr._slopes([short]) == [0.0]


def test_tesseract_slopes_go_through_word_centres():
    words = tuple(Word(str(i), (100 * i, 4 * i, 100 * i + 50, 4 * i + 20), 0.9) for i in range(4))
    lines = [Line("0 1 2 3", (0, 0, 350, 32), 0.9, words), Line("0 1", (0, 0, 150, 24), 0.9, words[:2])]
    assert ocr._word_slopes(lines) == pytest.approx([0.04, 0.04])


# ---- the replica's engines: a lone page across the cores, overlapping pages side by side ----


class GatedEngine:
    """A test double: reads a page only when the test opens its gate, and logs who ran with whom."""

    def __init__(self, name: str, log: list, running: set, lock: threading.Lock):
        self.name, self.log, self.running, self.lock = name, log, running, lock
        self.gate = threading.Event()

    def lines(self, pixels: np.ndarray) -> tuple[list[Line], list[float]]:
        with self.lock:
            self.running.add(self.name)
            self.log.append(frozenset(self.running))
        self.gate.wait(timeout=10)
        with self.lock:
            self.running.discard(self.name)
        return [], []


@pytest.fixture
def engines():
    log, running, lock = [], set(), threading.Lock()
    wide = GatedEngine("wide", log, running, lock)
    narrow = [GatedEngine(f"narrow{i}", log, running, lock) for i in range(2)]
    return ocr.EngineSet(wide, narrow), wide, narrow, log


def read_in_thread(engine_set: ocr.EngineSet, used: list) -> threading.Thread:
    def read() -> None:
        with engine_set.engine() as engine:
            used.append(engine.name)
            engine.lines(np.zeros((1, 1, 3), np.uint8))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def wait_until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_lone_page_gets_the_wide_engine(engines):
    engine_set, wide, _, _ = engines
    wide.gate.set()
    used = []
    read_in_thread(engine_set, used).join(5)
    read_in_thread(engine_set, used).join(5)
    assert used == ["wide", "wide"]


def test_overlapping_pages_run_side_by_side_and_never_beside_the_wide_engine(engines):
    engine_set, wide, narrow, log = engines
    used: list[str] = []
    first = read_in_thread(engine_set, used)
    wait_until(lambda: used == ["wide"])
    others = [read_in_thread(engine_set, used) for _ in range(3)]
    time.sleep(0.1)
    assert used == ["wide"]  # the three wait: the wide engine holds the cores
    wide.gate.set()
    first.join(5)
    wait_until(lambda: len(used) == 3)
    assert sorted(used[1:]) == ["narrow0", "narrow1"]  # three in flight: two side by side, the third waits
    narrow[0].gate.set()  # one side-by-side page ends while the other still runs
    wait_until(lambda: len(used) == 4)
    assert used[3] == "narrow0"  # it overlaps the running page, so it stays single-threaded
    narrow[1].gate.set()
    for thread in others:
        thread.join(5)
    assert max(len(running) for running in log) == 2
    assert not any("wide" in running and len(running) > 1 for running in log)


def test_a_page_that_fails_gives_its_engine_back(engines):
    engine_set, wide, _, _ = engines
    with pytest.raises(RuntimeError), engine_set.engine():
        raise RuntimeError("broken page")
    wide.gate.set()
    used: list[str] = []
    read_in_thread(engine_set, used).join(5)
    assert used == ["wide"]


def test_side_by_side_builds_single_threaded_engines_beside_the_wide_one(monkeypatch):
    monkeypatch.setattr(ocr, "RapidOcrEngine", SpyEngine)
    SpyEngine.made = []
    OcrSpecialist({"threads": 2, "side_by_side": 3, "spin": False}).load()
    assert [engine.threads for engine in SpyEngine.made] == [1, 1, 1, 2]
    assert {engine.spin for engine in SpyEngine.made} == {False}
    SpyEngine.made = []
    OcrSpecialist({"threads": 2}).load()
    assert [engine.threads for engine in SpyEngine.made] == [2]  # the default: one engine, one page at a time
