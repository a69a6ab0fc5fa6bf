"""The report's data: sampling, histograms and values as pure functions; the header and the cards
streamed from a real output folder (the real Sink and job state), thumbnails included."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

import anyio
import anyio.to_thread
import pyarrow as pa
import pytest
from PIL import Image

from batcher.images.sizing import ImageOptions
from batcher.images.thumbnail import Thumbnail, make_thumbnail
from batcher.report.build import (
    URL_NOT_FETCHED,
    ReportError,
    ReportOptions,
    bin_of,
    build_report,
    count_into,
    histogram_edges,
    output_fields,
    plan_sample,
    show_value,
    spread,
    write_report,
)
from batcher.report.model import Card, Header
from batcher.state import JobState
from tests.helpers import result_row, write_results
from tests.images import builders


class InProcessThumbs:
    """The image pool's ``thumbnail`` in this process (a worker thread): same function, no processes."""

    workers = 2

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def thumbnail(self, source: str, thumb_px: int, options: ImageOptions | None = None) -> Thumbnail:
        self.asked.append(source)
        return await anyio.to_thread.run_sync(make_thumbnail, source, thumb_px, options)


def _build(out: Path, options: ReportOptions | None = None) -> tuple[Header, list[Card], InProcessThumbs]:
    pool = InProcessThumbs()

    async def go() -> tuple[Header, list[Card]]:
        header, cards = await build_report(out, options or ReportOptions(), pool)
        return header, [card async for card in cards]

    header, cards = anyio.run(go)
    return header, cards, pool


# --- pure decisions ------------------------------------------------------------------------------


def test_spread_is_an_even_deterministic_stride() -> None:
    assert spread(10, 5) == (0, 2, 4, 6, 8)
    assert spread(3, 5) == (0, 1, 2)
    assert spread(1_000_000, 4) == (0, 250_000, 500_000, 750_000)
    assert spread(5, 0) == ()


def test_sample_takes_every_error_first_then_ok_rows_over_the_whole_job() -> None:
    plan = plan_sample(errors=30, ok=1_000_000, max_cards=100)
    assert plan.errors == tuple(range(30))
    assert len(plan.ok) == 70 and plan.cards == 100
    assert plan.ok[0] == 0 and plan.ok[-1] > 980_000  # spread to the end, not the first 70
    assert plan_sample(errors=500, ok=10, max_cards=100).ok == ()
    assert len(plan_sample(errors=500, ok=10, max_cards=100).errors) == 100
    assert plan_sample(errors=2, ok=3, max_cards=100) == plan_sample(2, 3, 5)
    with pytest.raises(ValueError, match="max_cards"):
        plan_sample(1, 1, -1)


def test_histogram_edges_and_bins() -> None:
    edges = histogram_edges(0.0, 2.0)
    assert len(edges) == 21 and edges[0] == 0.0 and edges[-1] == 2.0
    assert list(edges) == sorted(edges)
    assert histogram_edges(0.5, 0.5) == (0.5, 0.5)
    assert bin_of(0.0, edges) == 0 and bin_of(2.0, edges) == 19 and bin_of(1.0, edges) == 10
    values = [0.0, 0.05, 0.1, 1.0, 1.99, 2.0, None, float("nan")]
    counts = [0] * 20
    count_into(counts, pa.array(values, type=pa.float64()), edges)
    expected = [0] * 20
    for v in values:
        if v is not None and v == v:
            expected[bin_of(v, edges)] += 1
    assert counts == expected and sum(counts) == 6
    single = [0]
    count_into(single, pa.array([0.5, 0.5]), (0.5, 0.5))
    assert single == [2]
    with pytest.raises(ValueError):
        histogram_edges(2.0, 1.0)


def test_values_as_short_text() -> None:
    assert show_value(["bus", "street"]) == "bus, street"
    assert show_value({"name": "red", "hex": "#c00"}) == '{"name":"red","hex":"#c00"}'
    assert show_value([{"a": 1}]) == '[{"a":1}]'
    assert show_value(True) == "true" and show_value(None) == "" and show_value(2.5) == "2.5"
    long = show_value("x" * 1000)
    assert len(long) == 300 and long.endswith("\u2026")


def test_output_fields_flattened_struct_and_error_rows() -> None:
    row: dict[str, Any] = {"caption": "a bus", "tags": ["a", "b"], "text": "{}"}
    assert output_fields(row, ["caption", "tags"]) == (("caption", "a bus"), ("tags", "a, b"))
    assert output_fields({"caption": None, "tags": None}, ["caption", "tags"]) == ()
    assert output_fields({"data": {"caption": "x", "n": 2}}, ["data"]) == (("caption", "x"), ("n", "2"))
    assert output_fields({"data": None}, ["data"]) == ()
    assert output_fields(row, []) == ()


# --- from a real output folder -------------------------------------------------------------------


def _images(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.jpg"
    good.write_bytes(builders.oriented_jpeg(builders.quadrants((600, 400)), 6))
    corrupt = folder / "corrupt.png"
    whole = builders.encode(builders.photo((200, 150)), "PNG")
    corrupt.write_bytes(whole[: len(whole) // 2])
    return {"good": str(good), "corrupt": str(corrupt), "gone": str(folder / "gone.jpg")}


def test_header_and_cards_match_the_results_and_the_state(tmp_path: Path) -> None:
    out = tmp_path / "out"
    img = _images(tmp_path / "images")
    rows = [
        result_row(0, images=[img["good"]]),
        result_row(1, status="error", images=[img["corrupt"]]),
        result_row(2, images=[img["gone"], "https://example.com/a.jpg"]),
        *(result_row(i) for i in range(3, 12)),
    ]
    write_results(out, rows, part_rows=5)  # three parts
    header, cards, pool = _build(out, ReportOptions(thumb_px=64))
    with JobState.open(out) as state:
        summary = state.summary()
    assert header.results == header.cards == len(cards) == 12 and not header.sampled
    assert header.rows == summary.rows == 12
    assert header.by_status == summary.by_status == {"ok": 11, "error": 1}
    assert header.errors_by_type == {"decode_error": 1}
    assert header.warnings_by_type == summary.warnings
    assert header.cost_usd == pytest.approx(summary.cost_usd)
    assert (header.input_tokens, header.output_tokens) == (summary.input_tokens, summary.output_tokens)
    assert [c.id for c in cards] == [r.id for r in rows]  # results order
    assert [c.status for c in cards] == [r.status for r in rows]
    latency, cost = header.histograms
    assert (latency.label, latency.unit, cost.label, cost.unit) == ("latency", "s", "cost per row", "USD")
    assert sum(latency.counts) == sum(cost.counts) == 12 and len(latency.edges) == len(latency.counts) + 1

    good = cards[0].thumbs[0]
    assert good.src is not None and good.src.startswith("data:image/jpeg;base64,")
    assert (good.width, good.height) == (64, 42) and good.missing is None  # EXIF applied: landscape
    corrupt = cards[1].thumbs[0]
    assert corrupt.src is None and corrupt.missing is not None and corrupt.missing.startswith("truncated")
    gone, url = cards[2].thumbs
    assert gone.src is None and gone.missing == "not_found: no such file"
    assert url.src is None and url.missing == URL_NOT_FETCHED
    assert "https://example.com/a.jpg" not in pool.asked  # not fetched
    error = cards[1]
    assert (error.error_type, error.text, error.error_message) == (
        "decode_error",
        None,
        "images/1.jpg: corrupt image data",
    )
    first = cards[0]
    assert first.text == "answer 0" and first.warnings == ("small_image",)
    assert (first.input_tokens, first.output_tokens, first.attempts) == (100, 20, 1)
    assert first.latency_s == pytest.approx(0.5) and first.cost_usd == pytest.approx(0.001)
    assert cards[3].thumbs == ()


def test_past_the_cap_a_sample_every_error_then_ok_rows_spread(tmp_path: Path) -> None:
    out = tmp_path / "out"
    errors = {7, 40, 41, 77}
    write_results(
        out, [result_row(i, status="error" if i in errors else "ok") for i in range(100)], part_rows=13
    )
    header, cards, _pool = _build(out, ReportOptions(max_cards=10))
    assert (header.results, header.cards, header.sampled) == (100, 10, True)
    ids = [c.id for c in cards]
    assert ids == sorted(ids) and len(set(ids)) == 10
    assert {f"row-{i:05d}" for i in errors} <= set(ids)
    ok_numbers = [int(c.id[4:]) for c in cards if c.status == "ok"]
    assert len(ok_numbers) == 6 and ok_numbers[0] < 10 and ok_numbers[-1] > 75  # over the whole job
    assert sum(header.histograms[0].counts) == 100  # figures over every row, not the sample
    assert _build(out, ReportOptions(max_cards=10))[1] == cards  # deterministic


def test_structured_output_fields(tmp_path: Path) -> None:
    from tests.test_sink import TAG_DATA, _output

    out = tmp_path / "out"
    write_results(
        out,
        [result_row(0, data=TAG_DATA), result_row(1, status="error")],
        output=_output(),
    )
    _header, cards, _pool = _build(out)
    fields = dict(cards[0].fields)
    assert fields["caption"] == "A red bus."
    assert fields["tags"] == "bus, street"
    assert fields["dominant_colour"] == '{"name":"red","hex":"#cc0000"}'
    assert fields["has_text"] == "true"
    assert cards[1].fields == ()


def test_not_an_output_folder_is_one_clear_error(tmp_path: Path) -> None:
    for folder in (tmp_path / "missing", tmp_path):
        with pytest.raises(ReportError, match="no job state here") as refused:
            _build(folder)
        assert refused.value.exit_code == 2
    assert not (tmp_path / "missing").exists()  # nothing created


def test_a_job_with_no_results_yet_gives_a_header_and_no_cards(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_results(out, [])
    header, cards, _pool = _build(out)
    assert (header.results, header.cards, cards, header.histograms) == (0, 0, [], ())


# --- write_report --------------------------------------------------------------------------------


def stand_in(header: Header, cards: Iterable[Card], out: TextIO) -> None:
    """A minimal renderer (the page's own is batcher.report.render)."""
    out.write(f"<h1>{header.results}</h1>\n")
    for card in cards:
        out.write(f'<div data-row-id="{card.id}" data-status="{card.status}"></div>\n')


def test_write_report_renames_a_whole_page_into_place(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_results(out, [result_row(i, status="error" if i == 3 else "ok") for i in range(20)])
    stats = write_report(out, None, ReportOptions(max_cards=5, workers=1), renderer=stand_in)
    page = out / "report.html"
    assert stats.path == page and (stats.cards, stats.results, stats.sampled) == (5, 20, True)
    assert stats.bytes == page.stat().st_size and stats.seconds > 0
    html = page.read_text()
    assert html.count("data-row-id") == 5 and 'data-row-id="row-00003" data-status="error"' in html
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_a_failing_renderer_leaves_no_page_and_no_temp(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_results(out, [result_row(i) for i in range(30)])
    dest = tmp_path / "page.html"

    def broken(header: Header, cards: Iterable[Card], fh: TextIO) -> None:
        for n, _card in enumerate(cards):
            fh.write("x")
            if n == 3:
                raise RuntimeError("renderer failed")

    with pytest.raises(RuntimeError, match="renderer failed"):
        write_report(out, dest, ReportOptions(workers=1), renderer=broken)
    assert list(tmp_path.glob("*page.html*")) == []


def test_a_renderer_that_stops_early_does_not_hang(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_results(out, [result_row(i) for i in range(30)])

    def first_only(header: Header, cards: Iterable[Card], fh: TextIO) -> None:
        fh.write(next(iter(cards)).id)

    stats = write_report(out, tmp_path / "one.html", ReportOptions(workers=1), renderer=first_only)
    assert (tmp_path / "one.html").read_text() == "row-00000" and stats.cards == 30


def test_write_report_refuses_a_folder_that_is_not_a_job(tmp_path: Path) -> None:
    with pytest.raises(ReportError) as refused:
        write_report(tmp_path, renderer=stand_in)
    assert refused.value.exit_code == 2
    assert not (tmp_path / "report.html").exists()


def test_thumbnail_data_uri_decodes_to_the_jpeg(tmp_path: Path) -> None:
    out = tmp_path / "out"
    img = _images(tmp_path / "images")
    write_results(out, [result_row(0, images=[img["good"]])])
    _header, cards, _pool = _build(out, ReportOptions(thumb_px=32))
    import base64

    src = cards[0].thumbs[0].src
    assert src is not None
    image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert image.format == "JPEG" and image.size == (32, 21)


def test_a_100k_row_job_makes_a_page_within_the_cap(tmp_path: Path) -> None:
    """The parts written straight with the results schema (recording 100,000 rows through the state
    takes half a minute): every error row is on the page, the rest spread, the figures over all."""
    import pyarrow.parquet as pq

    from batcher.sink import Sink, result_schema

    out = tmp_path / "out"
    with JobState.open(out) as state:
        Sink(out, state, {})
    n = 100_000
    status = ["error" if i % 4_000 == 17 else "ok" for i in range(n)]
    columns = {
        "id": [f"row-{i:06d}" for i in range(n)],
        "status": status,
        "text": [None if s == "error" else f"answer {i}" for i, s in enumerate(status)],
        "latency_s": [0.1 + i % 100 / 10 for i in range(n)],
        "cost_usd": [0.001] * n,
    }
    schema = result_schema()
    table = pa.table(
        {f.name: pa.array(columns.get(f.name, [None] * n), type=f.type) for f in schema}, schema=schema
    )
    pq.write_table(table, out / "results" / "part-00001.parquet", row_group_size=2_000)
    header, cards, _pool = _build(out, ReportOptions(max_cards=100))
    assert (header.results, header.cards, len(cards)) == (n, 100, 100)
    assert sum(c.status == "error" for c in cards) == 25  # all of them
    assert [c.id for c in cards] == sorted(c.id for c in cards)
    assert cards[-1].id > "row-098000"  # ok rows spread to the end of the job
    latency = header.histograms[0]
    assert sum(latency.counts) == n and latency.edges[0] == pytest.approx(0.1)
    assert header.histograms[1].edges == (0.001, 0.001)  # every cost the same: one bin
