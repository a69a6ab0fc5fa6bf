"""The report page in a real headless Chromium (the system's ``chromium``, driven by Playwright):
it loads offline with no failed request and no console error, its cards match, the filters, search
and sort work, an answer holding HTML is text, and the large view opens and closes.

Skipped, with the reason, where Playwright or Chromium is absent (``.ci/run`` installs Chromium)."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from batcher.report.model import Card, Header
from batcher.report.render import render
from tests.helpers import report_cards, report_header, report_thumb

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (the [test] extra)")
expect = sync_api.expect


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module."""
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; .ci/run does)")
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=path, headless=True)
        yield launched
        launched.close()


@dataclass
class Opened:
    """A report page open in the browser, and what it did."""

    page: Page
    url: str
    console: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        """No console message of any kind (an error, a CSP violation, a warning), no uncaught
        exception, no dialog, and no request but the page itself."""
        assert self.console == []
        assert self.dialogs == []
        assert self.failed == []
        assert [u for u in self.requests if u != self.url and not u.startswith("data:")] == []

    def cards(self) -> list[dict[str, Any]]:
        """The cards in page order: id, status, and whether each is shown."""
        result: list[dict[str, Any]] = self.page.eval_on_selector_all(
            "article.card",
            "els => els.map(e => ({id: e.dataset.rowId, status: e.dataset.status,"
            " shown: !e.hidden && e.offsetParent !== null}))",
        )
        return result

    def shown(self) -> list[str]:
        return [c["id"] for c in self.cards() if c["shown"]]


@pytest.fixture
def open_page(browser: Browser, tmp_path: Path) -> Iterator[Any]:
    pages: list[Page] = []

    def open_(header: Header | Path, cards: list[Card] | None = None) -> Opened:
        """Render ``header`` and ``cards`` to a file and open it; or open the page file ``header``."""
        if isinstance(header, Path):
            path = header
        else:
            path = tmp_path / f"report{len(pages)}.html"
            out = io.StringIO()
            render(header, iter(cards or []), out)
            path.write_text(out.getvalue(), encoding="utf-8")
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        pages.append(page)
        opened = Opened(page=page, url=path.as_uri())
        page.on("console", lambda m: opened.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: opened.console.append(f"uncaught: {e}"))
        page.on("request", lambda r: opened.requests.append(r.url))
        page.on("requestfailed", lambda r: opened.failed.append(r.url))

        def on_dialog(d: Any) -> None:
            opened.dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", on_dialog)
        page.goto(opened.url, wait_until="load")
        return opened

    yield open_
    for page in pages:
        page.close()


CARDS = report_cards(40)


def test_the_page_loads_offline_with_every_card(open_page: Any) -> None:
    opened = open_page(report_header(CARDS), CARDS)
    assert [(c["id"], c["status"]) for c in opened.cards()] == [(c.id, c.status) for c in CARDS]
    assert opened.shown() == [c.id for c in CARDS]
    assert opened.page.locator("#shown").inner_text() == "40 of 40 cards shown"
    # the thumbnails decoded (an image that failed would have no natural size)
    sizes = opened.page.eval_on_selector_all("article.card img", "els => els.map(e => e.naturalWidth)")
    assert len(sizes) == sum(1 for c in CARDS for t in c.thumbs if t.src) and all(sizes)
    assert opened.page.locator(".thumb.missing").first.inner_text().startswith("file not found")
    opened.assert_clean()


def test_filters_hide_exactly_the_other_cards(open_page: Any) -> None:
    opened = open_page(report_header(CARDS), CARDS)
    page = opened.page
    page.select_option("#f-status", "error")
    errors = [c.id for c in CARDS if c.status == "error"]
    assert errors and opened.shown() == errors
    assert page.locator("#shown").inner_text() == f"{len(errors)} of 40 cards shown"

    page.select_option("#f-status", "")
    page.select_option("#f-error", "api_timeout")
    assert opened.shown() == [c.id for c in CARDS if c.error_type == "api_timeout"]

    page.select_option("#f-error", "")
    page.select_option("#f-warning", "truncated_accepted")
    assert opened.shown() == [c.id for c in CARDS if "truncated_accepted" in c.warnings]
    page.select_option("#f-warning", label=f"any ({sum(1 for c in CARDS if c.warnings)})")
    assert opened.shown() == [c.id for c in CARDS if c.warnings]

    page.select_option("#f-warning", index=0)
    assert len(opened.shown()) == 40
    opened.assert_clean()


def test_search_over_answers_and_ids(open_page: Any) -> None:
    opened = open_page(report_header(CARDS), CARDS)
    opened.page.fill("#f-text", "SUNSET over")
    assert opened.shown() == [c.id for c in CARDS if c.text and "sunset over" in c.text.lower()]
    opened.page.fill("#f-text", "row-00012")
    assert opened.shown() == ["row-00012"]
    opened.page.fill("#f-text", "nothing like this")
    assert opened.shown() == []
    assert opened.page.locator("#none").is_visible()
    opened.assert_clean()


def test_sort_by_cost_latency_length_and_id(open_page: Any) -> None:
    cards = [
        Card(id="r10", status="ok", text="a longer answer", cost_usd=0.003, latency_s=2.0),
        Card(id="r9", status="ok", text="short", cost_usd=0.001, latency_s=5.0),
        Card(id="r100", status="error", text=None, error_type="api_timeout"),
        Card(id="r2", status="ok", text="the longest answer of all", cost_usd=0.002, latency_s=0.5),
    ]
    opened = open_page(report_header(cards), cards)
    page = opened.page

    def order() -> list[str]:
        return [c["id"] for c in opened.cards()]

    page.select_option("#sort", "cost")
    assert order() == ["r9", "r2", "r10", "r100"]  # a row without a cost: last
    page.click("#sort-dir")
    assert order() == ["r10", "r2", "r9", "r100"]  # descending, and still last
    page.select_option("#sort", "latency")
    assert order() == ["r9", "r10", "r2", "r100"]
    page.select_option("#sort", "length")
    assert order() == ["r2", "r10", "r9", "r100"]
    page.click("#sort-dir")
    page.select_option("#sort", "id")
    assert order() == ["r2", "r9", "r10", "r100"]  # numbers in ids sort as numbers
    page.select_option("#sort", "")
    assert order() == ["r10", "r9", "r100", "r2"]
    opened.assert_clean()


HOSTILE = "<script>alert(1)</script><b>x</b>"


def test_an_answer_holding_html_is_shown_as_text(open_page: Any) -> None:
    cards = [
        Card(id=f"<b>id</b>{HOSTILE}", status="ok", text=HOSTILE, thumbs=(report_thumb(1, source=HOSTILE),)),
        Card(id="f", status="ok", text=HOSTILE, fields=(("caption", HOSTILE),)),
        Card(id="e", status="error", text=None, error_type="x", error_message=HOSTILE, warnings=(HOSTILE,)),
    ]
    opened = open_page(report_header(cards), cards)
    page = opened.page
    assert page.locator("#cards b, #cards script").count() == 0
    first = page.locator("article.card").nth(0)
    assert first.locator(".answer").inner_text() == HOSTILE
    assert first.locator(".answer").is_visible()
    assert first.locator(".id").inner_text() == f"<b>id</b>{HOSTILE}"
    assert page.locator("article.card").nth(1).locator(".fields td").inner_text() == HOSTILE
    assert page.locator("article.card").nth(2).locator(".error-message").inner_text() == HOSTILE
    assert page.locator("article.card").nth(2).locator(".warnings li").inner_text() == HOSTILE
    # the large view clones the card: still text there
    first.click()
    assert page.locator("#large b, #large script").count() == 0
    assert page.locator("#large .answer").inner_text() == HOSTILE
    page.keyboard.press("Escape")
    opened.assert_clean()  # no alert fired


def test_the_large_view_opens_and_closes(open_page: Any) -> None:
    cards = report_cards(6, fields=True)
    opened = open_page(report_header(cards), cards)
    page = opened.page
    dialog = page.locator("#large")
    assert not dialog.is_visible()

    page.locator("article.card").nth(2).click()
    assert dialog.is_visible()
    assert dialog.locator(".id").inner_text() == cards[2].id
    # the full answer (the raw JSON open) and the thumbnail larger than on the card
    raw = dialog.locator("pre.answer")
    assert raw.is_visible() and raw.inner_text() == cards[2].text
    large = dialog.locator("img").first.bounding_box()
    small = page.locator("article.card").nth(2).locator("img").first.bounding_box()
    assert large is not None and small is not None and large["height"] > small["height"]
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(dialog.locator(".content > *")).to_have_count(0)  # emptied on its close event

    page.locator("article.card").nth(0).click()
    assert dialog.is_visible()
    dialog.locator("button.close").click()
    expect(dialog).to_be_hidden()

    page.locator("article.card").nth(1).focus()
    page.keyboard.press("Enter")
    expect(dialog).to_be_visible()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    opened.assert_clean()


def test_a_real_runs_report_matches_its_results(
    open_page: Any, tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run against the simulator with two rows that fail (a missing image, a corrupt one), made
    # into a page by `batcher report`'s own code: the page's cards are the results, status by status.
    from batcher.report.build import write_report
    from tests.helpers import good_rows, results_by_id, run_job, write_job

    rows = good_rows(tmp_path, 8)
    (tmp_path / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    rows += [
        {"id": "row-missing", "image": "images/missing.jpg", "kind": "photo"},
        {"id": "row-corrupt", "image": "images/corrupt.jpg", "kind": "photo"},
    ]
    job = write_job(tmp_path, rows)
    # Playwright's sync API keeps an event loop running in this thread: the run and the report,
    # which run their own, go in another.
    with ThreadPoolExecutor(1) as pool:
        code, err = pool.submit(run_job, job, simulator, monkeypatch).result()
        assert code == 3, err  # finished, some rows in error
        stats = pool.submit(write_report, tmp_path / "out").result()
    results = results_by_id(tmp_path / "out")
    opened = open_page(stats.path)
    cards = opened.cards()
    expected = sorted((i, r["status"]) for i, r in results.items())
    assert sorted((c["id"], c["status"]) for c in cards) == expected and len(expected) == 10
    assert {c["id"] for c in cards if c["status"] == "error"} == {"row-missing", "row-corrupt"}
    opened.page.select_option("#f-status", "error")
    assert sorted(opened.shown()) == ["row-corrupt", "row-missing"]
    # Every ok row's thumbnail decoded in the browser.
    ok_images = opened.page.eval_on_selector_all(
        "article.card[data-status=ok] img", "els => els.map(e => e.naturalWidth)"
    )
    assert len(ok_images) == 8 and all(ok_images)
    opened.assert_clean()
