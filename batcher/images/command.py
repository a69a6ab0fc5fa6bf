"""``batcher prepare``: the job's own preprocessing run over files, one report line per input.

Inputs are files or directories (expanded recursively, in sorted order). Every input is reported, in
input order, whatever happens to the others; a bad file is a row with its ``error_type``, never a
stop. With an output directory each prepared image is written there as ``<stem><ext>`` (``.jpg``,
``.png``, ``.gif``, ``.webp``, from the media type actually sent). Two inputs with the same stem never
overwrite each other: the first (in input order) gets ``<stem>``, later ones ``<stem>-2``,
``<stem>-3``... regardless of extension, so the names are the same on every run.

The model and options are a job's when one is given (:func:`prepare_settings`: the job's model and
``[images]`` through the same mapping the run uses), then whatever options are given explicitly, and
each image is sized as if its request carried ``images_in_request`` images (above 20 each fits
2000 px, the API's many-image rule).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiofiles
import anyio

from batcher.core.plan import job_image_options
from batcher.errors import JobError
from batcher.exits import EXIT_CONFIG, EXIT_OK, EXIT_ROW_ERRORS
from batcher.images.errors import ImageConfigError, ImageError, ImageIOError, without_label
from batcher.images.pool import ImagePool
from batcher.images.prepare import PreparedImage
from batcher.images.sizing import ImageOptions, check_options
from batcher.models import ModelProfile, load_registry

EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/webp": ".webp"}
#: Exit status when at least one input failed (0: all prepared): the runs' "some rows ended in error".
EXIT_SOME_FAILED = EXIT_ROW_ERRORS
#: Images in flight per worker: enough to keep every worker busy, few enough to bound memory.
IN_FLIGHT_PER_WORKER = 4
#: The model without a job or ``--model``.
DEFAULT_MODEL = "claude-haiku-5-5"


class UnknownModelError(JobError, LookupError):
    """``--model`` names a model neither batcher's table nor the job's ``[models]`` has."""

    exit_code = EXIT_CONFIG


def prepare_settings(
    *, job_path: Path | None, model: str | None, options: Mapping[str, Any], images_in_request: int = 1
) -> tuple[ModelProfile, ImageOptions]:
    """The model and :class:`ImageOptions` to prepare with: the job's, then the explicit values.

    ``options`` maps :class:`ImageOptions` fields to explicit values (None: not given, the job's or
    the default stands). Without ``model`` the job's model is used and the job is checked against it
    exactly as ``batcher estimate`` does (a model the table lacks: the profile its runs probed).

    Raises :class:`batcher.config.ConfigError` (naming the job file and the key) for a bad job or a
    job option the chosen model cannot take, :class:`UnknownModelError` for ``model``,
    :class:`ImageConfigError` (naming the option) for an explicit value that cannot be used, and
    :class:`batcher.models.ModelConfigError` for a bad model table.
    """
    job = None
    if job_path is None:
        profile = load_registry().get(model or DEFAULT_MODEL)
    elif model is None:
        from batcher.estimator import load

        job, profile = load(job_path)
    else:
        from batcher.config import job_registry, load_job

        job = load_job(job_path)
        profile = job_registry(job).get(model)
    if profile is None:
        raise UnknownModelError(f"unknown model {model or DEFAULT_MODEL!r} (see `batcher models`)")
    base = job_image_options(job) if job is not None else ImageOptions()
    given = {key: value for key, value in options.items() if value is not None}
    merged = replace(base, **given)
    try:
        check_options(profile, merged)
    except ImageConfigError as exc:
        key = str(exc).split(":", 1)[0].removeprefix("images.")
        if job is None or key in given:
            raise
        from batcher.config import ConfigError

        raise ConfigError(f"{job.path}: {exc}") from None
    if images_in_request < 1:
        raise ImageConfigError(f"--images-per-request: must be at least 1, got {images_in_request}")
    if images_in_request > profile.images_per_request:
        raise ImageConfigError(
            f"--images-per-request: {images_in_request} is above {profile.id}'s limit "
            f"of {profile.images_per_request} images a request"
        )
    return profile, merged


@dataclass
class Summary:
    total: int = 0
    ok: int = 0
    passthrough: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok == self.total else EXIT_SOME_FAILED

    def line(self) -> str:
        failed = self.total - self.ok
        text = (
            f"{self.total} inputs: {self.ok} prepared ({self.passthrough} sent as they were), {failed} failed"
        )
        if self.errors:
            text += " (" + ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) + ")"
        if self.warnings:
            text += "; warnings: " + ", ".join(f"{k} {v}" for k, v in sorted(self.warnings.items()))
        return text


def expand_inputs(paths: Iterable[Path]) -> list[Path]:
    """Files as given; directories replaced by every file under them, sorted. Missing paths stay."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            out.append(path)
    return out


def output_stems(paths: Sequence[Path]) -> list[str]:
    """A distinct output stem per input, in input order (see the module docstring)."""
    used: set[str] = set()
    stems: list[str] = []
    for path in paths:
        stem = path.stem or "image"
        candidate, n = stem, 1
        while candidate in used:
            n += 1
            candidate = f"{stem}-{n}"
        used.add(candidate)
        stems.append(candidate)
    return stems


def ok_row(path: Path, prepared: PreparedImage, written: Path | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "path": str(path),
        "ok": True,
        "media_type": prepared.media_type,
        "width": prepared.width,
        "height": prepared.height,
        "bytes": len(prepared.data),
        "tokens": prepared.tokens,
        "warnings": prepared.warnings,
        "source_width": prepared.source_width,
        "source_height": prepared.source_height,
        "source_format": prepared.source_format,
        "passthrough": prepared.passthrough,
        "sha256": prepared.sha256,
    }
    if written is not None:
        row["out"] = str(written)
    return row


def error_row(path: Path, exc: ImageError) -> dict[str, Any]:
    return {"path": str(path), "ok": False, "error_type": exc.error_type, "error": str(exc)}


def human_line(row: dict[str, Any]) -> str:
    if not row["ok"]:
        return f"FAIL {row['path']}: {row['error_type']}: {without_label(row['error'], row['path'])}"
    notes = f"  [{', '.join(row['warnings'])}]" if row["warnings"] else ""
    kept = " as is" if row["passthrough"] else ""
    return (
        f"ok   {row['path']}: {row['source_width']}x{row['source_height']} {row['source_format']} -> "
        f"{row['width']}x{row['height']} {row['media_type']}{kept}, {row['bytes']:,} bytes, "
        f"{row['tokens']} tokens{notes}"
    )


async def run_prepare(
    paths: Sequence[Path],
    profile: ModelProfile,
    options: ImageOptions,
    *,
    out_dir: Path | None,
    emit: Callable[[dict[str, Any]], None],
    workers: int | None = None,
    images_in_request: int = 1,
) -> Summary:
    """Prepare every input through the pool; ``emit`` gets one row per input, in input order.

    Each image is sized as one of ``images_in_request`` images in a request (the many-image rule).
    """
    stems = output_stems(paths)
    summary = Summary(total=len(paths))
    done: dict[int, dict[str, Any]] = {}
    next_row = 0
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    def flush() -> None:
        nonlocal next_row
        while next_row in done:
            emit(done.pop(next_row))
            next_row += 1

    async with ImagePool(workers) as pool:
        in_flight = anyio.Semaphore(pool.workers * IN_FLIGHT_PER_WORKER)

        async def one(index: int, path: Path) -> None:
            try:
                row = await _prepare_one(
                    pool, path, stems[index], profile, options, out_dir, images_in_request
                )
            finally:
                in_flight.release()
            _count(summary, row)
            done[index] = row
            flush()

        async with anyio.create_task_group() as group:
            for index, path in enumerate(paths):
                await in_flight.acquire()
                group.start_soon(one, index, path)
    return summary


async def _prepare_one(
    pool: ImagePool,
    path: Path,
    stem: str,
    profile: ModelProfile,
    options: ImageOptions,
    out_dir: Path | None,
    images_in_request: int,
) -> dict[str, Any]:
    try:
        prepared = await pool.prepare(path, profile, options, images_in_request=images_in_request)
    except ImageError as exc:
        return error_row(path, exc)
    written = None
    if out_dir is not None:
        written = out_dir / f"{stem}{EXTENSIONS[prepared.media_type]}"
        try:
            # aiofiles: the write runs in a worker thread, so the loop keeps feeding the pool.
            async with aiofiles.open(written, "wb") as fh:
                await fh.write(prepared.data)
        except OSError as exc:
            return error_row(path, ImageIOError(f"{path}: prepared, but cannot write {written}: {exc}"))
    return ok_row(path, prepared, written)


def _count(summary: Summary, row: dict[str, Any]) -> None:
    if row["ok"]:
        summary.ok += 1
        summary.passthrough += bool(row["passthrough"])
        summary.warnings.update(row["warnings"])
    else:
        summary.errors[row["error_type"]] += 1


def json_line(row: dict[str, Any]) -> str:
    return json.dumps(row, separators=(",", ":"))
