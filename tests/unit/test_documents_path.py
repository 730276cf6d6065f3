"""The document-path benchmark's plain parts: which OCR-alone layouts form the reference, the
orchestra it deploys, and the ratio it reports against the 1.25x target."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import documents_path as bench
from benchmarks.documents_path import Cell, Layout

CONFIG = Path(__file__).parents[2] / "configs" / "orchestra.yaml"


def test_the_reference_includes_every_layout_one_process_could_pick(monkeypatch):
    monkeypatch.setattr(bench, "nproc", lambda: 2)
    assert bench.alone_layouts({}, 1) == [Layout(1, None), Layout(1, 1)]
    assert bench.alone_layouts({"threads": 1}, 1) == [Layout(1, None), Layout(1, 1)]
    assert bench.alone_layouts({"threads": 3}, 1) == [Layout(1, None), Layout(1, 3), Layout(1, 1)]
    assert bench.alone_layouts({"spin": False}, 1) == [Layout(1, None), Layout(1, None, spin=False), Layout(1, 1)]
    assert Layout(1, None, spin=False).describe().endswith("not spinning")
    # Four pages in flight on two cores: one single-threaded engine per core.
    assert bench.alone_layouts({"side_by_side": 2}, 4) == [Layout(2, 1)]


def test_only_the_extract_path_is_deployed_with_the_ocr_changes(tmp_path):
    config = bench.extract_config(CONFIG, str(tmp_path), full=False, ocr_changes={"params": {"side_by_side": 3}, "autoscaling": {"max_replicas": 1}})
    assert sorted(config.agent_names()) == ["documents", "ocr"]
    assert config.storage == str(tmp_path)
    assert config.auth.rate_limit.requests_per_s == bench.BENCH_RATE_LIMIT["requests_per_s"]
    [version] = config.agent("ocr").versions
    assert version.params["side_by_side"] == 3
    assert version.autoscaling.max_replicas == 1
    assert version.autoscaling.min_replicas == 1  # merged key by key, the rest kept
    assert "\"side_by_side\": 3" in bench.ocr_summary(config) and "replicas 1-1" in bench.ocr_summary(config)


def cell(what: str, concurrency: int, pages: int, wall_s: float) -> Cell:
    return Cell(what, concurrency, pages, wall_s, [wall_s / pages] * pages)


def test_the_verdict_compares_baton_with_the_fastest_alone_layout():
    cells = [
        cell("OCR alone, 1 engine", 1, 10, 20.0),  # 0.5 pages/s
        cell("OCR alone, 1 engine, 1 thread", 1, 10, 25.0),
        cell("baton POST /v1/extract", 1, 10, 24.0),  # 1.2x slower than the best
        cell("OCR alone, 2 engines", 4, 10, 10.0),  # 1.0 pages/s
        cell("baton POST /v1/extract", 4, 10, 14.0),  # 1.4x
    ]
    for c in cells:
        c.cpu_s = {"all": 2.0 * c.pages if c.what.startswith("OCR") else 2.5 * c.pages}
    rows = bench.verdict_rows(cells)
    assert [row[0] for row in rows] == ["c=1", "c=4"]
    assert rows[0][1:5] == ["0.500", "0.417", "1.25x", "1.20x"] and rows[0][-1] == "met"
    assert rows[1][1:5] == ["1.000", "0.714", "1.25x", "1.40x"] and rows[1][-1] == "not met"
    assert bench.main_rows(cells)[1][5] == "1.25x"  # each row against its concurrency's reference


def test_a_one_page_layout_that_beats_the_side_by_side_one_is_the_reference_at_4():
    cells = [cell("OCR alone, 1 engine", 1, 10, 10.0), cell("OCR alone, 2 engines", 4, 10, 20.0)]
    assert bench.reference(cells, 4) is cells[0]
    assert bench.reference(cells, 1) is cells[0]


def test_a_second_pass_counts_into_the_first():
    first, second = cell("OCR alone", 4, 10, 10.0), cell("OCR alone", 4, 10, 30.0)
    first.cpu_s, second.cpu_s = {"this": 20.0}, {"this": 24.0, "other": 1.0}
    first.other_cores, second.other_cores = 0.0, 0.4
    first.absorb(second)
    assert (first.pages, first.wall_s, first.pages_per_s) == (20, 40.0, 0.5)  # pages over time, not a mean of rates
    assert first.cpu_s == {"this": 44.0, "other": 1.0} and first.other_cores == pytest.approx(0.3)
    assert len(first.latencies_s) == 20


def test_merged_changes_nested_keys_only():
    target = {"a": {"b": 1, "c": 2}, "d": 3}
    assert bench.merged(target, {"a": {"b": 5}, "e": 6}) == {"a": {"b": 5, "c": 2}, "d": 3, "e": 6}


@pytest.mark.parametrize("concurrency", [1, 4])
def test_cpu_rows_show_the_reference_beside_the_baton_cells(concurrency):
    baton = cell("baton POST /v1/extract", concurrency, 4, 8.0)
    baton.cpu_s = {"agent ocr.v1 replica(s)": 8.0, "baton ingress replica(s)": 0.4}
    alone = cell("OCR alone", concurrency, 4, 8.0)
    alone.cpu_s = {"benchmark process": 7.2}
    others = [cell("baton POST /v1/extract", c, 4, 8.0) for c in (1, 4) if c != concurrency]
    others += [cell("OCR alone", c, 4, 8.0) for c in (1, 4) if c != concurrency]
    header, rows = bench.cpu_rows([alone, baton, *others])
    assert header[0] == "process"
    assert rows[0][0] == "agent ocr.v1 replica(s)"
    assert rows[-2] == ["all processes of this run", "2,100"]
    assert rows[-1] == ["OCR alone, the reference layout, all processes", "1,800"]
