"""The ``batcher`` command: thin, over the command modules (:mod:`batcher.commands`) and the Python
API (:mod:`batcher.python_api`). Every command imports its stage lazily, so ``--help`` stays light."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar

import click

from batcher.errors import JobError
from batcher.exits import EXIT_CONFIG, EXIT_FATAL, EXIT_INCOMPLETE

if TYPE_CHECKING:
    from batcher.simulator.config import Faults


def exit_for(exc: BaseException) -> int:
    """The exit code of a command that ``exc`` stopped: the one place exceptions become exit codes.

    A job-level error (:class:`batcher.errors.JobError`: a refusal, a broken job or manifest, a
    lock held...) carries its own; an interrupt leaves the job to finish next time; anything else
    is fatal."""
    if isinstance(exc, JobError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INCOMPLETE
    return EXIT_FATAL


def _stop(exc: JobError) -> NoReturn:
    """A command refused: its one line on stderr, and its exit code."""
    click.echo(f"batcher: {exc}", err=True)
    sys.exit(exit_for(exc))


ClickError = TypeVar("ClickError", bound=click.ClickException)


def _click_error(error: ClickError, exc: JobError) -> ClickError:
    """An option refused in click's words (``Usage:``, the option named), with ``exc``'s exit code."""
    error.exit_code = exit_for(exc)
    return error


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batcher")
def main() -> None:
    """Run Claude's vision over large image sets: streamed, rate-limited, resumable, exactly once."""


@main.command()
@click.argument("job", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder (default: the job's run.output, relative to the job file).",
)
@click.option("--retry-errors", is_flag=True, help="Send rows that ended in a final error again.")
@click.option(
    "--redo-changed",
    is_flag=True,
    help="Send again the answered rows whose prompt, images or request settings changed "
    "since they were answered (a run reports how many there are).",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default=None,
    help="Where the requests run: this process tree, or a Ray cluster's workers sharing one rate "
    "budget (default: the job's run.engine, else local).",
)
@click.option(
    "--ray-address",
    default=None,
    metavar="ADDR",
    help='The Ray cluster to join ("auto", "ray://head:10001"); default: the job\'s ray.address, '
    "else a local Ray instance is started.",
)
def run(
    job: Path,
    out: Path | None,
    retry_errors: bool,
    redo_changed: bool,
    engine: Literal["local", "ray"] | None,
    ray_address: str | None,
) -> None:
    """Run a job (resumes where the last run stopped).

    Exit codes: 0 all rows ok; 3 some rows ended in error; 2 usage or config error (nothing
    sent); 1 fatal (no key, auth, I/O); 4 already running; 5 budget reached; 75 not finished
    (interrupted, or rows left for the next run).
    """
    from batcher.commands.run import run as run_job
    from batcher.runner import RunRequest

    request = RunRequest(
        job_path=job,
        out=out,
        retry_errors=retry_errors,
        redo_changed=redo_changed,
        engine=engine,
        ray_address=ray_address,
    )
    sys.exit(run_job(request))


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), default=Path("batcher-demo"))
def demo(folder: Path) -> None:
    """Run a small job end to end against the built-in simulator (no key, no network)."""
    from batcher.demo import run_demo

    sys.exit(run_demo(folder))


@main.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def status(out: Path, as_json: bool) -> None:
    """Counts by status and error type, tokens, spend and time for an output folder."""
    from batcher.commands.status import show_status

    sys.exit(show_status(out, as_json=as_json))


@main.command()
# Not exists=True: a missing folder is the command's own one-line refusal (exit 2), as an empty one.
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    "dest",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The page to write (default: OUT/report.html).",
)
@click.option(
    "--max-cards",
    type=click.IntRange(min=0),
    default=2000,
    show_default=True,
    help="Cards at most; past it a sample: every error row first, then ok rows spread over the job.",
)
@click.option(
    "--thumb-px",
    type=click.IntRange(min=16, max=2048),
    default=256,
    show_default=True,
    help="Thumbnails' long edge.",
)
@click.option("--open", "open_page", is_flag=True, help="Open the page in a browser once written.")
def report(out: Path, dest: Path | None, max_cards: int, thumb_px: int, open_page: bool) -> None:
    """One self-contained HTML page over a job's results: thumbnails, answers, errors, figures.

    Exit codes: 0 written; 2 not a job's output folder; 1 the page could not be written.
    """
    from batcher.commands.report import report as make_report

    sys.exit(make_report(out, dest, max_cards=max_cards, thumb_px=thumb_px, open_page=open_page))


@main.command()
@click.argument("job", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option(
    "--exact-sample",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Count N rows exactly through the API's free count_tokens (needs a key) and "
    "calibrate the text estimate on them.",
)
def estimate(job: Path, as_json: bool, exact_sample: int) -> None:
    """What a job will cost and take, from the manifest and image headers; nothing is sent.

    Exit codes: 0 done; 2 usage or config error; 1 the sample could not be counted.
    """
    import json

    from batcher.estimator import format_estimate
    from batcher.python_api import estimate as estimate_job

    try:
        result = estimate_job(job, exact_sample=exact_sample)
    except JobError as exc:
        _stop(exc)
    click.echo(json.dumps(result.to_json(), sort_keys=True) if as_json else format_estimate(result))


@main.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON list.")
@click.option(
    "--cancel",
    is_flag=True,
    help="Cancel the job's live batches through the API (needs the key); the next "
    "`batcher run` collects what they answered and sends the rest again.",
)
def batches(out: Path, as_json: bool, cancel: bool) -> None:
    """A batch-mode job's Message Batches: id, status, requests and their outcomes.

    Exit codes: 0 done; 2 no job state in OUT; 1 no key for --cancel.
    """
    from batcher.commands.batches import batches_command

    sys.exit(batches_command(out, as_json=as_json, cancel=cancel, err=sys.stderr, stdout=sys.stdout))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=0, type=int, help="Port (default: a free one).")
@click.option("--api-key", default=None, help="Accept only this key (default: any non-empty key).")
@click.option(
    "--platform",
    type=click.Choice(["anthropic", "bedrock", "vertex"]),
    default="anthropic",
    show_default=True,
    help="bedrock/vertex: 5 MB an image and base64 sources only.",
)
@click.option(
    "--today",
    default=None,
    metavar="YYYY-MM-DD",
    help="The simulator's date (decides which models have retired).",
)
@click.option("--rpm", type=float, default=None, help="Requests per minute (default unlimited).")
@click.option("--itpm", type=float, default=None, help="Input tokens per minute.")
@click.option("--otpm", type=float, default=None, help="Output tokens per minute.")
@click.option(
    "--files-rpm",
    type=float,
    default=None,
    help="Files API requests per minute, a budget of its own (default unlimited).",
)
@click.option(
    "--burst-window",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds of a limit a bucket may hold (60 RPM with 1 s: one request a second).",
)
@click.option(
    "--latency", type=float, default=0.0, show_default=True, help="Base seconds per messages request."
)
@click.option("--jitter", type=float, default=0.0, show_default=True, help="Extra random seconds.")
@click.option(
    "--per-megapixel",
    type=float,
    default=0.0,
    show_default=True,
    help="Extra seconds per megapixel of input images.",
)
@click.option(
    "--per-output-token", type=float, default=0.0, show_default=True, help="Extra seconds per output token."
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    metavar="KIND=P",
    help="Inject faults, repeatable: overloaded, server_error, gateway_timeout, drop, "
    "stall (share 0..1 of messages requests); answer faults refusal, mismatch (share 0..1 "
    "of answers: stop_reason refusal; structured JSON ignoring the schema's constraints) "
    "and mismatch_first=1 (each row's first structured answer is a mismatch); fatal ones "
    "auth_error_after, billing_error_after, spend_limit_after (=N: N paid requests pass, "
    "then every one fails).",
)
@click.option(
    "--stall-seconds",
    type=float,
    default=30.0,
    show_default=True,
    help="How long a stalled request hangs before its 504.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for faults and jitter.")
@click.option(
    "--batch-seconds",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds a message batch takes to end.",
)
@click.option(
    "--batch-cache-hit",
    type=click.FloatRange(0.0, 1.0),
    default=0.9,
    show_default=True,
    help="Chance (0..1, per custom_id) that a batch request's prompt-cache lookup that would hit "
    "does (batches cache on a best-effort basis).",
)
def simulate(
    host: str,
    port: int,
    api_key: str | None,
    platform: str,
    today: str | None,
    rpm: float | None,
    itpm: float | None,
    otpm: float | None,
    files_rpm: float | None,
    burst_window: float,
    latency: float,
    jitter: float,
    per_megapixel: float,
    per_output_token: float,
    faults: tuple[str, ...],
    stall_seconds: float,
    seed: int,
    batch_seconds: float,
    batch_cache_hit: float,
) -> None:
    """Serve a local simulator of the Anthropic API until Ctrl-C.

    Prints its base URL on one line once it listens; SIGINT or SIGTERM stop it (exit code 0).
    A setting it refuses is one line on stderr, exit code 2.
    """
    import datetime as dt

    from batcher.simulator.config import BatchClock, Latency, RateLimits, SimConfig
    from batcher.simulator.errors import ApiError
    from batcher.simulator.server import announce_line, serve_forever

    try:
        try:
            today_date = dt.date.fromisoformat(today) if today else None
        except ValueError:
            raise click.BadParameter(f"{today!r} is not YYYY-MM-DD", param_hint="--today") from None
        fault_config = _fault_shares(faults, stall_seconds, seed)
    except click.BadParameter as exc:
        _refuse_setting(exc.format_message())
    config = SimConfig(
        api_key=api_key,
        platform=platform,  # type: ignore[arg-type]
        today=today_date,
        limits=RateLimits(rpm=rpm, itpm=itpm, otpm=otpm, burst_window_s=burst_window, files_rpm=files_rpm),
        latency=Latency(
            base_s=latency,
            jitter_s=jitter,
            per_megapixel_s=per_megapixel,
            per_output_token_s=per_output_token,
        ),
        faults=fault_config,
        batches=BatchClock(duration_s=batch_seconds, seed=seed, cache_hit=batch_cache_hit),
    )

    def ready(url: str) -> None:
        click.echo(announce_line(url))
        sys.stdout.flush()

    try:
        serve_forever(config, host, port, on_ready=ready)
    except ApiError as exc:  # settings the simulator refuses (a negative limit, shares over 1)
        _refuse_setting(exc.message)


def _refuse_setting(message: str) -> NoReturn:
    """A ``batcher simulate`` setting refused: one line on stderr, exit code 2 (a usage error)."""
    click.echo(f"batcher: simulate: {message}", err=True)
    sys.exit(EXIT_CONFIG)


def _fault_shares(items: tuple[str, ...], stall_s: float, seed: int) -> Faults:
    """``--fault KIND=P`` (a drawn share) and ``--fault KIND_after=N`` (a fatal fault after N
    paid requests) options as a Faults config."""
    from batcher.simulator.config import Faults
    from batcher.simulator.faults import ANSWER_KINDS, FATAL_KINDS, KINDS

    fatal = tuple(f"{kind}_after" for kind in FATAL_KINDS)
    config = Faults(stall_s=stall_s, seed=seed)
    for item in items:
        kind, _, share = item.partition("=")
        if kind == "mismatch_first":
            if share not in ("", "0", "1"):
                raise click.BadParameter(
                    f"{item!r}: expected mismatch_first=1 (on) or =0", param_hint="--fault"
                )
            config.mismatch_first = share != "0"
            continue
        if kind in fatal:
            try:
                after = int(share)
            except ValueError:
                after = -1
            if after < 0:
                raise click.BadParameter(
                    f"{item!r}: expected {kind}=N, N a whole number of paid requests (0 or more)",
                    param_hint="--fault",
                )
            setattr(config, kind, after)
            continue
        if kind not in (*KINDS, *ANSWER_KINDS):
            known = ", ".join((*KINDS, *ANSWER_KINDS, "mismatch_first", *fatal))
            raise click.BadParameter(f"unknown fault kind {kind!r} (one of {known})", param_hint="--fault")
        try:
            setattr(config, kind, float(share))
        except ValueError:
            raise click.BadParameter(f"{item!r}: expected KIND=SHARE", param_hint="--fault") from None
    return config


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model.")
def models_cmd(as_json: bool) -> None:
    """List the model profiles batcher knows (configs/models.toml plus your overrides)."""
    import dataclasses
    import json

    from batcher.models import ModelConfigError, load_registry

    try:
        registry = load_registry()
    except ModelConfigError as exc:
        raise click.ClickException(str(exc)) from None
    for p in registry.all():
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "id": p.id,
                        "ids": list(p.ids),
                        "lifecycle": p.lifecycle,
                        "retires": p.retires.isoformat() if p.retires else None,
                        "context_window": p.context_window,
                        "max_output_tokens": p.max_output_tokens,
                        "images_per_request": p.images_per_request,
                        "native_edge": p.native_edge,
                        "image_token_budget": p.image_token_budget,
                        "max_image_b64_bytes": p.max_image_b64_bytes,
                        "budget_confirmed": p.budget_confirmed,
                        "display_name": p.display_name,
                        # every price, USD per million tokens: input, output, cache read and writes,
                        # the batch discount and the long-prompt tier where the model has one
                        "prices": dataclasses.asdict(p.prices),
                        "price_input": p.prices.input,
                        "price_output": p.prices.output,
                        "sampling_params": p.sampling_params,
                        "capabilities": dict(p.capabilities),
                        "source": p.source,
                    }
                )
            )
        else:
            life = p.lifecycle + (f" (retires {p.retires})" if p.retires else "")
            click.echo(
                f"{p.id:<22} {life:<30} ctx {p.context_window:>9,}  imgs {p.images_per_request:>3}"
                f"  native {p.native_edge}px/{p.image_token_budget}tok"
                f"  ${p.prices.input:g}/${p.prices.output:g} per MTok"
            )


@main.command("prepare")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--job",
    "job_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Prepare exactly as this job would: its model and every [images] option "
    "(explicit options below override them).",
)
@click.option(
    "--model",
    "-m",
    default=None,
    help="Model whose native size the images are prepared for (default: the job's, else claude-haiku-5-5).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write each prepared image here as <stem>.<ext> (repeated stems: <stem>-2, -3...).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input on stdout.")
@click.option("--max-edge", type=int, default=None, help="Cap the long side (px) below the model's.")
@click.option(
    "--max-image-tokens", type=int, default=None, help="Cap visual tokens per image below the model's budget."
)
@click.option(
    "--max-b64-bytes",
    type=int,
    default=None,
    help="Base64 bytes an image may take (default 5 MB; up to the model's limit).",
)
@click.option(
    "--allow-truncated/--no-allow-truncated",
    default=None,
    help="Send what decodes of truncated files (default: the job's, else no).",
)
@click.option(
    "--images-per-request",
    type=int,
    default=1,
    show_default=True,
    help="Size each image as one of N in a request (over 20: each fits 2000 px).",
)
@click.option("--workers", type=int, default=None, help="Worker processes (default: one per core).")
def prepare_cmd(
    paths: tuple[Path, ...],
    job_path: Path | None,
    model: str | None,
    out_dir: Path | None,
    as_json: bool,
    max_edge: int | None,
    max_image_tokens: int | None,
    max_b64_bytes: int | None,
    allow_truncated: bool | None,
    images_per_request: int,
    workers: int | None,
) -> None:
    """Run a job's image preprocessing on files or directories and report every input.

    Exit status: 0 if every input was prepared, 3 if any failed, 2 for bad options or a bad job.
    """
    import anyio

    from batcher.config import ConfigError
    from batcher.images.command import (
        UnknownModelError,
        expand_inputs,
        human_line,
        json_line,
        prepare_settings,
        run_prepare,
    )
    from batcher.images.errors import ImageConfigError
    from batcher.models import ModelConfigError

    flags = {
        "max_edge": max_edge,
        "max_image_tokens": max_image_tokens,
        "max_b64_bytes": max_b64_bytes,
        "allow_truncated": allow_truncated,
    }
    try:
        profile, options = prepare_settings(
            job_path=job_path, model=model, options=flags, images_in_request=images_per_request
        )
    except ConfigError as exc:
        _stop(exc)
    except ModelConfigError as exc:
        # exit code 1, as `batcher models` exits for a bad table (ModelConfigError's own is 2, as
        # `batcher run` and the Python API give it): kept as it was, see README's "Errors"
        raise click.ClickException(str(exc)) from None
    except UnknownModelError as exc:
        raise _click_error(click.BadParameter(str(exc), param_hint="--model"), exc) from None
    except ImageConfigError as exc:
        raise _click_error(click.UsageError(str(exc)), exc) from None

    def emit(row: dict[str, Any]) -> None:
        click.echo(json_line(row) if as_json else human_line(row))

    inputs = expand_inputs(paths)
    summary = anyio.run(
        lambda: run_prepare(
            inputs,
            profile,
            options,
            out_dir=out_dir,
            emit=emit,
            workers=workers,
            images_in_request=images_per_request,
        )
    )
    click.echo(summary.line(), err=True)
    sys.exit(summary.exit_code)


@main.group("files")
def files_group() -> None:
    """A job's Files API uploads (``[images] transport = "files"``): list them, delete them."""


@files_group.command("list")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
def files_list(out: Path, as_json: bool) -> None:
    """The job's uploads, from its state: file id, bytes, when uploaded, when they expire."""
    from batcher.commands.files import list_command

    sys.exit(list_command(out, as_json=as_json))


@files_group.command("delete")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--beta",
    default="files-api-2025-04-14",
    show_default=True,
    help="The anthropic-beta header the Files API needs (the job's images.files_beta).",
)
@click.option(
    "--rpm", type=float, default=100.0, show_default=True, help="Files API requests a minute to stay under."
)
def files_delete(out: Path, beta: str, rpm: float) -> None:
    """Delete the job's uploads through the API (ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL) and forget them.

    A file the API no longer has counts as deleted. Exit codes: 0 all gone; 3 some could not be
    deleted; 1 fatal (no key, auth); 2 no job state in OUT; 4 a run is using the job.
    """
    from batcher.commands.files import delete_command

    sys.exit(delete_command(out, beta=beta, rpm=rpm))


if __name__ == "__main__":
    main()
