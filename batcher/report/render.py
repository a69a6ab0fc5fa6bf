"""The report page: :class:`~batcher.report.model.Header` and a stream of
:class:`~batcher.report.model.Card` → one self-contained HTML file.

The page is a Jinja2 template (``templates/report.html.j2``) with autoescaping on for everything:
every string from the results (ids, answers, fields, messages, warnings, sources) is escaped where
it is written, and nothing from the results is ever marked safe. The CSS and JS are package data
(``templates/report.css``, ``templates/report.js``), inlined as they are; the page's Content
Security Policy allows exactly those two blocks (by their SHA-256) and ``data:`` images, so even a
slip in escaping could not run a script or fetch anything.

Cards are consumed one at a time (``Template.generate``), so memory does not grow with their number.
The decisions (how a figure reads, where a histogram's bars go, whether a thumbnail's ``src`` may be
used) are pure functions below, tested on their own.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, TextIO

from batcher.report.model import Card, Header, Histogram

if TYPE_CHECKING:
    from jinja2 import Environment

#: The template and its assets, in ``batcher/report/templates/``.
TEMPLATE = "report.html.j2"
CSS = "report.css"
JS = "report.js"

#: The only image sources the page shows: JPEG/PNG/WebP/GIF data URIs (never a URL to fetch).
_IMAGE_PREFIXES = tuple(f"data:image/{kind};base64," for kind in ("jpeg", "jpg", "png", "webp", "gif"))

#: What a missing figure reads as.
NONE = "–"


def render(header: Header, cards: Iterable[Card], out: TextIO) -> None:
    """Write the page to ``out``, streaming: cards are consumed one at a time (Jinja2's
    ``Template.generate``), so memory does not grow with the number of cards."""
    env = _environment()
    template = env.get_template(TEMPLATE)
    assets = _assets()
    stream = template.generate(
        header=header,
        cards=cards,
        histograms=[HistogramView.of(h) for h in header.histograms],
        css=assets.css,
        js=assets.js,
        csp=assets.csp,
    )
    for chunk in stream:
        out.write(chunk)


# --- pure decisions -------------------------------------------------------------------------------


def fmt_int(n: int | None) -> str:
    """``1234567`` → ``1,234,567``; None → ``–``."""
    return NONE if n is None else f"{n:,}"


def fmt_usd(x: float | None) -> str:
    """Dollars as a person reads them: ``$1,234.50``, ``$0.0123``, ``$0.000123``, ``<$0.000001``."""
    if x is None or not math.isfinite(x):
        return NONE
    if x == 0:
        return "$0"
    if x < 0:
        return "-" + fmt_usd(-x)
    if x >= 1:
        return f"${x:,.2f}"
    if x < 1e-6:
        return "<$0.000001"
    # three significant digits, in plain decimals (never 1.2e-05)
    decimals = 2 - math.floor(math.log10(x))
    return f"${x:.{decimals}f}"


def fmt_seconds(s: float | None) -> str:
    """``0.85`` → ``850 ms``; ``12.34`` → ``12.3 s``; ``725`` → ``12m 05s``; ``11045`` → ``3h 04m``."""
    if s is None or not math.isfinite(s):
        return NONE
    if s < 0:
        return NONE
    if s < 1:
        return f"{round(s * 1000)} ms"
    if s < 60:
        return f"{s:.1f} s"
    total = round(s)
    if total < 3600:
        return f"{total // 60}m {total % 60:02d}s"
    return f"{total // 3600}h {total % 3600 // 60:02d}m"


def fmt_rate(r: float | None) -> str:
    """A ratio as a percentage; None (no cache used) → ``no cache``."""
    if r is None or not math.isfinite(r):
        return "no cache"
    return f"{r * 100:.1f}%"


def fmt_edge(x: float, unit: str) -> str:
    """A histogram edge in its unit (``s`` or ``USD``)."""
    return fmt_usd(x) if unit == "USD" else fmt_seconds(x) if unit == "s" else f"{x:g} {unit}"


def data_number(x: float | int | None) -> str:
    """A figure for a ``data-*`` attribute the page sorts on: ``repr`` of a finite number, else ``""``
    (the page sorts a missing figure last)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return repr(x)


def image_src(src: str | None) -> str | None:
    """``src`` if it is an inline image (a ``data:image/...;base64,`` URI), else None: the page never
    points an ``<img>`` at anything the browser would fetch."""
    if src is None or not src.startswith(_IMAGE_PREFIXES):
        return None
    return src


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar of a histogram, in the SVG's own units (its viewBox)."""

    x: float
    y: float
    width: float
    height: float
    count: int
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class HistogramView:
    """A histogram laid out for a small inline SVG."""

    label: str
    unit: str
    width: int
    height: int
    bars: tuple[Bar, ...]
    low: str
    high: str
    total: int

    @staticmethod
    def of(h: Histogram, width: int = 200, height: int = 56) -> HistogramView:
        bars = histogram_bars(h, width, height)
        return HistogramView(
            label=h.label,
            unit=h.unit,
            width=width,
            height=height,
            bars=bars,
            low=fmt_edge(h.edges[0], h.unit) if h.edges else NONE,
            high=fmt_edge(h.edges[-1], h.unit) if h.edges else NONE,
            total=sum(h.counts),
        )


def histogram_bars(h: Histogram, width: int, height: int, gap: float = 1.0) -> tuple[Bar, ...]:
    """Bars of equal width across ``width``, each as tall as its count relative to the largest (a
    count above zero is at least 1 unit tall, so it shows). Raises ValueError when the edges do
    not bound the counts."""
    if not h.counts:
        return ()
    if len(h.edges) != len(h.counts) + 1:
        raise ValueError(f"histogram {h.label!r}: {len(h.edges)} edges for {len(h.counts)} bins")
    top = max(h.counts)
    step = width / len(h.counts)
    bars = []
    for i, count in enumerate(h.counts):
        tall = 0.0 if top <= 0 else max(1.0, height * count / top) if count > 0 else 0.0
        bars.append(
            Bar(
                x=round(i * step, 2),
                y=round(height - tall, 2),
                width=round(max(step - gap, 0.5), 2),
                height=round(tall, 2),
                count=count,
                low=h.edges[i],
                high=h.edges[i + 1],
            )
        )
    return tuple(bars)


def csp_hash(text: str) -> str:
    """A CSP source for an inline block: ``'sha256-...'`` of its exact text."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def content_security_policy(css: str, js: str) -> str:
    """Nothing may load but the page's own style and script blocks and inline images."""
    return "; ".join(
        (
            "default-src 'none'",
            f"style-src {csp_hash(css)}",
            f"script-src {csp_hash(js)}",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
        )
    )


# --- the template ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Assets:
    css: str
    js: str
    csp: str


@lru_cache(maxsize=1)
def _environment() -> Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("batcher.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        n=fmt_int,
        usd=fmt_usd,
        seconds=fmt_seconds,
        rate=fmt_rate,
        edge=fmt_edge,
        num=data_number,
        image_src=image_src,
    )
    return env


@lru_cache(maxsize=1)
def _assets() -> _Assets:
    """The CSS and JS as they are inlined (package data: ours, never from the results), and the
    policy that allows exactly them."""
    from markupsafe import Markup

    env = _environment()
    assert env.loader is not None
    css = env.loader.get_source(env, CSS)[0].strip()
    js = env.loader.get_source(env, JS)[0].strip()
    return _Assets(css=Markup(css), js=Markup(js), csp=content_security_policy(css, js))
