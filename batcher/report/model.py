"""What a report page shows: plain, immutable data, made by :mod:`batcher.report.build` and
rendered by :mod:`batcher.report.render`. Every string here is raw text from the results (answers,
ids, messages): the renderer escapes it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Thumb:
    """One image of a row, as the page shows it."""

    #: the source as the row named it (a path or a URL), for the alt text and the large view
    source: str
    #: a ``data:image/jpeg;base64,...`` URI (batcher's own preprocessing, EXIF applied, at most
    #: ``thumb_px`` on the long edge); None when the image could not be read now
    src: str | None
    width: int = 0
    height: int = 0
    #: why there is no thumbnail (the file is gone, the image is corrupt, a URL not fetched)
    missing: str | None = None


@dataclass(frozen=True, slots=True)
class Card:
    """One result row."""

    id: str
    #: "ok" or "error" (a results part holds only finished rows)
    status: str
    #: the answer's text (with structured output: the raw JSON)
    text: str | None
    #: with ``[output]``: the answer's top-level fields as (name, value shown as text), in schema order
    fields: tuple[tuple[str, str], ...] = ()
    error_type: str | None = None
    error_message: str | None = None
    warnings: tuple[str, ...] = ()
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    cost_usd: float | None = None
    latency_s: float | None = None
    attempts: int | None = None
    thumbs: tuple[Thumb, ...] = ()

    @property
    def length(self) -> int:
        """The answer's length in characters (a sort key)."""
        return len(self.text or "")


@dataclass(frozen=True, slots=True)
class Histogram:
    """A small histogram for the header (drawn as inline SVG)."""

    #: "latency" / "cost per row"
    label: str
    #: "s" / "USD"
    unit: str
    #: bin edges, ``len(counts) + 1`` of them, ascending
    edges: tuple[float, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Header:
    """The job at a glance: every figure is over the whole job, not only the cards shown."""

    job: str
    out_dir: str
    #: when the page was made (ISO 8601, UTC)
    generated_at: str
    rows: int
    by_status: dict[str, int]
    errors_by_type: dict[str, int]
    warnings_by_type: dict[str, int]
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    #: answers that read the cached prefix / those that read or wrote it; None: no cache used
    cache_hit_rate: float | None
    cost_usd: float
    time_spent_s: float
    #: results rows in the Parquet parts, and how many cards the page holds (fewer: a sample)
    results: int
    cards: int
    histograms: tuple[Histogram, ...] = field(default=())

    @property
    def sampled(self) -> bool:
        return self.cards < self.results
