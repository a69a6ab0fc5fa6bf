"""``batcher estimate JOB``: what a job will cost and how long it will take, before anything is sent.

It reads the manifest and only the *headers* of the images (no pixels are decoded) and works out,
per row, the input tokens the run will send:

- image tokens exactly: each image's header size, sized as the run will send it
  (:func:`batcher.images.sizing.target_size` for the job's model and caps), then the patch rule;
  an image named by URL cannot be measured without downloading it, so it counts at the model's
  (or the job's) token budget, the most it can cost;
- text tokens by :mod:`batcher.tokens`, over the very body :func:`batcher.api.bodies.messages_body`
  builds (labels, prompt, system), optionally calibrated on a sample through ``count_tokens``.

Output is counted at its worst, ``max_tokens`` a row. Cost comes from the model's prices
(:func:`batcher.cost.usage_cost`, per row, so a long-prompt tier applies where it would), online
and at the Message Batches price. The time is what the job's ``[limits]`` allow.

The same per-row arithmetic is the budget's worst case (:func:`row_worst_cost`), so the estimate and
the cap never disagree about what a row may cost.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from batcher.api.bodies import Example, ImagePart, RequestSettings, StructuredRequest, messages_body
from batcher.api.download import DownloadLimits
from batcher.config import JobConfig, example_key
from batcher.core.examples import ExampleError, example_row
from batcher.core.outcomes import Prepared
from batcher.core.plan import (
    Planner,
    RowTokens,
    body_tokens,
    job_image_options,
    row_cost,
    settings_for,
    unsized_image_tokens,
)
from batcher.core.prepare import RowPreparer
from batcher.core.seams import ImagePreparer
from batcher.core.structured import StructuredOutput
from batcher.errors import JobError, RowFailure
from batcher.images.sizing import ImageOptions, image_tokens, target_size
from batcher.models import ModelProfile
from batcher.records import Row
from batcher.tokens import factor_hundredths
from batcher.urls import is_remote

if TYPE_CHECKING:
    import pyarrow as pa

    from batcher.manifest import ArrowChunk, Manifest

#: Rows read between two progress callbacks.
PROGRESS_EVERY = 1000
#: Distinct image cells (or image lists) whose tokens are remembered before the memo starts over.
_DISTINCT_CACHE = 100_000


class EstimateError(JobError):
    """The estimate cannot be made (no key for ``--exact-sample``, the API refused the sample):
    exit code 1."""


# --- pure arithmetic -----------------------------------------------------------------------------


def sent_image_tokens(
    profile: ModelProfile, options: ImageOptions, size: tuple[int, int] | None, images_in_request: int
) -> int:
    """Visual tokens of one image whose upright header size is ``size`` (None: not known)."""
    if size is None:
        return unsized_image_tokens(profile, options)
    width, height = target_size(profile, *size, options=options, images_in_request=images_in_request)
    return image_tokens(profile, width, height)


def row_tokens(
    profile: ModelProfile,
    settings: RequestSettings,
    prompt: str,
    images: Sequence[int],
    structured: StructuredRequest | None = None,
) -> RowTokens:
    """Input tokens of the request for a row whose images cost ``images`` tokens each (with the
    job's output schema, when ``structured``: :func:`batcher.tokens.estimate_schema_tokens`)."""
    placeholders = [ImagePart("url", "") for _ in images]
    body = messages_body(profile, settings, placeholders, prompt, structured)
    return body_tokens(profile, body, images)


def job_structured(job: JobConfig, profile: ModelProfile) -> StructuredOutput | None:
    """The job's [output] and the mode a run would send it in, decided from the profile alone (no
    network: the run asks the Models API too); raises ``ConfigError`` as the run would refuse."""
    if job.output is None:
        return None
    from batcher.core.structured import decide
    from batcher.output import load_output

    return decide(load_output(job), job.path, profile, {})


def _structured_request(job: JobConfig, profile: ModelProfile) -> StructuredRequest | None:
    output = job_structured(job, profile)
    return output.request if output is not None else None


def run_time_s(
    rows: int,
    input_tokens: int,
    output_tokens: int,
    rpm: float | None,
    itpm: float | None,
    otpm: float | None,
) -> float | None:
    """Seconds the job needs at these per-minute limits (the tightest wins); None with no limits."""
    minutes = [
        amount / limit
        for amount, limit in ((rows, rpm), (input_tokens, itpm), (output_tokens, otpm))
        if limit
    ]
    return max(minutes) * 60.0 if minutes else None


# --- the estimate --------------------------------------------------------------------------------


@dataclass
class Sample:
    """Input tokens of a few rows counted by the API, next to the estimate for the same rows."""

    rows: int
    input_tokens_exact: int
    input_tokens_estimated: int
    image_tokens: int

    @property
    def text_ratio(self) -> float:
        """How far the text estimate was off on the sample (exact / estimated, text only)."""
        estimated_text = self.input_tokens_estimated - self.image_tokens
        exact_text = self.input_tokens_exact - self.image_tokens
        return exact_text / estimated_text if estimated_text > 0 else 1.0


@dataclass
class CacheEstimate:
    """What the prompt cache does to the estimate (``--json``: the ``cache`` object). The costs
    with the cache assume one write of the prefix, then a read of it by every other row (online:
    the run sends the write first; in a batch, hits are best effort, so the batch figure is the
    most the cache saves there)."""

    #: the job's [cache] mode, and whether requests carry a breakpoint (in the job's run mode)
    mode: str
    breakpoint: bool
    #: "examples" or "system": where the breakpoint sits; None without one
    anchor: str | None
    #: estimated input tokens of the prefix every row shares (tools/schema, system, examples)
    prefix_tokens: int
    #: the TTL online and in batch mode ("auto": 5m online, 1h in batch)
    ttl_online: str
    ttl_batch: str
    #: the decision's one line (why there is no breakpoint, when there is none)
    reason: str
    writes: int = 0
    reads: int = 0
    #: the whole job at most, with the cache (as the job's [cache] decides) and without it
    cost_online_usd: float = 0.0
    cost_batch_usd: float = 0.0
    cost_online_uncached_usd: float = 0.0
    cost_batch_uncached_usd: float = 0.0


@dataclass
class Estimate:
    model: str
    mode: str
    rows: int = 0
    #: rows that cannot be sent (a bad manifest row, an image whose header cannot be read)
    rows_failing: int = 0
    images: int = 0
    #: images named by URL: counted at the budget, the most they can cost
    images_unsized: int = 0
    text_tokens: int = 0
    image_tokens: int = 0
    output_tokens_max: int = 0
    cost_usd_online: float = 0.0
    cost_usd_batch: float = 0.0
    #: the same with no output at all: the floor under the bill
    cost_usd_input_online: float = 0.0
    cost_usd_input_batch: float = 0.0
    time_s: float | None = None
    #: input tokens that count toward the ITPM limit: cache reads do not (current models), so a
    #: cached job's are the input less every read of the prefix
    itpm_input_tokens: int = 0
    #: which limits ``time_s`` is at: learned by the job's last run, or its [limits] / tier
    limits_source: str | None = None
    budget_usd: float | None = None
    sample: Sample | None = None
    failures: dict[str, int] = field(default_factory=dict)
    #: structured output ([output]): how the schema is sent ("format", or "tool": a forced tool),
    #: and the input tokens it adds to every row (an estimate: tokens.estimate_schema_tokens)
    structured_mode: str | None = None
    schema_tokens_per_row: int = 0
    #: few-shot examples ([[request.examples]]): how many, their images, and the input tokens
    #: they add to every row (in the figures above: each row's input holds them)
    examples: int = 0
    example_images: int = 0
    example_tokens_per_row: int = 0
    #: prompt caching of the shared prefix: see :class:`CacheEstimate`
    cache: CacheEstimate | None = None
    #: sendable rows by their input tokens: what the costs are summed from (not in the JSON)
    input_histogram: dict[int, int] = field(default_factory=dict, repr=False)

    @property
    def input_tokens(self) -> int:
        return self.text_tokens + self.image_tokens

    def add(self, tokens: RowTokens, images: int, unsized: int = 0) -> None:
        """One sendable row: its tokens and images (``unsized`` of them by URL)."""
        self.rows += 1
        self.images += images
        self.images_unsized += unsized
        self.text_tokens += tokens.text
        self.image_tokens += tokens.image
        self.input_histogram[tokens.input] = self.input_histogram.get(tokens.input, 0) + 1

    def add_rows(
        self, rows: int, images: int, unsized: int, text: int, image: int, histogram: dict[int, int]
    ) -> None:
        """Many sendable rows at once (``histogram``: how many rows have each input token count)."""
        self.rows += rows
        self.images += images
        self.images_unsized += unsized
        self.text_tokens += text
        self.image_tokens += image
        for tokens, n in histogram.items():
            self.input_histogram[tokens] = self.input_histogram.get(tokens, 0) + n

    def finish(self, profile: ModelProfile, max_tokens: int) -> None:
        """Output and costs from the sendable rows' input tokens: each distinct count priced once (a
        long-prompt tier applies per row), in one order whichever path read the rows."""
        sendable = self.rows - self.rows_failing
        self.output_tokens_max = sendable * max_tokens
        self.cost_usd_online = self.cost_usd_batch = 0.0
        self.cost_usd_input_online = self.cost_usd_input_batch = 0.0
        for tokens in sorted(self.input_histogram):
            n = self.input_histogram[tokens]
            self.cost_usd_online += n * row_cost(profile, tokens, max_tokens, batch=False)
            self.cost_usd_batch += n * row_cost(profile, tokens, max_tokens, batch=True)
            self.cost_usd_input_online += n * row_cost(profile, tokens, 0, batch=False)
            self.cost_usd_input_batch += n * row_cost(profile, tokens, 0, batch=True)

    def fail(self, error_type: str, rows: int = 1) -> None:
        self.rows += rows
        self.rows_failing += rows
        self.failures[error_type] = self.failures.get(error_type, 0) + rows

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["input_histogram"]
        out["input_tokens"] = self.input_tokens
        for key in ("cost_usd_online", "cost_usd_batch", "cost_usd_input_online", "cost_usd_input_batch"):
            out[key] = round(out[key], 8)
        if out["cache"] is not None:
            for key in (
                "cost_online_usd",
                "cost_batch_usd",
                "cost_online_uncached_usd",
                "cost_batch_uncached_usd",
            ):
                out["cache"][key] = round(out["cache"][key], 8)
        if self.sample is not None:
            out["sample"]["text_ratio"] = round(self.sample.text_ratio, 4)
        return out

    def calibrate(self, profile: ModelProfile, sample: Sample, max_tokens: int) -> None:
        """Scale the text estimate by what the API counted on a sample; costs follow.

        Costs are rescaled row-free (input at the base price): exact for every model below its
        long-prompt threshold, which a captioning row is nowhere near.
        """
        self.sample = sample
        ratio = sample.text_ratio
        old_input = self.input_tokens
        self.text_tokens = round(self.text_tokens * ratio)
        delta = self.input_tokens - old_input
        for batch in (False, True):
            extra = row_cost(profile, delta, 0, batch=batch)
            if batch:
                self.cost_usd_batch += extra
                self.cost_usd_input_batch += extra
            else:
                self.cost_usd_online += extra
                self.cost_usd_input_online += extra


def row_sizes(row: Row, options: ImageOptions) -> list[tuple[int, int] | None]:
    """Each image's upright header size (None for a URL or an object store URI: not read); raises
    the image's ``ImageError``."""
    from batcher.images.prepare import probe_size

    sizes: list[tuple[int, int] | None] = []
    for source in row.images:
        if is_remote(source):
            sizes.append(None)
            continue
        width, height, _format = probe_size(source, options)
        sizes.append((width, height))
    return sizes


def estimate_rows(rows: Any, job: JobConfig, profile: ModelProfile, progress: Any = None) -> Estimate:
    """Walk the manifest's rows (an iterable of :class:`Row`), reading image headers only: the
    reference path, and the one for JSONL (no schema to read as columns)."""
    from batcher.images.errors import ImageError

    settings = settings_for(job)
    structured = _structured_request(job, profile)
    options = job_image_options(job)
    est = Estimate(model=profile.id, mode=job.run.mode, budget_usd=job.limits.budget_usd)
    # The images of a row (as a tuple) -> their tokens and unsized count, or the error type.
    seen: dict[tuple[str, ...], tuple[list[int], int] | str] = {}
    for n, row in enumerate(rows, start=1):
        if progress is not None and n % PROGRESS_EVERY == 0:
            progress(n)
        if row.error is not None:
            est.fail(row.error.error_type)
            continue
        key = tuple(row.images)
        found = seen.get(key)
        if found is None:
            if len(seen) >= _DISTINCT_CACHE:
                seen.clear()
            try:
                sizes = row_sizes(row, options)
            except ImageError as exc:
                found = getattr(exc, "error_type", "image_error")
            else:
                found = (
                    [sent_image_tokens(profile, options, size, len(sizes)) for size in sizes],
                    sum(1 for size in sizes if size is None),
                )
            seen[key] = found
        if isinstance(found, str):
            est.fail(found)
            continue
        per_image, unsized = found
        est.add(row_tokens(profile, settings, row.prompt, per_image, structured), len(per_image), unsized)
    return _finish(est, job, profile)


# --- the same, a column at a time ----------------------------------------------------------------

#: What :meth:`str.strip` strips (every character whose ``isspace()`` is true), as an RE2 class: a cell
#: with a character outside it is not blank. tests/test_estimate_issue13.py holds it to ``isspace``.
PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_NOT_BLANK = "[^" + "".join(f"\\x{{{ord(c):x}}}" for c in PY_WHITESPACE) + "]"


@dataclass(frozen=True, slots=True)
class CellCost:
    """What a row costs by its image cell alone: the error that fails it, or its images' tokens and
    the text tokens of everything in its request but the prompt (framing, labels, system)."""

    #: the cell's own error (bad_row: no image, not a path...), else None
    cell_error: str | None = None
    #: an image that cannot be read (checked only for rows that have no other error)
    image_error: str | None = None
    image_tokens: int = 0
    framing_text: int = 0
    images: int = 0
    unsized: int = 0


class _CellCosts:
    """:class:`CellCost` per distinct image cell, remembered (bounded) across chunks."""

    def __init__(self, job: JobConfig, profile: ModelProfile, base: str) -> None:
        self._settings = settings_for(job)
        self._structured = _structured_request(job, profile)
        self._options = job_image_options(job)
        self._profile = profile
        self._base = base
        self._memo: dict[Any, CellCost] = {}

    def get(self, cell: Any) -> CellCost:
        from batcher.manifest import image_cache_key

        key = image_cache_key(cell)
        if key is None:
            return self._cost(cell)
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) >= _DISTINCT_CACHE:
                self._memo.clear()
            found = self._memo[key] = self._cost(cell)
        return found

    def _cost(self, cell: Any) -> CellCost:
        from batcher.images.errors import ImageError
        from batcher.manifest import parse_image_cell

        parsed = parse_image_cell(cell, self._base)
        if isinstance(parsed, RowFailure):
            return CellCost(cell_error=parsed.error_type)
        _written, resolved = parsed
        # A row of just these images: the very call the row path makes (and the run's checks in it).
        probe = Row(id="", images=resolved, prompt="", fields={}, index=0)
        try:
            sizes = row_sizes(probe, self._options)
        except ImageError as exc:
            return CellCost(image_error=getattr(exc, "error_type", "image_error"))
        per_image = [sent_image_tokens(self._profile, self._options, size, len(sizes)) for size in sizes]
        framing = row_tokens(self._profile, self._settings, "", per_image, self._structured).text
        return CellCost(
            image_tokens=sum(per_image),
            framing_text=framing,
            images=len(per_image),
            unsized=sum(1 for size in sizes if size is None),
        )


def _plain_template(template: str) -> tuple[int, list[str]] | None:
    """(UTF-8 bytes of a template's literal text, the field of each placeholder in order), when every
    placeholder is a bare ``{name}`` (its text is then the cell's); None if any has a spec or conversion."""
    literal = 0
    names: list[str] = []
    for text, name, spec, conv in string.Formatter().parse(template):
        literal += len(text.encode("utf-8"))
        if name is None:
            continue
        if spec or conv is not None:
            return None
        names.append(name)
    return literal, names


def _is_text(array: pa.Array) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_string(array.type) or pa.types.is_large_string(array.type))


class _ChunkCoster:
    """Prices an :class:`~batcher.manifest.ArrowChunk` with the row path's exact rules: errors in the
    same order (as read, image cell, prompt, id, image header), the same token arithmetic."""

    def __init__(self, manifest: Manifest, job: JobConfig, profile: ModelProfile) -> None:
        self.m = manifest
        self.cells = _CellCosts(job, profile, str(manifest.path.parent))
        self.names = manifest.template_names()
        self.plain = _plain_template(manifest.prompt_template) if manifest.prompt_template else None
        self.f100 = factor_hundredths(profile)
        self.error_types: list[str] = [""]  # code 0: no error
        self.columns = [manifest.image_column, *self.names]
        for extra in (manifest.prompt_column, manifest.id_column):
            if extra is not None:
                self.columns.append(extra)

    def code(self, error_type: str | None) -> int:
        if error_type is None:
            return 0
        if error_type not in self.error_types:
            self.error_types.append(error_type)
        return self.error_types.index(error_type)

    def add(self, est: Estimate, chunk: ArrowChunk) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        codes, costs = self._cell_codes(chunk.arrays[self.m.image_column])

        def per_row(values: list[int]) -> pa.Array:
            return pc.take(pa.array(values, pa.int64()), codes)

        error = per_row([self.code(c.image_error) for c in costs])
        id_blank = self._id_blank(chunk)
        if id_blank is not None:
            error = pc.if_else(id_blank, self.code("bad_row"), error)
        prompt_bytes, prompt_error, prompt_type = self._prompt(chunk)
        if prompt_error is not None:
            error = pc.if_else(prompt_error, self.code(prompt_type), error)
        cell_error = per_row([self.code(c.cell_error) for c in costs])
        error = pc.if_else(pc.not_equal(cell_error, 0), cell_error, error)
        if chunk.errors:
            codes_list = error.to_pylist()
            for position, row_error in chunk.errors.items():
                codes_list[position] = self.code(row_error.error_type)
            error = pa.array(codes_list, pa.int64())
        ok = pc.equal(error, 0)
        for item in pc.value_counts(pc.filter(error, pc.invert(ok))).to_pylist():
            est.fail(self.error_types[item["values"]], item["counts"])

        def sendable(per_cell: list[int]) -> pa.Array:
            return pc.filter(per_row(per_cell), ok)

        prompt_text = pc.divide(pc.add(pc.multiply(pc.filter(prompt_bytes, ok), self.f100), 399), 400)
        text = pc.add(sendable([c.framing_text for c in costs]), prompt_text)
        image = sendable([c.image_tokens for c in costs])
        histogram = {
            int(item["values"]): int(item["counts"])
            for item in pc.value_counts(pc.add(text, image)).to_pylist()
        }
        est.add_rows(
            len(text),
            _total(sendable([c.images for c in costs])),
            _total(sendable([c.unsized for c in costs])),
            _total(text),
            _total(image),
            histogram,
        )

    def _cell_codes(self, column: pa.Array) -> tuple[pa.Array, list[CellCost]]:
        """Each row's index into the costs of the chunk's distinct image cells, and those costs."""
        import pyarrow as pa
        import pyarrow.compute as pc

        try:
            encoded = pc.dictionary_encode(column, null_encoding="encode")
        except pa.ArrowNotImplementedError:  # lists of images (Parquet): by hand
            from batcher.manifest import image_cache_key

            seen: dict[Any, int] = {}
            codes: list[int] = []
            costs: list[CellCost] = []
            for cell in column.to_pylist():
                key = image_cache_key(cell)
                code = seen.get(key) if key is not None else None
                if code is None:
                    code = len(costs)
                    costs.append(self.cells.get(cell))
                    if key is not None:
                        seen[key] = code
                codes.append(code)
            return pa.array(codes, pa.int64()), costs
        return encoded.indices, [self.cells.get(cell) for cell in encoded.dictionary.to_pylist()]

    def _id_blank(self, chunk: ArrowChunk) -> pa.Array | None:
        """Rows whose id cell is null or (text) blank: ``bad_row`` as the row path has it."""
        import pyarrow.compute as pc

        if self.m.id_column is None:
            return None
        ids = chunk.arrays[self.m.id_column]
        blank = pc.is_null(ids)
        if _is_text(ids):
            blank = pc.or_(blank, pc.invert(pc.fill_null(pc.match_substring_regex(ids, _NOT_BLANK), False)))
        return blank

    def _prompt(self, chunk: ArrowChunk) -> tuple[pa.Array, pa.Array | None, str]:
        """Each row's prompt in UTF-8 bytes, which rows' prompts fail, and with what error type."""
        import pyarrow as pa
        import pyarrow.compute as pc

        m = self.m
        if (
            m.prompt_template is not None
            and self.plain is not None
            and all(_is_text(chunk.arrays[n]) for n in self.names)
        ):
            literal, fields = self.plain
            total: pa.Array = pa.array([literal] * chunk.length, pa.int64())
            for name in fields:
                total = pc.add(total, _utf8_bytes(chunk.arrays[name]))
            missing = pa.array([False] * chunk.length)
            for name in self.names:
                cells = chunk.arrays[name]
                gone = pc.is_null(cells)
                if m.format == "csv":  # an empty CSV cell is a missing field
                    gone = pc.or_(gone, pc.equal(_utf8_bytes(cells), 0))
                missing = pc.or_(missing, gone)
            return total, missing, "template_error"
        if m.prompt_column is not None and _is_text(chunk.arrays[m.prompt_column]):
            cells = chunk.arrays[m.prompt_column]
            blank = pc.invert(pc.fill_null(pc.match_substring_regex(cells, _NOT_BLANK), False))
            return _utf8_bytes(cells), blank, "bad_row"
        if m.prompt_template is None and m.prompt_column is None:
            return pa.array([0] * chunk.length, pa.int64()), None, ""
        return self._prompt_by_row(chunk)

    def _prompt_by_row(self, chunk: ArrowChunk) -> tuple[pa.Array, pa.Array, str]:
        """Rendered a row at a time (a format spec, a number column): the row path's own code."""
        import pyarrow as pa

        needed = [n for n in (*self.names, self.m.prompt_column) if n is not None]
        columns = {n: chunk.arrays[n].to_pylist() for n in needed}
        lengths: list[int] = []
        failed: list[bool] = []
        for i in range(chunk.length):
            prompt, _key = self.m.prompt_of({n: values[i] for n, values in columns.items()}, self.names)
            failed.append(isinstance(prompt, RowFailure))
            lengths.append(0 if isinstance(prompt, RowFailure) else len(prompt.encode("utf-8")))
        kind = "template_error" if self.m.prompt_template is not None else "bad_row"
        return pa.array(lengths, pa.int64()), pa.array(failed), kind


def _utf8_bytes(cells: pa.Array) -> pa.Array:
    """Each text cell's length in UTF-8 bytes (0 for null)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.fill_null(pc.cast(pc.binary_length(cells), pa.int64()), 0)


def _total(array: pa.Array) -> int:
    import pyarrow.compute as pc

    return int(pc.sum(array).as_py() or 0)


def estimate_chunks(
    manifest: Manifest, job: JobConfig, profile: ModelProfile, progress: Any = None
) -> Estimate:
    """:func:`estimate_rows` over Arrow chunks of a CSV or Parquet manifest: the same figures, with
    image headers read once per distinct image cell and the prompts measured a column at a time."""
    coster = _ChunkCoster(manifest, job, profile)
    est = Estimate(model=profile.id, mode=job.run.mode, budget_usd=job.limits.budget_usd)
    for chunk in manifest.arrow_chunks(coster.columns):
        coster.add(est, chunk)
        if progress is not None:
            progress(est.rows)
    return _finish(est, job, profile)


def _finish(est: Estimate, job: JobConfig, profile: ModelProfile) -> Estimate:
    output = job_structured(job, profile)
    if output is not None:
        from batcher.api.bodies import structured_params
        from batcher.tokens import estimate_schema_tokens

        est.structured_mode = output.mode
        est.schema_tokens_per_row = estimate_schema_tokens(structured_params(output.request), profile)
    shared = shared_prefix(job, profile, output)
    if job.request.examples:
        add_examples(est, shared)
    est.finish(profile, job.request.max_tokens)
    est.cache = cache_estimate(est, job, profile, shared.prefix_tokens)
    (rpm, itpm, otpm), est.limits_source = limits_for(job)
    est.itpm_input_tokens = itpm_tokens(est.input_tokens, est.cache)
    est.time_s = run_time_s(
        est.rows - est.rows_failing, est.itpm_input_tokens, est.output_tokens_max, rpm, itpm, otpm
    )
    return est


@dataclass(frozen=True, slots=True)
class SharedTokens:
    """The shared prefix as the estimate counts it: the examples' part of every row's input (their
    turns and images), and the whole prefix (with the tools/schema and the system prompt)."""

    examples: int
    example_text: int
    example_image: int
    images: int
    unsized: int
    prefix_tokens: int


def shared_prefix(job: JobConfig, profile: ModelProfile, output: StructuredOutput | None) -> SharedTokens:
    """Tokens of what every row shares, the examples' images read by their headers only (as a row's
    are); an example image that cannot be read, or an answer that does not fit the schema, is a
    ``ConfigError`` naming it, as the run would refuse it."""
    from batcher.core.examples import PreparedExamples, example_answers, prefix_tokens
    from batcher.images.errors import ImageError

    structured = output.request if output is not None else None
    answers = example_answers(job, output.spec if output is not None else None)
    options = job_image_options(job)
    examples: list[Example] = []
    tokens: list[int] = []
    unsized = 0
    for n, config in enumerate(job.request.examples):
        row = example_row(n, config)
        sizes: list[tuple[int, int] | None] = []
        for i, source in enumerate(row.images):
            try:
                sizes.extend(
                    row_sizes(Row(id=row.id, images=[source], prompt="", fields={}, index=0), options)
                )
            except ImageError as exc:
                key = "image" if config.image is not None else f"images[{i}]"
                raise ExampleError(f"{job.path}: {example_key(n, key)}: {exc}") from None
        tokens.extend(sent_image_tokens(profile, options, size, len(sizes)) for size in sizes)
        unsized += sum(1 for size in sizes if size is None)
        placeholders = [ImagePart("url", "") for _ in sizes]
        examples.append(Example(images=placeholders, prompt=row.prompt, answer=answers[n]))
    with_examples = PreparedExamples(tuple(examples), tuple(tokens))
    total = prefix_tokens(job, profile, structured, with_examples)
    bare = prefix_tokens(job, profile, structured, PreparedExamples((), ()))
    image = sum(tokens)
    return SharedTokens(
        examples=len(examples),
        example_text=total - bare - image if examples else 0,
        example_image=image,
        images=len(tokens),
        unsized=unsized,
        prefix_tokens=total,
    )


def add_examples(est: Estimate, shared: SharedTokens) -> None:
    """Every sendable row's input gains the examples' turns and images."""
    sendable = est.rows - est.rows_failing
    per_row = shared.example_text + shared.example_image
    est.examples = shared.examples
    est.example_images = shared.images
    est.example_tokens_per_row = per_row
    est.images += sendable * shared.images
    est.images_unsized += sendable * shared.unsized
    est.text_tokens += sendable * shared.example_text
    est.image_tokens += sendable * shared.example_image
    est.input_histogram = {tokens + per_row: n for tokens, n in est.input_histogram.items()}


def itpm_tokens(input_tokens: int, cache: CacheEstimate | None) -> int:
    """The input tokens a job counts toward ITPM: online, every read of the cached prefix is left
    out (cache reads do not count on current models); the write counts."""
    if cache is None or not cache.breakpoint:
        return input_tokens
    return max(0, input_tokens - cache.reads * cache.prefix_tokens)


def cache_estimate(est: Estimate, job: JobConfig, profile: ModelProfile, prefix: int) -> CacheEstimate:
    """The job's cost with its [cache] decision (one write of the prefix, then reads) and without
    the cache, online and in batch mode."""
    from batcher.core.cache import resolve_ttl
    from batcher.core.examples import decide_for_job
    from batcher.cost import usage_cost

    sendable = est.rows - est.rows_failing
    ttl_online, ttl_batch = resolve_ttl(job.cache.ttl, batch=False), resolve_ttl(job.cache.ttl, batch=True)
    batch_mode = job.run.mode == "batch"
    decision = decide_for_job(job, profile, prefix, batch=batch_mode)
    point = decision.point
    cache = CacheEstimate(
        mode=job.cache.mode,
        breakpoint=point is not None,
        anchor=point.anchor if point is not None else None,
        prefix_tokens=prefix,
        ttl_online=ttl_online,
        ttl_batch=ttl_batch,
        reason=decision.reason,
        cost_online_usd=est.cost_usd_online,
        cost_batch_usd=est.cost_usd_batch,
        cost_online_uncached_usd=est.cost_usd_online,
        cost_batch_uncached_usd=est.cost_usd_batch,
    )
    if point is None or sendable < 1:
        return cache
    cache.writes, cache.reads = 1, sendable - 1
    for batch, ttl in ((False, ttl_online), (True, ttl_batch)):
        plain = usage_cost(profile, {"input_tokens": prefix}, batch=batch)
        write = usage_cost(profile, {"cache_creation_input_tokens": prefix}, batch=batch, cache_ttl=ttl)
        read = usage_cost(profile, {"cache_read_input_tokens": prefix}, batch=batch)
        delta = write + (sendable - 1) * read - sendable * plain
        if batch:
            cache.cost_batch_usd += delta
        else:
            cache.cost_online_usd += delta
    return cache


def limits_for(job: JobConfig) -> tuple[tuple[float | None, float | None, float | None], str]:
    """The per-minute limits a run of ``job`` would meet: those its last run learned from the
    API's headers when there is one, else the job's [limits] over its tier (as the run starts)."""
    from batcher.ratelimit import seed_limits

    learned = _saved_state(job, "rate_limits")
    limits = (learned or {}).get("limits") or {}
    if learned and learned.get("source") == "API headers" and any(limits.values()):
        return (
            limits.get("requests"),
            limits.get("input-tokens"),
            limits.get("output-tokens"),
        ), "the limits the job's last run learned from the API"
    lim = job.limits
    seed, source = seed_limits(lim.tier, lim.rpm, lim.itpm, lim.otpm)
    return (seed.rpm, seed.itpm, seed.otpm), f"{source} limits (the run learns the real ones)"


def _saved_state(job: JobConfig, key: str) -> Any:
    """A value the job's earlier runs kept in its state (None without a state); opens nothing new."""
    from batcher.state import STATE_FILE, JobState, StateError

    out = job.output_dir(None)
    if not (out / STATE_FILE).is_file():
        return None
    try:
        with JobState.open(out) as state:
            return state.get_meta(key)
    except StateError:
        return None


# --- an exact sample through count_tokens --------------------------------------------------------

#: Top-level fields ``count_tokens`` takes from a messages body (the rest it refuses).
COUNT_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking", "output_config")


def count_body(body: dict[str, Any]) -> dict[str, Any]:
    """A messages body cut down to what ``count_tokens`` accepts."""
    return {k: v for k, v in body.items() if k in COUNT_FIELDS}


def sample_stride(sendable_rows: int, n: int) -> int:
    """Take every k-th sendable row so ``n`` of them spread over the whole manifest (its first rows
    are often unlike the rest: a manifest sorted by source, image count or prompt)."""
    return max(1, sendable_rows // max(1, n))


async def exact_sample(
    rows: Any,
    job: JobConfig,
    profile: ModelProfile,
    n: int,
    client: Any,
    stride: int = 1,
    pool: ImagePreparer | None = None,
) -> Sample:
    """Prepare ``n`` sendable rows, every ``stride``-th, as the run would (the run core's row
    preparer, in the image pool's time and memory bounds); the API counts them.

    Images go as base64 whatever the job's transport: ``count_tokens`` counts the same pixels.
    """
    if pool is None:
        from batcher.images.pool import ImagePool

        # One worker: the sample is prepared a row at a time, each answer awaited.
        async with ImagePool(workers=1) as own:
            return await exact_sample(rows, job, profile, n, client, stride, own)
    # The bodies counted carry the schema (output_config or the tool): the figure includes it.
    planner = Planner(profile, settings_for(job), job.images.files_beta, output=job_structured(job, profile))
    preparer = RowPreparer(
        profile=profile,
        pool=pool,
        options=job_image_options(job),
        transport="base64",
        downloader=None,
        download_limits=DownloadLimits(),
        stopping=anyio.Event(),
    )
    sample = Sample(rows=0, input_tokens_exact=0, input_tokens_estimated=0, image_tokens=0)
    sendable = -1
    for row in rows:
        if sample.rows >= n:
            break
        if row.error is not None or any(is_remote(s) for s in row.images):
            continue
        sendable += 1
        if sendable % stride:
            continue
        prepared = await preparer.prepare(row)
        if not isinstance(prepared, Prepared):
            continue  # an image that cannot be prepared: the run would not send it either
        plan = planner.plan(prepared)
        sample.input_tokens_exact += await client.count_tokens(count_body(plan.body))
        sample.input_tokens_estimated += plan.tokens.input
        sample.image_tokens += plan.tokens.image
        sample.rows += 1
    return sample


# --- the command ---------------------------------------------------------------------------------


def format_estimate(est: Estimate) -> str:
    """The human-readable estimate, a few aligned lines."""
    lines = [f"model {est.model}, mode {est.mode}"]
    lines.append(
        f"  rows          {est.rows:>14,}"
        + (
            f"  ({est.rows_failing:,} cannot be sent: "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(est.failures.items()))
            + ")"
            if est.rows_failing
            else ""
        )
    )
    lines.append(
        f"  images        {est.images:>14,}"
        + (
            f"  ({est.images_unsized:,} by URL or in a bucket, counted at the budget)"
            if est.images_unsized
            else ""
        )
    )
    lines.append(
        f"  input tokens  {est.input_tokens:>14,}  (images {est.image_tokens:,} exact, "
        f"text {est.text_tokens:,} estimated)"
    )
    if est.sample is not None:
        s = est.sample
        lines.append(
            f"  sample        {s.rows:>14,} rows counted by the API: {s.input_tokens_exact:,} "
            f"tokens vs {s.input_tokens_estimated:,} estimated (text x{s.text_ratio:.3f})"
        )
    if est.structured_mode is not None:
        how = (
            "sent as output_config.format"
            if est.structured_mode == "format"
            else "sent as a forced tool: the model lacks structured outputs"
        )
        lines.append(
            f"  structured output: ~{est.schema_tokens_per_row:,} input tokens a row for the schema "
            f"(estimate), {how}; in the input tokens above"
        )
    if est.examples:
        lines.append(
            f"  examples: {est.examples} ({est.example_images} image(s)), ~{est.example_tokens_per_row:,} "
            "input tokens a row; in the input tokens above"
        )
    lines.append(f"  output tokens {est.output_tokens_max:>14,}  at most (max_tokens x rows)")
    lines.append(
        f"  cost online   {_usd(est.cost_usd_online):>14}  at most "
        f"({_usd(est.cost_usd_input_online)} of it input)"
    )
    lines.append(
        f"  cost batch    {_usd(est.cost_usd_batch):>14}  at most "
        f"({_usd(est.cost_usd_input_batch)} of it input; most batches end within an hour, "
        "all within 24 h)"
    )
    lines.extend(cache_lines(est.cache))
    if est.time_s is not None:
        lines.append(f"  time online   {_duration(est.time_s):>14}  at {est.limits_source}")
        if est.itpm_input_tokens < est.input_tokens:
            lines.append(
                f"                {'':>14}  (cache reads do not count toward ITPM: "
                f"{est.itpm_input_tokens:,} of the input tokens do)"
            )
    else:
        lines.append("  time online   ?  (no limits known: set [limits] rpm/itpm/otpm)")
    if est.budget_usd is not None:
        worst = est.cost_usd_batch if est.mode == "batch" else est.cost_usd_online
        verdict = "fits" if worst <= est.budget_usd else "may stop the run before the end"
        lines.append(f"  budget        {_usd(est.budget_usd):>14}  {verdict}")
    return "\n".join(lines)


def cache_lines(cache: CacheEstimate | None) -> list[str]:
    """The estimate's cache lines: the decision and, with a breakpoint, the costs with the cache."""
    if cache is None:
        return []
    if not cache.breakpoint:
        return [f"  {cache.reason}"]
    return [
        f"  {cache.reason}",
        f"  with the cache: 1 write of ~{cache.prefix_tokens:,} tokens, then {cache.reads:,} reads",
        f"  cost online   {_usd(cache.cost_online_usd):>14}  at most with the cache (TTL "
        f"{cache.ttl_online}); {_usd(cache.cost_online_uncached_usd)} without",
        f"  cost batch    {_usd(cache.cost_batch_usd):>14}  at most with the cache (TTL "
        f"{cache.ttl_batch}; hits in batches are best effort: up to "
        f"{_usd(cache.cost_batch_uncached_usd)})",
    ]


def _usd(value: float) -> str:
    return f"${value:,.4f}" if value < 100 else f"${value:,.2f}"


def _duration(seconds: float) -> str:
    seconds = math.ceil(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def load(job_path: Any) -> tuple[JobConfig, ModelProfile]:
    """The job and its model's profile; raises ``ConfigError`` naming the key."""
    from batcher.config import load_job

    job = load_job(job_path)
    return job, job_profile(job)


def job_profile(job: JobConfig) -> ModelProfile:
    """The profile of a loaded job's model, checked against the job; raises ``ConfigError``."""
    from batcher.config import ConfigError, check_against_model, job_registry

    registry = job_registry(job)
    profile = registry.get(job.request.model)
    if profile is None:
        # A model the table lacks: the profile its first run probed through count_tokens.
        from batcher.probe import from_meta

        probed = _saved_state(job, f"model_probe:{job.request.model}")
        if probed is None:
            raise ConfigError(
                f"{job.path}: request.model: {job.request.model!r} is not in batcher's "
                "model table (see `batcher models`); `batcher run` probes it once, "
                "after which it can be estimated, or add it under [models]"
            )
        profile = from_meta(probed, registry)
    check_against_model(job, profile)
    return profile


def estimate_job(
    job: JobConfig, profile: ModelProfile, *, exact_sample_rows: int = 0, progress: Any = None
) -> Estimate:
    """The whole estimate for a job; ``exact_sample_rows`` > 0 calibrates text on the API."""
    from batcher.manifest import job_manifest

    manifest = job_manifest(job)
    if manifest.has_arrow_chunks:
        est = estimate_chunks(manifest, job, profile, progress)
    else:
        est = estimate_rows(manifest.rows(), job, profile, progress)
    if exact_sample_rows > 0:
        import anyio

        stride = sample_stride(est.rows - est.rows_failing, exact_sample_rows)
        sample = anyio.run(_sample, manifest, job, profile, exact_sample_rows, stride)
        if sample.rows:
            est.calibrate(profile, sample, job.request.max_tokens)
            if est.cache is not None:
                est.cache = cache_estimate(est, job, profile, est.cache.prefix_tokens)
    return est


async def _sample(manifest: Any, job: JobConfig, profile: ModelProfile, n: int, stride: int) -> Sample:
    from batcher.api import errors
    from batcher.api.client import Client, MissingKeyError, settings_from_env

    try:
        key, base_url = settings_from_env()
    except MissingKeyError as exc:
        raise EstimateError(f"--exact-sample: {exc}") from None
    try:
        async with Client(key, base_url, max_connections=2, timeout_s=120.0) as client:
            return await exact_sample(manifest.rows(), job, profile, n, client, stride)
    except errors.APIError as exc:
        raise EstimateError(f"--exact-sample: count_tokens failed: {exc}") from None
