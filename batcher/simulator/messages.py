"""POST /v1/messages and /v1/messages/count_tokens.

The live endpoint answers a body through the simulator's one path (validate, answer, bill; see
:mod:`batcher.simulator.core`), wrapped in the API's order: rate-limit admission, injected faults,
latency, settlement, then the bill, which is charged even when the connection is then cut (the API
bills what it processed).
"""

from __future__ import annotations

from typing import Final

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import Response

from batcher.simulator.answers import answer
from batcher.simulator.core import Simulator, answer_fault, record
from batcher.simulator.records import MessageCost
from batcher.simulator.validate import check_body
from batcher.simulator.wire import betas_of, read_json

#: Bodies larger than this carry images: decoding them (base64, headers, mean colours) runs on a
#: worker thread so it does not stall the event loop that serves every other request.
_HEAVY_BODY_BYTES: Final = 64 * 1024


def _is_heavy(request: Request) -> bool:
    length = request.headers.get("content-length", "")
    return length.isdigit() and int(length) > _HEAVY_BODY_BYTES


async def create(request: Request, sim: Simulator) -> Response:
    """POST /v1/messages."""
    betas = betas_of(request)
    body = await read_json(request)
    if _is_heavy(request):
        checked = await anyio.to_thread.run_sync(lambda: check_body(body, sim, betas=betas))
    else:
        checked = check_body(body, sim, betas=betas)
    # Cache reads do not count toward ITPM: admit the prompt less what the cache holds of it.
    cached = sim.prompt_cache.peek(checked)
    cost = MessageCost(checked.input_tokens - cached, checked.max_tokens, checked.megapixels)
    admission = sim.buckets.admit(cost)
    try:
        fate = await sim.faults.before(cost)
    except BaseException:
        # An injected failure produced no output: give back the output tokens admit() took.
        sim.buckets.settle(admission, 0)
        raise
    # Mean colours decode pixels: worth a thread hop only when there are many bytes to decode
    # (small images decode in well under the hop's own cost; file sources are not in the body).
    fault = answer_fault(sim, checked)
    if sum(len(image.raw) for image in checked.images if image.raw is not None) > _HEAVY_BODY_BYTES:
        processed = await anyio.to_thread.run_sync(answer, checked, sim.prompt_cache, fault)
    else:
        processed = answer(checked, sim.prompt_cache, fault)
    await sim.faults.delay(cost, processed.output_tokens)
    read = processed.message["usage"]["cache_read_input_tokens"]
    sim.buckets.settle(admission, processed.output_tokens, processed.input_tokens - read)
    record(sim, processed)
    payload = orjson.dumps(processed.message)
    if fate.drop:
        return sim.faults.dropped(payload)
    return Response(payload, media_type="application/json")


async def count_tokens(request: Request, sim: Simulator) -> Response:
    """POST /v1/messages/count_tokens: the same count, free, no messages rate limit."""
    betas = betas_of(request)
    body = await read_json(request)
    if _is_heavy(request):
        checked = await anyio.to_thread.run_sync(lambda: check_body(body, sim, betas=betas, count=True))
    else:
        checked = check_body(body, sim, betas=betas, count=True)
    return Response(orjson.dumps({"input_tokens": checked.input_tokens}), media_type="application/json")
