"""benchmarks/load.py: locust's CSV as the Markdown table of docs/benchmarks.md, and the section
written in place of the old one without touching the rest of the file."""

from benchmarks.load import HEADING, PARENT, markdown_table
from benchmarks.request_path import write_section

HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
    "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%\n"
)
# Rows as locust 2.47 writes them, deliberately out of the table's order.
STATS = HEADER + (
    "POST,extract receipt [503 unavailable],3,3,30000,30010.2,30001.5,30020.7,120.0,0.05,0.05,30000,30000,30000,30000,30000,30000,30000,30000,30000,30000,30000\n"
    "POST,extract receipt,12,0,1900,2010.5,1500.1,3300.2,900.0,0.2,0.0,1900,2000,2100,2200,2600,3000,3300,3300,3300,3300,3300\n"
    "POST,route [429 rate_limited],5,5,2.1,3.3,1.6,6.5,51.0,0.083,0.083,2,2,7,7,7,7,7,7,7,7,7\n"
    "POST,route,600,1,48,61.2,20.3,900.9,400.0,10.0,0.0166,48,55,60,66,90,140,210,350,900,900,900\n"
    "SSE,stream: first event,90,0,70,80.1,30.2,400.3,0.0,1.5,0.0,70,75,80,85,120,200,300,390,400,400,400\n"
    "POST,stream,90,0,70,80.2,30.3,400.4,700.0,1.5,0.0,70,75,80,85,120,200,300,390,400,400,400\n"
    "POST,invoke sentiment,300,0,35,40.0,15.0,300.0,200.0,5.0,0.0,35,38,40,42,55,80,120,160,300,300,300\n"
    "POST,supervisor analyst,0,0,0,0,0,0,0,0.0,0.0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A\n"
    ",Aggregated,1097,6,45,300.0,1.6,3300.2,300.0,18.283,0.1,45,50,60,70,100,200,1900,2600,3300,3300,3300\n"
)
FAILURES = (
    "Method,Name,Error,Occurrences,First Seen,Last Seen\n"
    "POST,route,CatchResponseError('500 internal'),1,2026-11-30T13:52:11Z,2026-11-30T13:52:11Z\n"
    "POST,route [429 rate_limited],CatchResponseError('429 rate_limited'),5,2026-11-30T13:52:10Z,2026-11-30T13:52:16Z\n"
)


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_one_row_per_kind_in_the_workload_order_with_the_percentiles():
    lines = markdown_table(STATS, FAILURES)
    assert cells(lines[0]) == ["request", "requests", "failures", "req/s", "p50 ms", "p95 ms", "p99 ms"]
    rows = [cells(line) for line in lines[2:] if line.startswith("|")]
    assert [row[0] for row in rows] == [
        "`route`", "`route [429 rate_limited]`", "`invoke sentiment`", "`supervisor analyst`", "`stream`",
        "`stream: first event`", "`extract receipt`", "`extract receipt [503 unavailable]`", "all HTTP requests",
    ]
    assert rows[0] == ["`route`", "600", "1", "10.00", "48", "140", "350"]
    assert rows[1] == ["`route [429 rate_limited]`", "5", "5", "0.08", "2", "7", "7"]
    assert rows[6] == ["`extract receipt`", "12", "0", "0.20", "1900", "3000", "3300"]
    assert rows[3][4:] == ["–", "–", "–"]  # no request of that kind: locust's N/A


def test_the_total_counts_http_requests_but_not_the_first_event_rows():
    total = cells(next(line for line in markdown_table(STATS) if line.startswith("| all HTTP")))
    assert total == ["all HTTP requests", str(600 + 5 + 300 + 0 + 90 + 12 + 3), "9", f"{10 + 0.083 + 5 + 1.5 + 0.2 + 0.05:.2f}", "–", "–", "–"]


def test_failures_are_listed_by_kind_with_the_error_unwrapped():
    lines = markdown_table(STATS, FAILURES)
    assert lines[-1] == "Failures: `route` 1 × 500 internal; `route [429 rate_limited]` 5 × 429 rate_limited."
    assert not any(line.startswith("Failures") for line in markdown_table(STATS))


def test_the_section_replaces_its_old_text_and_keeps_the_rest(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\n## Load\n\n{HEADING}\n\nold table\n\n### Shedding\n\nkept\n\n## Training\n\nkept too\n")
    write_section(f"{HEADING}\n\nnew table\n", doc, heading=HEADING, parent=PARENT)
    text = doc.read_text()
    assert "old table" not in text and text.count(HEADING) == 1
    assert text.index("new table") < text.index("### Shedding") < text.index("## Training")
    assert "kept\n" in text and "kept too\n" in text


def test_a_missing_section_goes_at_the_end_of_load_or_under_a_new_load_heading(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Load\n\n### Shedding\n\nkept\n\n## Training\n\nkept too\n")
    write_section(f"{HEADING}\n\ntable\n", doc, heading=HEADING, parent=PARENT)
    text = doc.read_text()
    assert text.index("### Shedding") < text.index(HEADING) < text.index("## Training")
    other = tmp_path / "other.md"
    other.write_text("# Benchmarks\n\n## Training\n\nkept\n")
    write_section(f"{HEADING}\n\ntable\n", other, heading=HEADING, parent=PARENT)
    assert other.read_text() == f"# Benchmarks\n\n## Training\n\nkept\n\n## Load\n\n{HEADING}\n\ntable\n"
