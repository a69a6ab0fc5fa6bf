"""The run core's shared pieces (issue 14): what both drivers now get from one place.

Each test pins something the two drivers used to compute apart and could disagree on: the request
the budget prices and the one the limiter counts, the Result made from an answer online and from a
batch, the writer's counting of rows left for the next run, and the fakes the tests run the
pipeline with against the seams the real classes fill.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from batcher.api.bodies import ImagePart
from batcher.config import parse_job
from batcher.core import results
from batcher.core.outcomes import Counters, Prepared, Transient, Written
from batcher.core.plan import Planner, row_worst_cost
from batcher.core.seams import ImagePreparer, ResultSink, RunState
from batcher.core.writer import Writer
from batcher.cost import usage_cost
from batcher.models import load_registry
from batcher.ratelimit import request_cost
from batcher.records import ImageSent, Result, Row
from tests.test_pipeline import CountingPool, MemoryState, NoSink

MODEL = "claude-haiku-5-5"


def _job(mode: str = "online", budget: float | None = None):  # type: ignore[no-untyped-def]
    return parse_job(
        {
            "input": {"manifest": "m.jsonl", "prompt": "{x}"},
            "request": {"model": MODEL, "max_tokens": 300, "system": "You caption images."},
            "run": {"mode": mode},
        },
        Path("job.toml"),
    )


def _prepared(tokens: list[int | None]) -> Prepared:
    row = Row(
        id="r1", images=[f"{n}.jpg" for n in range(len(tokens))], prompt="Describe it.", fields={}, index=0
    )
    parts = [
        ImagePart("base64", "AAAA", "image/jpeg") if t is not None else ImagePart("url", "https://x/a.jpg")
        for t in tokens
    ]
    sent = [ImageSent(source=s, tokens=t) for s, t in zip(row.images, tokens, strict=True)]
    return Prepared(row, parts, sent, [])


def test_the_plan_is_what_the_limiter_counts_and_the_budget_holds() -> None:
    profile = load_registry().get(MODEL)
    assert profile is not None
    prepared = _prepared([1369, None])  # an image sent by URL: its size is not known
    plan = Planner.for_job(_job(), profile).plan(prepared)
    # The limiter's own rule over the same body (an unknown image at the model's budget).
    counted = request_cost(plan.body, profile, [1369, None], 300)
    assert plan.tokens.input == counted.input_tokens and plan.max_tokens == counted.max_tokens
    assert plan.tokens.image == 1369 + profile.image_token_budget
    assert plan.worst_usd == row_worst_cost(profile, plan.tokens, 300, batch=False)


def test_a_batch_plan_is_priced_at_the_batch_price() -> None:
    profile = load_registry().get(MODEL)
    assert profile is not None
    prepared = _prepared([1369])
    online = Planner.for_job(_job("online"), profile).plan(prepared)
    batch = Planner.for_job(_job("batch"), profile).plan(prepared)
    assert online.body == batch.body and online.tokens == batch.tokens
    assert batch.worst_usd < online.worst_usd
    assert batch.worst_usd == row_worst_cost(profile, batch.tokens, 300, batch=True)


def test_one_answer_makes_the_same_result_online_and_from_a_batch() -> None:
    profile = load_registry().get(MODEL)
    assert profile is not None
    message = {
        "id": "msg_1",
        "model": MODEL,
        "stop_reason": "end_turn",
        "content": [{"type": "text", "text": "a red square"}],
        "usage": {"input_tokens": 1500, "output_tokens": 12},
    }
    common = dict(row_id="r1", images=[ImageSent(source="a.jpg")], warnings=[], fields={"k": 1}, attempts=1)
    online = results.answered(profile, message, request_id="req_1", latency_s=0.5, **common)  # type: ignore[arg-type]
    batch = results.answered(profile, message, request_id="msg_1", mode="batch", **common)  # type: ignore[arg-type]
    assert online.text == batch.text == "a red square" and online.status == batch.status == "ok"
    assert (online.mode, batch.mode) == ("online", "batch")
    assert online.cost_usd == usage_cost(profile, message["usage"])  # type: ignore[arg-type]
    assert batch.cost_usd == usage_cost(profile, message["usage"], batch=True)  # type: ignore[arg-type]
    assert batch.cost_usd is not None and online.cost_usd is not None and batch.cost_usd < online.cost_usd


@pytest.mark.anyio
async def test_the_writer_counts_rows_left_for_the_next_run_and_stamps_the_mode() -> None:
    # Batch mode's copy of the write stage never counted a row left for the next run.
    state = MemoryState()
    writer = Writer(state, NoSink(), Counters(), part_rows=10, mode="batch", export_as_it_goes=False)
    send, receive = anyio.create_memory_object_stream[Written](8)
    async with send:
        await send.send(Transient("r1", "upload_failed", "image 1 (a.jpg): 503", 0))
        await send.send(Result(id="r2", status="error", error_type="too_small", error_message="tiny"))
    await writer.write(receive)
    assert writer.counters.left_for_next_run == 1 and writer.counters.error == 1
    assert writer.counters.finished == 2
    assert state.transient == ["r1"] and state.results["r2"].mode == "batch"


def test_the_test_fakes_fill_the_seams_the_real_classes_fill() -> None:
    # mypy checks these assignments too (the real classes: batcher/core/seams.py).
    state: RunState = MemoryState()
    sink: ResultSink = NoSink()
    pool: ImagePreparer = CountingPool()
    assert isinstance(state, RunState) and isinstance(sink, ResultSink) and isinstance(pool, ImagePreparer)
    from batcher.images.pool import ImagePool
    from batcher.sink import Sink
    from batcher.state import JobState

    for real, seam in ((JobState, RunState), (Sink, ResultSink)):
        missing = [name for name in dir(seam) if not name.startswith("_") and not hasattr(real, name)]
        assert not missing, f"{real.__name__} lacks {missing} of {seam.__name__}"
    assert isinstance(ImagePool(workers=1), ImagePreparer)  # no worker starts before `async with`
