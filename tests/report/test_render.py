"""The report page as text: escaping, data-* attributes, the sample line, streaming, no URL to
fetch, and the pure decisions (how figures read, histogram bars, which image sources are used)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest

from batcher.report.model import Card, Header, Histogram, Thumb
from batcher.report.render import (
    content_security_policy,
    data_number,
    fmt_int,
    fmt_rate,
    fmt_seconds,
    fmt_usd,
    histogram_bars,
    image_src,
    render,
)
from tests.helpers import report_cards, report_header, report_thumb


def page(header: Header, cards: list[Card]) -> str:
    out = io.StringIO()
    render(header, iter(cards), out)
    return out.getvalue()


class Elements(HTMLParser):
    """Every start tag as (tag, attributes), and the text inside each <style>/<script>."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.raw: dict[str, list[str]] = {"style": [], "script": []}
        self._in: str | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in self.raw:
            self._in = tag
            self.raw[tag].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in:
            self.raw[self._in][-1] += data

    def cards(self) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == "article"]


# --- escaping ------------------------------------------------------------------------------------

#: Each field gets its own marker, so a field that is not escaped is named by the failure.
EVIL = "<b>{}</b><script>alert(1)</script>\"'&amp;"


def _evil_page() -> tuple[str, dict[str, str]]:
    raw = {
        name: EVIL.format(name)
        for name in (
            "id",
            "text",
            "field_name",
            "field_value",
            "error_type",
            "error_message",
            "warning",
            "source",
            "missing",
            "job",
            "out_dir",
            "status_key",
            "error_key",
            "warning_key",
            "histogram",
        )
    }
    cards = [
        Card(
            id=raw["id"],
            status="error",
            text=raw["text"],
            fields=((raw["field_name"], raw["field_value"]),),
            error_type=raw["error_type"],
            error_message=raw["error_message"],
            warnings=(raw["warning"],),
            thumbs=(
                Thumb(source=raw["source"], src=None, missing=raw["missing"]),
                report_thumb(1, source=raw["source"]),
            ),
        )
    ]
    header = report_header(cards, job=raw["job"])
    header = Header(
        **{
            **{f: getattr(header, f) for f in header.__dataclass_fields__},
            "out_dir": raw["out_dir"],
            "by_status": {raw["status_key"]: 1},
            "errors_by_type": {raw["error_key"]: 1},
            "warnings_by_type": {raw["warning_key"]: 1},
            "histograms": (Histogram(raw["histogram"], "s", (0.0, 1.0), (1,)),),
        }
    )
    return page(header, cards), raw


def test_every_field_from_the_results_is_escaped() -> None:
    html, raw = _evil_page()
    # nothing from the results is markup: no <b>, no injected <script> (the page has exactly one)
    assert "<b>" not in html
    assert "alert(1)</script>" not in html
    assert html.count("<script") == 1
    for name, value in raw.items():
        escaped = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        escaped = escaped.replace('"', "&#34;").replace("'", "&#39;")
        assert escaped in html, f"{name} is not on the page, escaped"


def test_attributes_hold_the_raw_values() -> None:
    # A parser reads back exactly the raw strings: no attribute was broken out of.
    html, raw = _evil_page()
    elements = Elements(html)
    (card,) = elements.cards()
    assert card["data-row-id"] == raw["id"]
    assert card["data-error-type"] == raw["error_type"]
    assert json.loads(card["data-warnings"] or "") == [raw["warning"]]
    alts = [a.get("alt") for t, a in elements.tags if t == "img"]
    assert alts == [raw["source"]]
    assert len(elements.raw["script"]) == 1


# --- data-* attributes, figures, the sample line -------------------------------------------------


def test_each_card_carries_its_data_attributes() -> None:
    cards = [
        Card(
            id="a1",
            status="ok",
            text="a cat",
            warnings=("small_image", "truncated_accepted"),
            cost_usd=0.00125,
            latency_s=1.5,
        ),
        Card(id="a2", status="error", text=None, error_type="api_timeout", error_message="gave up"),
    ]
    (ok, error) = Elements(page(report_header(cards), cards)).cards()
    assert ok["data-row-id"] == "a1"
    assert ok["data-status"] == "ok"
    assert ok["data-error-type"] == ""
    assert json.loads(ok["data-warnings"] or "") == ["small_image", "truncated_accepted"]
    assert float(ok["data-cost"] or "") == 0.00125
    assert float(ok["data-latency"] or "") == 1.5
    assert ok["data-length"] == "5"
    assert error["data-status"] == "error"
    assert error["data-error-type"] == "api_timeout"
    # a missing figure is empty (the page sorts it last), not 0 or "None"
    assert error["data-cost"] == error["data-latency"] == ""
    assert error["data-length"] == "0"
    assert json.loads(error["data-warnings"] or "") == []


def test_fields_are_a_table_and_the_raw_answer_is_collapsed() -> None:
    cards = report_cards(2, errors_every=0, fields=True)
    html = page(report_header(cards), cards)
    assert html.count('<table class="fields">') == 2
    assert '<tr><th scope="row">caption</th><td>A red-roofed farmhouse' in html
    assert html.count('<details class="raw"><summary>raw answer</summary>') == 2


def test_failed_rows_show_their_error_type_and_message() -> None:
    card = Card(id="x", status="error", text=None, error_type="image_unreadable", error_message="no JPEG EOI")
    html = page(report_header([card]), [card])
    assert '<code class="error-type">image_unreadable</code>' in html
    assert '<span class="error-message">no JPEG EOI</span>' in html


def test_a_sample_says_so_and_of_how_many() -> None:
    cards = report_cards(5)
    assert "A sample of 5 of 1,234 results" in page(report_header(cards, results=1234), cards)
    assert "A sample of" not in page(report_header(cards), cards)


def test_header_figures() -> None:
    cards = report_cards(14)
    html = page(report_header(cards), cards)
    assert "run time</dt><dd>1h 12m</dd>" in html
    assert "cache hit rate</dt><dd>50.0%</dd>" in html
    # two histograms, one bar per bin, each with a tooltip naming its range and count
    assert html.count("<svg ") == 2
    assert html.count("<rect ") == 24
    assert re.search(r"<title>[^<]+ to [^<]+: \d+</title>", html)


def test_no_cards_still_makes_a_page() -> None:
    html = page(report_header([]), [])
    assert Elements(html).cards() == []
    assert html.rstrip().endswith("</html>")


# --- streaming -----------------------------------------------------------------------------------


def test_cards_are_consumed_one_at_a_time_and_written_as_they_come() -> None:
    cards = report_cards(30)
    out = io.StringIO()
    pulled: list[str] = []

    def stream() -> Iterator[Card]:
        for card in cards:
            # each card before this one is already on the page when this one is asked for
            if pulled:
                assert f'data-row-id="{pulled[-1]}"' in out.getvalue()
            assert f'data-row-id="{card.id}"' not in out.getvalue()
            pulled.append(card.id)
            yield card

    render(report_header(cards), stream(), out)
    assert pulled == [c.id for c in cards]
    assert len(Elements(out.getvalue()).cards()) == 30


# --- self-contained ------------------------------------------------------------------------------


def test_nothing_on_the_page_points_anywhere_else() -> None:
    cards = [
        *report_cards(12),
        # a src that is not an inline image is never used: the thumbnail shows as missing
        Card(
            id="u",
            status="ok",
            text="x",
            thumbs=(Thumb(source="https://example.com/a.jpg", src="https://example.com/a.jpg"),),
        ),
    ]
    html = page(report_header(cards), cards)
    urls = [
        value
        for _, attrs in Elements(html).tags
        for name, value in attrs.items()
        if name in {"src", "href", "srcset", "action", "poster", "data"} and value is not None
    ]
    assert urls and all(u.startswith(("data:image/", "data:,")) for u in urls), urls
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", html)
    assert "url(" not in html and "@import" not in html


def test_the_policy_allows_exactly_the_page_s_own_style_and_script() -> None:
    cards = report_cards(3)
    elements = Elements(page(report_header(cards), cards))
    (policy,) = [
        a["content"]
        for t, a in elements.tags
        if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"
    ]
    assert policy is not None
    (style,), (script,) = elements.raw["style"], elements.raw["script"]
    assert policy == content_security_policy(style, script)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy
    assert "default-src 'none'" in policy and "img-src data:;" in policy


# --- pure decisions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "–"), (0, "$0"), (1234.5, "$1,234.50"), (0.0123, "$0.0123"), (0.000123, "$0.000123"),
     (0.5, "$0.500"), (1e-9, "<$0.000001"), (float("nan"), "–")],
)  # fmt: skip
def test_fmt_usd(value: float | None, text: str) -> None:
    assert fmt_usd(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "–"), (0.85, "850 ms"), (12.34, "12.3 s"), (725, "12m 05s"), (11045, "3h 04m"),
     (59.96, "60.0 s"), (-1, "–")],
)  # fmt: skip
def test_fmt_seconds(value: float | None, text: str) -> None:
    assert fmt_seconds(value) == text


def test_fmt_int_rate_and_data_numbers() -> None:
    assert fmt_int(1234567) == "1,234,567"
    assert fmt_int(None) == "–"
    assert fmt_rate(0.875) == "87.5%"
    assert fmt_rate(None) == "no cache"
    assert data_number(0.1) == "0.1"
    assert data_number(3) == "3"
    assert data_number(None) == data_number(float("inf")) == ""


def test_only_inline_images_are_used() -> None:
    assert image_src("data:image/jpeg;base64,AAAA") == "data:image/jpeg;base64,AAAA"
    for bad in (None, "https://x/a.jpg", "//x/a.jpg", "javascript:alert(1)", "data:text/html;base64,AA"):
        assert image_src(bad) is None


def test_histogram_bars() -> None:
    bars = histogram_bars(Histogram("latency", "s", (0.0, 1.0, 2.0, 3.0), (4, 0, 1)), 300, 40)
    assert [b.height for b in bars] == [40.0, 0.0, 10.0]
    assert [b.y for b in bars] == [0.0, 40.0, 30.0]
    assert [b.x for b in bars] == [0.0, 100.0, 200.0]
    assert [(b.low, b.high, b.count) for b in bars] == [(0.0, 1.0, 4), (1.0, 2.0, 0), (2.0, 3.0, 1)]
    # a count far below the largest still shows
    tiny = histogram_bars(Histogram("cost", "USD", (0.0, 1.0, 2.0), (10_000, 1)), 100, 40)
    assert tiny[1].height == 1.0
    assert histogram_bars(Histogram("x", "s", (), ()), 100, 40) == ()
    assert all(b.height == 0 for b in histogram_bars(Histogram("x", "s", (0.0, 1.0), (0,)), 100, 40))
    with pytest.raises(ValueError, match="3 edges for 1 bins"):
        histogram_bars(Histogram("x", "s", (0.0, 1.0, 2.0), (1,)), 100, 40)
