"""Does batcher sit on a rate limit? batcher's request path against the official SDK, side by side.

Each regime starts a fresh simulator as a subprocess (1 s latency, a 5 s burst window) and sends
the same rows twice, each time to a fresh simulator: once through batcher's real request path
(``Pipeline._send`` and its :class:`~batcher.ratelimit.Limiter`, concurrency 64, no limits given),
once through the official ``anthropic`` async SDK behind an ``asyncio.Semaphore(64)`` with 10
retries a row (``--sdk-retries``). The simulator's ledger is the witness for both.

Regimes: requests-bound (240 RPM), input-tokens-bound (~1,400-token images, 180k ITPM) and
output-tokens-bound (6k OTPM, max_tokens 20, answers cut at it). Then a fault run (5% 529, 3% 500,
3% dropped connections) through batcher only, and client overhead: batcher's request path against
an unlimited, zero-latency simulator, next to bare httpx with the same concurrency.

    python scripts/bench_ratelimit.py [--quick]

Targets (issue 5), for batcher: every row answered, steady throughput >= 95% of the binding limit
(after a warm-up), <= 2% of requests answered 429; the fault run answers every row exactly once;
overhead >= 300 requests a second.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import httpx

from batcher import facts
from batcher.api.bodies import ImagePart
from batcher.api.client import Client
from batcher.config import JobConfig, parse_job
from batcher.models import ModelProfile, load_registry
from batcher.pipeline import Pipeline, Prepared
from batcher.records import ImageSent, Result, Row
from batcher.simulator.server import start_subprocess, stop_subprocess

MODEL: Final = "claude-haiku-5-5"
CONCURRENCY: Final = 64
LATENCY_S: Final = 1.0
BURST_WINDOW_S: Final = 5.0
#: Seconds after the first answer before throughput counts (the API's bucket starts full).
WARMUP_S: Final = 10.0
TARGET_SHARE, TARGET_429 = 0.95, 0.02
TARGET_RPS: Final = 300


@dataclass(frozen=True)
class Regime:
    name: str
    binds: str  # requests | input | output
    rpm: float
    itpm: float
    otpm: float
    image_edge: int
    max_tokens: int
    rows: int

    @property
    def limit(self) -> float:
        return {"requests": self.rpm, "input": self.itpm, "output": self.otpm}[self.binds]

    def sim_args(self) -> list[str]:
        return [
            "--rpm",
            str(self.rpm),
            "--itpm",
            str(self.itpm),
            "--otpm",
            str(self.otpm),
            "--burst-window",
            str(BURST_WINDOW_S),
            "--latency",
            str(LATENCY_S),
        ]


REGIMES: Final = (
    Regime("requests-bound", "requests", 240, 2_000_000, 400_000, 200, 64, 260),
    Regime("input-bound", "input", 4000, 180_000, 400_000, 1036, 64, 150),
    Regime("output-bound", "output", 4000, 2_000_000, 6_000, 200, 20, 330),
)


# --- rows ----------------------------------------------------------------------------------------


def jpeg(edge: int) -> bytes:
    from PIL import Image

    image = Image.linear_gradient("L").resize((edge, edge)).convert("RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return out.getvalue()


def prompt(i: int) -> str:
    return f"Describe this image in one line. nonce=row-{i:05d}"


def prepared_rows(
    n: int, edge: int, media_type: str = "image/jpeg", data: bytes | None = None
) -> list[Prepared]:
    data = data if data is not None else jpeg(edge)
    b64 = base64.b64encode(data).decode()
    tokens = facts.visual_tokens(edge, edge)
    out = []
    for i in range(n):
        row = Row(id=f"row-{i:05d}", images=["bench.jpg"], prompt=prompt(i), fields={}, index=i)
        sent = ImageSent(
            source="bench.jpg",
            width=edge,
            height=edge,
            bytes=len(data),
            media_type=media_type,
            transport="base64",
            tokens=tokens,
        )
        out.append(Prepared(row, [ImagePart("base64", b64, media_type)], [sent], []))
    return out


class NoState:
    """The job state's one method the request path calls; the bench keeps nothing."""

    def set_meta(self, key: str, value: Any) -> None:
        pass


def bench_job(max_tokens: int) -> JobConfig:
    return parse_job(
        {
            "input": {"manifest": "bench.jsonl", "prompt": "{x}"},
            "request": {"model": MODEL, "max_tokens": max_tokens},
            "run": {"concurrency": CONCURRENCY},
        },
        Path("bench.toml"),
    )


# --- the two clients -----------------------------------------------------------------------------


@dataclass
class Run:
    answered: int
    rows: int
    wall_s: float
    ledger: dict[str, Any]
    peak_in_flight: int = 0


async def run_batcher(url: str, rows: list[Prepared], profile: ModelProfile, max_tokens: int) -> Run:
    job = bench_job(max_tokens)
    answered = 0
    todo = iter(rows)
    started = time.monotonic()
    async with Client("bench", url, max_connections=CONCURRENCY) as client:
        pipeline = Pipeline(job=job, profile=profile, client=client, state=NoState(), sink=None, pool=None)

        async def worker() -> None:
            nonlocal answered
            for p in todo:
                outcome = await pipeline.requester.request_once(p)
                if isinstance(outcome, Result) and outcome.status == "ok":
                    answered += 1

        async with anyio.create_task_group() as tg:
            for _ in range(job.run.concurrency):
                tg.start_soon(worker)
    wall = time.monotonic() - started
    return Run(answered, len(rows), wall, ledger_of(url))


async def run_sdk(url: str, rows: list[Prepared], max_tokens: int, max_retries: int) -> Run:
    import anthropic

    semaphore = asyncio.Semaphore(CONCURRENCY)
    answered = 0
    started = time.monotonic()
    async with anthropic.AsyncAnthropic(api_key="bench", base_url=url, max_retries=max_retries) as client:

        async def one(p: Prepared) -> None:
            nonlocal answered
            part = p.parts[0]
            async with semaphore:
                try:
                    await client.messages.create(
                        model=MODEL,
                        max_tokens=max_tokens,
                        messages=[
                            {
                                "role": "user",
                                "content": [
                                    {
                                        "type": "image",
                                        "source": {
                                            "type": "base64",
                                            "media_type": part.media_type,
                                            "data": part.value,
                                        },
                                    },
                                    {"type": "text", "text": p.row.prompt},
                                ],
                            }
                        ],
                    )
                except anthropic.APIError:
                    return  # the SDK gave up on this row
                answered += 1

        await asyncio.gather(*(one(p) for p in rows))
    return Run(answered, len(rows), time.monotonic() - started, ledger_of(url))


def ledger_of(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/_ledger", timeout=30).json()  # type: ignore[no-any-return]


# --- figures ------------------------------------------------------------------------------------


@dataclass
class Figures:
    answered: int
    rows: int
    share: float | None  # steady throughput / binding limit; None: over before the warm-up
    rate_limited: float  # share of requests answered 429
    wall_s: float
    requests: int

    def meets(self) -> bool:
        return (
            self.answered == self.rows
            and self.share is not None
            and self.share >= TARGET_SHARE
            and self.rate_limited <= TARGET_429
        )


def figures(run: Run, regime: Regime) -> Figures:
    ledger = run.ledger
    statuses = Counter({int(k): v for k, v in ledger["requests"].get("POST /v1/messages", {}).items()})
    requests = sum(statuses.values())
    ok_times = sorted(t for t, status in ledger["message_log"] if status == 200)
    per_request = {
        "requests": 1.0,
        "input": ledger["input_tokens"] / max(1, len(ok_times)),
        "output": ledger["output_tokens"] / max(1, len(ok_times)),
    }[regime.binds]
    share = None
    if len(ok_times) > 2:
        start = ok_times[0] + WARMUP_S
        steady = [t for t in ok_times if t > start]
        # A client that gave up within seconds has no steady state to speak of.
        if len(steady) > 1 and steady[-1] - steady[0] >= WARMUP_S:
            per_minute = (len(steady) - 1) / (steady[-1] - steady[0]) * 60 * per_request
            share = per_minute / regime.limit
    return Figures(run.answered, run.rows, share, statuses[429] / max(1, requests), run.wall_s, requests)


def print_row(name: str, f: Figures) -> None:
    share = "n/a" if f.share is None else f"{f.share * 100:.1f}%"
    print(
        f"  {name:<22}{f.answered:>5}/{f.rows:<5}{share:>10}{f.rate_limited * 100:>9.1f}%"
        f"{f.requests:>10}{f.wall_s:>9.1f}s"
    )


# --- the runs -----------------------------------------------------------------------------------


async def regime_run(regime: Regime, rows: int, profile: ModelProfile, sdk_retries: int) -> bool:
    prepared = prepared_rows(rows, regime.image_edge)
    results: dict[str, Figures] = {}
    for name in ("batcher", "anthropic SDK + sem"):
        url, proc = start_subprocess(regime.sim_args())
        try:
            if name == "batcher":
                run = await run_batcher(url, prepared, profile, regime.max_tokens)
            else:
                run = await run_sdk(url, prepared, regime.max_tokens, sdk_retries)
        finally:
            stop_subprocess(proc)
        results[name] = figures(run, regime)
    unit = {"requests": "RPM", "input": "ITPM", "output": "OTPM"}[regime.binds]
    print(
        f"{regime.name}: binding {regime.limit:,.0f} {unit} (limits {regime.rpm:,.0f} RPM, "
        f"{regime.itpm:,.0f} ITPM, {regime.otpm:,.0f} OTPM), image {regime.image_edge}px "
        f"({facts.visual_tokens(regime.image_edge, regime.image_edge)} tokens), "
        f"max_tokens {regime.max_tokens}"
    )
    print(f"  {'client':<22}{'answered':>11}{'of limit':>10}{'429s':>10}{'requests':>10}{'wall':>10}")
    for name, f in results.items():
        print_row(name, f)
    print(
        f"  (n/a: fewer than {WARMUP_S:g} s of answers after the warm-up: the client answered or "
        "gave up on every row before that)"
    )
    ok = results["batcher"].meets()
    print(
        f"  batcher target (all rows, >= {TARGET_SHARE:.0%} of the limit, <= {TARGET_429:.0%} 429s): "
        f"{'met' if ok else 'NOT met'}\n"
    )
    return ok
    return ok


async def fault_run(rows: int, profile: ModelProfile) -> bool:
    args = [
        "--rpm",
        "240",
        "--burst-window",
        str(BURST_WINDOW_S),
        "--latency",
        str(LATENCY_S),
        "--fault",
        "overloaded=0.05",
        "--fault",
        "server_error=0.03",
        "--fault",
        "drop=0.03",
        "--seed",
        "5",
    ]
    prepared = prepared_rows(rows, 200)
    url, proc = start_subprocess(args)
    try:
        run = await run_batcher(url, prepared, profile, 64)
    finally:
        stop_subprocess(proc)
    charges = run.ledger["charges_by_nonce"]
    faults = run.ledger.get("faults", {})
    missing = [p.row.id for p in prepared if charges.get(p.row.id, 0) == 0]
    twice = [k for k, n in charges.items() if n > 1]
    statuses = run.ledger["requests"].get("POST /v1/messages", {})
    print(f"fault run: 240 RPM, 5% 529, 3% 500, 3% dropped connections; {rows} rows through batcher")
    print(
        f"  answered {run.answered}/{rows} in {run.wall_s:.1f}s; requests by status "
        f"{dict(sorted(statuses.items()))}; faults injected {faults}"
    )
    print(
        f"  ledger: {rows - len(missing)} rows charged, none missing: {not missing}; charged twice: "
        f"{len(twice)} (each a dropped connection the API had answered and billed; drops: "
        f"{faults.get('drop', 0)})"
    )
    ok = run.answered == rows and not missing and len(twice) <= faults.get("drop", 0)
    print(
        f"  target (every row answered exactly once; the only double charges are cut answers): "
        f"{'met' if ok else 'NOT met'}\n"
    )
    return ok


async def overhead_run(n: int, profile: ModelProfile) -> bool:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 60, 200)).save(out, "PNG")
    prepared = prepared_rows(n, 16, "image/png", out.getvalue())
    url, proc = start_subprocess([])
    try:
        # warm both (the server's first requests, imports), then measure each once
        await run_batcher(url, prepared[:200], profile, 16)
        await bare_httpx(url, prepared[:200], 16)
        bare_rps = await bare_httpx(url, prepared, 16)
        started = time.monotonic()
        await run_batcher(url, prepared, profile, 16)
        batcher_rps = n / (time.monotonic() - started)
    finally:
        stop_subprocess(proc)
    print(f"client overhead: {n} requests, unlimited zero-latency simulator, concurrency {CONCURRENCY}")
    print(
        f"  batcher request path {batcher_rps:,.0f} req/s; bare httpx (one AsyncClient, same bodies) "
        f"{bare_rps:,.0f} req/s; ratio {batcher_rps / bare_rps:.2f}"
    )
    ok = batcher_rps >= TARGET_RPS
    print(f"  target (>= {TARGET_RPS} req/s): {'met' if ok else 'NOT met'}\n")
    return ok


async def bare_httpx(url: str, rows: list[Prepared], max_tokens: int) -> float:
    import orjson

    from batcher.api.bodies import RequestSettings, messages_body

    profile = load_registry().get(MODEL)
    assert profile is not None
    bodies = [
        orjson.dumps(messages_body(profile, RequestSettings(max_tokens), p.parts, p.row.prompt)) for p in rows
    ]
    headers = {
        "x-api-key": "bench",
        "anthropic-version": facts.API_VERSION,
        "content-type": "application/json",
    }
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    todo = iter(bodies)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as client:

        async def worker() -> None:
            for body in todo:
                (await client.post("/v1/messages", content=body)).raise_for_status()

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for _ in range(CONCURRENCY):
                tg.start_soon(worker)
    return len(bodies) / (time.monotonic() - started)


async def bench(args: argparse.Namespace) -> int:
    profile = load_registry().get(MODEL)
    assert profile is not None
    scale = 0.5 if args.quick else 1.0
    print(
        f"bench_ratelimit: simulator as a subprocess, {LATENCY_S:g} s latency, {BURST_WINDOW_S:g} s "
        f"burst window; concurrency {CONCURRENCY}; batcher given no limits (it starts at the "
        f"lowest tier and learns); the SDK baseline retries {args.sdk_retries} times a row; "
        f"throughput counted {WARMUP_S:g} s after the first answer\n"
    )
    started = time.monotonic()
    results = []
    for regime in REGIMES:
        if args.only and regime.name not in args.only:
            continue
        results.append(await regime_run(regime, max(40, int(regime.rows * scale)), profile, args.sdk_retries))
    if not args.only or "faults" in args.only:
        results.append(await fault_run(max(40, int(200 * scale)), profile))
    if not args.only or "overhead" in args.only:
        results.append(await overhead_run(int(3000 * scale), profile))
    print(
        f"whole bench: {time.monotonic() - started:.0f} s; all batcher targets "
        f"{'met' if all(results) else 'NOT met'}"
    )
    return 0 if all(results) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="half the rows in every run")
    parser.add_argument("--only", nargs="*", help="regime names, 'faults', 'overhead'")
    parser.add_argument(
        "--sdk-retries",
        type=int,
        default=10,
        help="the baseline's max_retries (the issue's figures were taken with 10)",
    )
    return anyio.run(bench, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
