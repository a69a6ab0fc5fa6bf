"""What many tests do alike, in one place: write a job with its manifest and images, run it (in this
process or as ``batcher`` in a subprocess), and read what the simulator saw and what the run wrote."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import pytest
from PIL import Image

from batcher.commands.run import run
from batcher.output import OutputSpec
from batcher.records import ImageSent, Result
from batcher.report.model import Card, Header, Histogram, Thumb
from batcher.runner import RunRequest
from batcher.simulator.server import RunningSimulator
from batcher.sink import read_results

# --- writing a job -------------------------------------------------------------------------------

JOB = """
[input]
manifest = "manifest.jsonl"
id_column = "id"
image_column = "image"
prompt = "Say what you see in this {{kind}}. nonce={{id}}"

[request]
model = "claude-haiku-5-5"
max_tokens = 60

[run]
output = "out"
concurrency = {concurrency}
max_attempts = {max_attempts}
part_rows = {part_rows}
"""


def make_images(folder: Path, n: int) -> list[str]:
    """``n`` distinct JPEGs in ``folder``, named as a manifest beside ``folder`` refers to them."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"good{i:03d}.jpg"
        colour = (i * 40 % 256, 90, 255 - i * 40 % 256)
        Image.new("RGB", (320 + i, 240), colour).save(folder / name, quality=90)
        names.append(f"images/{name}")
    return names


def write_jsonl(path: Path, rows: Iterable[dict[str, Any] | str]) -> None:
    """Rows as JSON lines (a str is written as it is: a broken line)."""
    with path.open("w") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row)) + "\n")


def write_job(
    tmp: Path,
    rows: list[dict[str, Any]],
    *,
    concurrency: int = 8,
    max_attempts: int = 4,
    part_rows: int = 5000,
) -> Path:
    # nonce={id}: the simulator echoes it, so each answer proves which row it belongs to.
    write_jsonl(tmp / "manifest.jsonl", rows)
    job = tmp / "job.toml"
    job.write_text(JOB.format(concurrency=concurrency, max_attempts=max_attempts, part_rows=part_rows))
    return job


def good_rows(tmp: Path, n: int, start: int = 0) -> list[dict[str, Any]]:
    names = make_images(tmp / "images", start + n)
    return [{"id": f"row-{i:03d}", "image": names[i], "kind": "photo"} for i in range(start, start + n)]


# --- running it ----------------------------------------------------------------------------------


def run_job(
    job: Path, sim: RunningSimulator, monkeypatch: pytest.MonkeyPatch, **request: Any
) -> tuple[int, str]:
    """``batcher run`` in this process (fast, and tests can patch its parts): (exit code, stderr).

    ``request``: further :class:`~batcher.runner.RunRequest` fields (``today=``, ...).
    """
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.base_url)
    err = io.StringIO()
    code = run(RunRequest(job_path=job, **request), err=err, out=io.StringIO())
    return code, err.getvalue()


@overload
def batcher(
    job: Path, sim: RunningSimulator | None, *args: str, key: str | None = ..., wait: Literal[True] = ...
) -> subprocess.CompletedProcess[str]: ...


@overload
def batcher(
    job: Path, sim: RunningSimulator | None, *args: str, key: str | None = ..., wait: Literal[False]
) -> subprocess.Popen[str]: ...


def batcher(
    job: Path, sim: RunningSimulator | None, *args: str, key: str | None = "test-key", wait: bool = True
) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    """``batcher run JOB ARGS`` in a subprocess, with only the API key and address given here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    if key is not None:
        env["ANTHROPIC_API_KEY"] = key
    if sim is not None:
        env["ANTHROPIC_BASE_URL"] = sim.base_url
    cmd = [sys.executable, "-m", "batcher.cli", "run", str(job), *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def estimate_json(job: Path) -> subprocess.CompletedProcess[str]:
    """``batcher estimate JOB --json`` in a subprocess, in this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "batcher.cli", "estimate", str(job), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- what the simulator saw, and what the run wrote ---------------------------------------------


def requests_sent(sim: RunningSimulator, route: str) -> int:
    """How many requests the simulator had on ``route`` (e.g. ``"POST /v1/messages"``), any status."""
    counts: dict[str, int] = sim.sim.ledger.snapshot()["requests"].get(route, {})
    return sum(counts.values())


def messages_sent(sim: RunningSimulator) -> int:
    return requests_sent(sim, "POST /v1/messages")


def wait_for_messages(
    sim: RunningSimulator, n: int, proc: subprocess.Popen[str], *, timeout_s: float = 30, poll_s: float = 0.05
) -> None:
    """Until the simulator has had ``n`` messages requests from the running ``proc``."""
    deadline = time.monotonic() + timeout_s
    while messages_sent(sim) < n:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(poll_s)


def results_by_id(out: Path) -> dict[str, dict[str, Any]]:
    """The results Parquet under ``out``, by row id; fails if an id appears twice."""
    rows = read_results(out).to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id appears twice in the results"
    return {r["id"]: r for r in rows}


# --- structured output ([output]) ----------------------------------------------------------------

#: the repository's shipped jobs (jobs/tags.toml, jobs/schemas/tags.json)
REPO_JOBS = Path(__file__).resolve().parents[1] / "jobs"

STRUCTURED_JOB = """
[input]
manifest = "manifest.jsonl"
id_column = "id"
image_column = "image"
prompt = "Tag this {{kind}}. nonce={{id}}"

[request]
model = "{model}"
max_tokens = {max_tokens}

[run]
output = "out"
mode = "{mode}"
poll_initial_s = 0.05
poll_max_s = 0.2
{run_extra}

[output]
schema = {schema}
columns = "{columns}"
retry_invalid = {retry_invalid}
{limits}"""


def structured_job(
    tmp: Path,
    rows: list[dict[str, Any]],
    schema: str,
    *,
    model: str = "claude-haiku-5-5",
    max_tokens: int = 800,
    mode: str = "online",
    columns: str = "flatten",
    retry_invalid: int = 1,
    run_extra: str = "",
    limits: str = "",
) -> Path:
    """A job with an ``[output]`` table; ``schema`` is the TOML value as written (a quoted path or
    ``module:Class``, or an inline table). The prompt carries ``nonce={id}``: the simulator echoes
    it in the answer's strings. ``limits``: a ``[limits]`` table (:data:`UNLIMITED`: no pacing)."""
    write_jsonl(tmp / "manifest.jsonl", rows)
    job = tmp / "job.toml"
    job.write_text(
        STRUCTURED_JOB.format(
            model=model,
            max_tokens=max_tokens,
            mode=mode,
            run_extra=run_extra,
            schema=schema,
            columns=columns,
            retry_invalid=retry_invalid,
            limits=limits,
        )
    )
    return job


def capture_bodies(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every messages body an in-process run (:func:`run_job`) sends, in order."""
    from batcher.api.client import Client

    bodies: list[dict[str, Any]] = []
    send = Client.messages

    async def messages(self: Client, body: Any, betas: Any = ()) -> Any:
        bodies.append(json.loads(json.dumps(body)))
        return await send(self, body, betas)

    monkeypatch.setattr(Client, "messages", messages)
    return bodies


# --- prompt caching (issue 16) -------------------------------------------------------------------

#: A system prompt well over Haiku 5.5's 512-token minimum cacheable prefix (~1,000 tokens).
LONG_SYSTEM = " ".join(
    f"Rule {i}: describe the image in one plain sentence, naming colours and objects precisely."
    for i in range(60)
)


def cached_job(
    tmp: Path,
    rows: list[dict[str, Any]],
    *,
    concurrency: int = 8,
    mode: str = "online",
    extra: str = "",
    system: str = LONG_SYSTEM,
    max_attempts: int = 4,
) -> Path:
    """:func:`write_job` with a long system prompt every row shares (``extra``: more TOML, e.g. a
    ``[limits]`` table), in ``mode`` (batch mode polls fast)."""
    job = write_job(tmp, rows, concurrency=concurrency, max_attempts=max_attempts)
    text = job.read_text().replace("[request]\n", f"[request]\nsystem = {json.dumps(system)}\n")
    text = text.replace("[run]\n", f'[run]\nmode = "{mode}"\npoll_initial_s = 0.05\npoll_max_s = 0.2\n')
    job.write_text(text + "\n" + extra)
    return job


def answer_visible_cache(sim: RunningSimulator, delay_s: float) -> None:
    """Make the simulator's prompt cache show an entry only ``delay_s`` after the request that
    wrote it (as the API does: only once the writing request has answered), so that requests sent
    while it is being written miss it and write it again."""
    cache = sim.sim.prompt_cache
    born: dict[bytes, float] = {}
    use, peek = cache.use, cache.peek

    def hiding(call: Any) -> Any:
        def wrapped(checked: Any, *args: Any, **kwargs: Any) -> Any:
            now = cache.clock()
            hidden = {k: v for k, v in cache.entries.items() if born.get(k, -1.0) > now}
            for key in hidden:
                del cache.entries[key]
            before = set(cache.entries)
            try:
                return call(checked, *args, **kwargs)
            finally:
                for key in set(cache.entries) - before:
                    born[key] = (
                        min(born.get(key, now + delay_s), now + delay_s) if key in hidden else now + delay_s
                    )
                for key, value in hidden.items():
                    cache.entries.setdefault(key, value)

        return wrapped

    cache.use, cache.peek = hiding(use), hiding(peek)


# --- few-shot examples and the prompt cache (issue 16) ------------------------------------------


#: a [limits] table far above any seed tier (the default simulator sets no limits of its own)
UNLIMITED = "[limits]\nrpm = 1_000_000\nitpm = 1_000_000_000\notpm = 1_000_000_000\n"


def fewshot_copy(
    tmp: Path, rows: list[dict[str, Any]], *, concurrency: int = 1, unlimited: bool = False
) -> Path:
    """jobs/fewshot.toml, its style guide and example images, copied beside a small manifest
    (``rows``, as :func:`good_rows` makes them), its results in ``tmp/out``. One request at a time
    by default: each row is sent once the one before (the first: the cache write) has answered.
    ``unlimited``: limits far above the tier-1 seed (the default simulator sets none, so the
    limiter would pace a cold ~6,000-token prefix at tier 1's 30k ITPM: seconds a request)."""
    import re
    import shutil

    shutil.copytree(REPO_JOBS / "examples", tmp / "examples")
    shutil.copytree(REPO_JOBS / "prompts", tmp / "prompts")
    write_jsonl(tmp / "manifest.jsonl", rows)
    text = (REPO_JOBS / "fewshot.toml").read_text()
    text = text.replace('manifest = "../data/manifest.csv"', 'manifest = "manifest.jsonl"')
    text = text.replace('output = "../out/{job}"', 'output = "out"')
    text = re.sub(r"(?m)^concurrency = \d+", f"concurrency = {concurrency}", text)
    if unlimited:
        text = text.replace(
            "[limits]\n", "[limits]\nrpm = 1_000_000\nitpm = 1_000_000_000\notpm = 1_000_000_000\n"
        )
    job = tmp / "fewshot.toml"
    job.write_text(text)
    return job


# --- a finished job's output folder, without running it (batcher report) -------------------------


def write_results(
    out: Path,
    results: Iterable[Result],
    *,
    output: OutputSpec | None = None,
    part_rows: int = 5000,
) -> None:
    """An output folder as a run leaves it: the rows synced in one complete pass, ``results``
    recorded in the job state and exported to Parquet parts of ``part_rows`` by the real Sink."""
    from batcher.records import Row
    from batcher.sink import Sink
    from batcher.state import JobState

    results = list(results)
    with JobState.open(out) as state:
        pass_id = state.begin_pass()
        rows = [
            Row(id=r.id, images=[i.source for i in r.images], prompt="", fields={}, index=n)
            for n, r in enumerate(results)
        ]
        state.sync_rows(rows, pass_id)
        sink = Sink(out, state, {}, output=output)
        for result in results:
            state.record(result)
        state.end_pass(pass_id)
        sink.export(max_rows=part_rows)


def result_row(
    i: int,
    *,
    status: str = "ok",
    images: Iterable[str] = (),
    text: str | None = None,
    data: dict[str, Any] | None = None,
) -> Result:
    """A finished row ``row-NNNNN`` (an error row: ``image_error``, no answer)."""
    ok = status == "ok"
    return Result(
        id=f"row-{i:05d}",
        status="ok" if ok else "error",
        text=(text if text is not None else f"answer {i}") if ok else None,
        model="claude-haiku-5-5",
        stop_reason="end_turn" if ok else None,
        input_tokens=100 + i % 7,
        output_tokens=20 + i % 5,
        attempts=1,
        latency_s=0.5 + (i % 10) / 10,
        error_type=None if ok else "decode_error",
        error_message=None if ok else f"images/{i}.jpg: corrupt image data",
        images=[ImageSent(source=s) for s in images],
        warnings=["small_image"] if i % 4 == 0 else [],
        cost_usd=0.001 + (i % 3) / 1000,
        data=data,
    )


# --- report pages (issue 17) ---------------------------------------------------------------------


def report_thumb(i: int, source: str = "", px: int = 160) -> Thumb:
    """A small drawn scene (sky, sun, hills; colours vary with ``i``) as a JPEG data URI."""
    import base64

    from PIL import ImageDraw

    w, h = (px, px * 3 // 4) if i % 3 else (px * 3 // 4, px)
    image = Image.new("RGB", (w, h), (120 + i * 37 % 120, 170 + i * 13 % 80, 230))
    draw = ImageDraw.Draw(image)
    draw.ellipse((w * 0.65, h * 0.1, w * 0.85, h * 0.1 + w * 0.2), fill=(250, 210 - i * 29 % 90, 60))
    draw.polygon([(0, h), (w * 0.35, h * 0.45), (w * 0.7, h)], fill=(60, 110 + i * 17 % 90, 70))
    draw.polygon([(w * 0.3, h), (w * 0.75, h * 0.55), (w, h * 0.8), (w, h)], fill=(40, 90, 60 + i * 23 % 90))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=80)
    uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return Thumb(source=source or f"images/img{i:05d}.jpg", src=uri, width=w, height=h)


_CAPTIONS = (
    "A red-roofed farmhouse on a green hill under a clear sky; a low sun to the right.",
    "Two hills meet at a small valley. The sky is pale blue and there are no people or animals.",
    "Sunset over rolling hills, the light warm and low; a single tree stands at the ridge.",
    "A landscape illustration: flat colours, a yellow sun, dark green hills in the foreground.",
    "Green hills and a blue sky.",
)


def report_cards(n: int, *, errors_every: int = 7, fields: bool = False) -> list[Card]:
    """``n`` varied cards as a results part would make them: ok rows with captions (or with
    ``fields``: a structured answer), every ``errors_every``-th row an error, some warnings, one
    image that could not be read."""
    import json

    cards = []
    for i in range(n):
        thumbs: tuple[Thumb, ...] = (report_thumb(i),)
        if i % 11 == 5:
            thumbs = (Thumb(source=f"images/img{i:05d}.jpg", src=None, missing="file not found"),)
        if i % 13 == 12:
            thumbs = (*thumbs, report_thumb(i + 1, source=f"images/img{i:05d}-b.jpg"))
        warnings = (
            ("small_image",) if i % 5 == 3 else ("truncated_accepted", "small_image") if i % 9 == 8 else ()
        )
        common = dict(
            id=f"row-{i:05d}",
            warnings=warnings,
            input_tokens=1_200 + i * 37 % 900,
            cache_read_tokens=900 if i % 2 else 0,
            attempts=1 + (i % 4 == 0),
            latency_s=0.4 + (i * 0.73) % 6,
            thumbs=thumbs,
        )
        if errors_every and i % errors_every == errors_every - 1:
            kind = ("image_unreadable", "api_timeout", "schema_mismatch")[i // errors_every % 3]
            cards.append(
                Card(
                    status="error",
                    text=None,
                    error_type=kind,
                    error_message=f"{kind.replace('_', ' ')} after {1 + i % 4} attempt(s)",
                    cost_usd=0.0 if kind == "image_unreadable" else 0.0011,
                    **common,
                )
            )
            continue
        caption = _CAPTIONS[i % len(_CAPTIONS)]
        answer: dict[str, Any] = {"caption": caption, "tags": ["hill", "sky"][: 1 + i % 2], "people": i % 4}
        cards.append(
            Card(
                status="ok",
                text=json.dumps(answer) if fields else caption,
                fields=tuple((k, v if isinstance(v, str) else json.dumps(v)) for k, v in answer.items())
                if fields
                else (),
                output_tokens=20 + len(caption) // 4,
                cost_usd=0.0012 + (i * 0.00031) % 0.002,
                **common,
            )
        )
    return cards


def report_header(cards: list[Card], *, results: int | None = None, job: str = "captions") -> Header:
    """A header over ``cards`` (``results``: how many rows the job has, when the cards are a sample)."""
    from collections import Counter

    latencies = [c.latency_s for c in cards if c.latency_s is not None]
    costs = [c.cost_usd for c in cards if c.cost_usd is not None]

    def histogram(label: str, unit: str, values: list[float], bins: int = 12) -> Histogram:
        low, high = min(values, default=0.0), max(values, default=1.0)
        step = (high - low) / bins or 1.0
        counts = [0] * bins
        for v in values:
            counts[min(int((v - low) / step), bins - 1)] += 1
        return Histogram(label, unit, tuple(low + step * k for k in range(bins + 1)), tuple(counts))

    reads = sum(1 for c in cards if c.cache_read_tokens)
    return Header(
        job=job,
        out_dir=f"/data/out/{job}",
        generated_at="2025-06-01T07:30:00Z",
        rows=results or len(cards),
        by_status=dict(Counter(c.status for c in cards)),
        errors_by_type=dict(Counter(c.error_type for c in cards if c.error_type)),
        warnings_by_type=dict(Counter(w for c in cards for w in c.warnings)),
        input_tokens=sum(c.input_tokens or 0 for c in cards),
        output_tokens=sum(c.output_tokens or 0 for c in cards),
        cache_read_tokens=sum(c.cache_read_tokens or 0 for c in cards),
        cache_write_tokens=sum(c.cache_write_tokens or 0 for c in cards),
        cache_hit_rate=reads / len(cards) if cards else None,
        cost_usd=sum(costs),
        time_spent_s=4_321.0,
        results=results or len(cards),
        cards=len(cards),
        histograms=(histogram("latency", "s", latencies), histogram("cost per row", "USD", costs)),
    )


# --- object stores (issue 18) --------------------------------------------------------------------


@dataclass
class Bucket:
    """A bucket on the tests' S3 server (the ``s3`` fixture): its name and the filesystem."""

    name: str
    fs: Any

    @classmethod
    def create(cls, fs: Any) -> Bucket:
        name = f"test-{uuid.uuid4().hex[:12]}"
        fs.mkdir(name)
        return cls(name, fs)

    def uri(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"

    def put(self, key: str, data: bytes | Path) -> str:
        """Write an object; its URI."""
        self.fs.pipe_file(f"{self.name}/{key}", data.read_bytes() if isinstance(data, Path) else data)
        return self.uri(key)

    def keys(self, prefix: str = "") -> list[str]:
        """The keys under ``prefix`` (fresh: no listing cache)."""
        self.fs.invalidate_cache()
        found = self.fs.find(f"{self.name}/{prefix}")
        return sorted(path.split("/", 1)[1] for path in found)


# --- Ray (issue 18) ------------------------------------------------------------------------------


class LimiterWorker:
    """A worker's side of the cluster's limiter, as a Ray actor in its own process (wrap it with
    ``ray.remote``): it takes places through a :class:`~batcher.engines.ray_limiter.RemoteLimiter`
    exactly as the request code does, and says how each request ended."""

    def __init__(self, job_key: str, owner: str) -> None:
        from batcher.engines.ray_limiter import RemoteLimiter, find_limiter

        self.remote = RemoteLimiter(find_limiter(job_key), owner)
        self.owner = owner
        self.granted = 0
        self._stop: Any = None

    async def hammer(self, loops: int, headers: dict[str, str]) -> int:
        """``loops`` requests at a time, each answered at once with ``headers``, until
        :meth:`stop`; how many places were granted."""
        import anyio

        from batcher.ratelimit import Cost, GaveUp

        stop = self._stop = anyio.Event()

        async def loop() -> None:
            while not stop.is_set():
                try:
                    async with self.remote.slot(Cost(10, 10), stop) as slot:
                        self.granted += 1
                        slot.answered(headers, {"input_tokens": 10, "output_tokens": 10})
                except GaveUp:
                    return

        async with anyio.create_task_group() as tg:
            for _ in range(loops):
                tg.start_soon(loop)
        return self.granted

    async def stop(self) -> None:
        import anyio

        while self._stop is None:  # hammer() may not have started yet
            await anyio.sleep(0.01)
        self._stop.set()

    async def one(self, status: int | None, headers: dict[str, str]) -> None:
        """One request through a slot: answered (``status`` None) or failed with ``status``."""
        from batcher.api import errors
        from batcher.ratelimit import Cost

        try:
            async with self.remote.slot(Cost(10, 10)) as slot:
                if status is not None:
                    raise errors.from_response(status, {}, headers)
                slot.answered(headers, {"input_tokens": 10, "output_tokens": 10})
        except errors.APIError:
            pass

    async def give_up_waiting(self) -> bool:
        """Wait for a place, and give it up (the run stopping) once the limiter has the wait;
        whether the wait ended in :class:`~batcher.ratelimit.GaveUp`."""
        import anyio

        from batcher.ratelimit import Cost, GaveUp

        stop = anyio.Event()
        gave_up: list[bool] = []

        async def wait() -> None:
            try:
                async with self.remote.slot(Cost(10, 10), stop):
                    gave_up.append(False)
            except GaveUp:
                gave_up.append(True)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            while (await self.remote.handle.stats.remote())["waiting"] == 0:
                await anyio.sleep(0.01)
            stop.set()
        return gave_up == [True]

    async def try_now(self) -> bool:
        """Whether the cluster's budget gives a place right now (one taken is handed back)."""
        from batcher.ratelimit import Cost

        grant = await self.remote.handle.try_acquire.remote(self.owner, Cost(10, 10))
        if grant is None:
            return False
        await self.remote.handle.release.remote(grant.ticket)
        return True

    async def view(self) -> dict[str, Any]:
        return (await self.remote.refresh()).snapshot


def ray_job(
    tmp: Path,
    rows: list[dict[str, Any]],
    *,
    workers: int = 2,
    concurrency: int = 8,
    max_attempts: int = 4,
    extra: str = "",
) -> Path:
    """:func:`write_job` run by the Ray engine (``[run] engine = "ray"``, ``[ray] workers``);
    ``extra``: more TOML (a ``[limits]`` table)."""
    job = write_job(tmp, rows, concurrency=concurrency, max_attempts=max_attempts)
    text = job.read_text().replace("[run]\n", '[run]\nengine = "ray"\n')
    job.write_text(text + f"\n[ray]\nworkers = {workers}\n" + extra)
    return job


def charges(sim: RunningSimulator) -> dict[str, int]:
    """What the simulator charged, by row id (its ``nonce``): more than 1 is a row paid twice."""
    counts: dict[str, int] = sim.sim.ledger.snapshot()["charges_by_nonce"]
    return counts


def ray_workers(ray: Any) -> list[Any]:
    """Handles of the batcher worker actors alive in the local Ray instance."""
    from batcher.engines.ray_limiter import NAMESPACE

    named = ray.util.list_named_actors(all_namespaces=True)
    return [
        ray.get_actor(a["name"], namespace=a["namespace"])
        for a in named
        if a["namespace"] == NAMESPACE and a["name"].startswith("batcher-worker-")
    ]
