"""The simulator's prompt cache follows the API's rules (issue 16).

Pure on :class:`PromptCache` where a test is about the rule (breakpoints only, the 20-block
lookback, the minimum per model, TTLs, namespaces); through real sockets where it is about what a
client sees (the 400s, usage, Message Batches' best effort, the ledger, the ITPM bucket).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from batcher import facts
from batcher.cost import usage_cost
from batcher.simulator.config import BatchClock, SimConfig
from batcher.simulator.core import Simulator
from batcher.simulator.errors import ApiError
from batcher.simulator.promptcache import (
    BATCH,
    LOOKBACK_BLOCKS,
    ONLINE,
    SIM_DEFAULT_MIN_CACHEABLE,
    CacheUse,
    PromptCache,
    batch_hit,
)
from batcher.simulator.server import RunningSimulator
from batcher.simulator.validate import Checked, check_body
from tests.simulator.test_batches import create, results, wait_ended

HAIKU, OPUS = "claude-haiku-5-5", "claude-opus-4-8"
HEADERS = {"x-api-key": "test", "anthropic-version": facts.API_VERSION}
#: a shared instruction of some 1,000 tokens on Haiku (over its 512 minimum, under Opus's 4,096)
LONG = "Caption the image in one line, in the house style. " * 60
EPHEMERAL = {"type": "ephemeral"}


def system(text: str = LONG, **cache_control: Any) -> list[dict[str, Any]]:
    block: dict[str, Any] = {"type": "text", "text": text}
    if cache_control:
        block["cache_control"] = cache_control
    return [block]


def text(value: str, **cache_control: Any) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": value}
    if cache_control:
        block["cache_control"] = cache_control
    return block


def body(*blocks: dict[str, Any], model: str = HAIKU, **extra: Any) -> dict[str, Any]:
    content = list(blocks) or [text("nonce=x")]
    return {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator(SimConfig(today=dt.date(2026, 11, 1)))
    yield simulator
    simulator.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> PromptCache:
    return PromptCache(clock=clock)


def checked(sim: Simulator, payload: dict[str, Any]) -> Checked:
    return check_body(payload, sim, betas=frozenset())


def prefix_tokens(sim: Simulator, payload: dict[str, Any], blocks: int) -> int:
    """Tokens of the prompt up to the end of its ``blocks``-th block."""
    seen = cum = 0
    for seg in checked(sim, payload).segments:
        cum += seg.tokens
        seen += seg.block
        if seen == blocks:
            return cum
    raise AssertionError("the prompt has fewer blocks")


# --- 1. breakpoints only -------------------------------------------------------------------------


def test_entries_are_written_only_at_breakpoints(sim: Simulator, cache: PromptCache) -> None:
    plain = checked(sim, body(system=system()))
    assert cache.use(plain) == CacheUse() and not cache.entries  # no breakpoint: no write
    marked = checked(sim, body(system=system(**EPHEMERAL)))
    written = cache.use(marked)
    assert written.write_5m == prefix_tokens(sim, body(system=system()), 1) and written.read == 0
    assert len(cache.entries) == 1  # one entry: the prefix up to the breakpoint, not every block
    # the same prompt without a breakpoint neither reads nor writes (nor refreshes)
    before = dict(cache.entries)
    assert cache.use(plain) == CacheUse() and cache.peek(plain) == 0
    assert cache.entries == before


def test_a_top_level_cache_control_marks_the_last_block(sim: Simulator, cache: PromptCache) -> None:
    """Automatic caching puts the breakpoint on the row's own block: it never hits across rows."""
    first = checked(sim, body(text("nonce=a"), system=system(), cache_control=EPHEMERAL))
    assert first.segments[-1].ttl == "5m" and first.segments[-1].key == "nonce=a"
    assert cache.use(first).write_5m == first.input_tokens
    other = checked(sim, body(text("nonce=b"), system=system(), cache_control=EPHEMERAL))
    again = cache.use(other)
    assert (again.read, again.write_5m) == (0, other.input_tokens)  # a miss: the rows differ
    assert cache.use(first).read == first.input_tokens  # the same row again reads it all


# --- 2. the 20-block lookback --------------------------------------------------------------------


def lookback_body(later_blocks: int) -> dict[str, Any]:
    """The long system prompt (block 1), then ``later_blocks`` user text blocks, the last marked."""
    blocks = [text(f"part {i}") for i in range(later_blocks - 1)]
    return body(*blocks, text("nonce=row", **EPHEMERAL), system=system())


@pytest.mark.parametrize("later", [1, 5, LOOKBACK_BLOCKS])
def test_a_breakpoint_reads_a_prefix_written_up_to_20_blocks_before_it(
    sim: Simulator, cache: PromptCache, later: int
) -> None:
    cache.use(checked(sim, body(system=system(**EPHEMERAL))))  # writes at the system block
    shared = prefix_tokens(sim, body(system=system()), 1)
    row = checked(sim, lookback_body(later))
    assert cache.peek(row) == shared
    used = cache.use(row)
    assert (used.read, used.write_5m) == (shared, row.input_tokens - shared)


def test_one_block_past_the_lookback_misses(sim: Simulator, cache: PromptCache) -> None:
    cache.use(checked(sim, body(system=system(**EPHEMERAL))))
    row = checked(sim, lookback_body(LOOKBACK_BLOCKS + 1))
    assert cache.peek(row) == 0
    used = cache.use(row)
    assert (used.read, used.write_5m) == (0, row.input_tokens)
    assert used.breakpoints == 1 and not used.hit


def test_the_longest_prefix_found_is_read(sim: Simulator, cache: PromptCache) -> None:
    cache.use(checked(sim, body(system=system(**EPHEMERAL))))
    two = body(text("Example one: " + LONG, **EPHEMERAL), system=system())
    cache.use(checked(sim, two))  # reads the system prompt, writes up to the example
    longest = prefix_tokens(sim, two, 2)
    row = checked(sim, body(text("Example one: " + LONG), text("nonce=r", **EPHEMERAL), system=system()))
    assert cache.use(row).read == longest


def test_a_changed_block_breaks_the_prefix(sim: Simulator, cache: PromptCache) -> None:
    cache.use(checked(sim, body(text("a " + LONG, **EPHEMERAL), system=system())))
    changed = checked(sim, body(text("b " + LONG, **EPHEMERAL), system=system()))
    assert cache.use(changed).read == 0  # the system prompt was never written on its own


# --- 3. the minimum per model --------------------------------------------------------------------


def test_a_prefix_under_the_models_minimum_is_not_cached(sim: Simulator, cache: PromptCache) -> None:
    payload = body(system=system(**EPHEMERAL))
    haiku = checked(sim, payload)
    assert 512 <= haiku.input_tokens < 4096
    assert cache.use(haiku).write_5m > 0  # Haiku 5.5 caches from 512 tokens
    opus = checked(sim, {**payload, "model": OPUS})
    assert opus.profile.min_cacheable_tokens == 4096
    assert cache.use(opus) == CacheUse(breakpoints=1)  # silently nothing, and no entry
    assert cache.use(opus) == CacheUse(breakpoints=1)


def test_an_unknown_minimum_is_the_simulators_default(sim: Simulator, cache: PromptCache) -> None:
    short = checked(sim, body(system=system("word " * 600, **EPHEMERAL)))
    assert 512 <= short.input_tokens < SIM_DEFAULT_MIN_CACHEABLE
    short.profile = dataclasses.replace(short.profile, min_cacheable_tokens=0)  # unknown
    assert cache.use(short).written == 0
    long = checked(sim, body(system=system("word " * 1200, **EPHEMERAL)))
    long.profile = dataclasses.replace(long.profile, min_cacheable_tokens=0)
    assert cache.use(long).written > SIM_DEFAULT_MIN_CACHEABLE


# --- 4. TTLs -------------------------------------------------------------------------------------


def test_a_5m_entry_expires_and_a_read_refreshes_it(sim: Simulator, cache: PromptCache, clock: Clock) -> None:
    row = checked(sim, body(system=system(**EPHEMERAL)))
    written = cache.use(row).write_5m
    clock.now += 299
    assert cache.use(row).read == written  # a read at 4:59 ...
    clock.now += 299
    assert cache.use(row).read == written  # ... keeps it for another 5 minutes
    clock.now += 301
    assert cache.use(row) == CacheUse(write_5m=written, breakpoints=1)  # expired: written again


def test_a_1h_entry_lives_an_hour(sim: Simulator, cache: PromptCache, clock: Clock) -> None:
    row = checked(sim, body(system=system(type="ephemeral", ttl="1h")))
    written = cache.use(row).write_1h
    clock.now += 3599
    assert cache.peek(row) == written
    clock.now += 3601  # refreshed by nothing (peeking changes nothing)
    assert cache.peek(row) == 0


def test_writes_are_priced_at_each_breakpoints_ttl(sim: Simulator, cache: PromptCache) -> None:
    payload = body(text("nonce=r", type="ephemeral"), system=system(type="ephemeral", ttl="1h"))
    row = checked(sim, payload)
    shared = prefix_tokens(sim, payload, 1)
    assert cache.use(row) == CacheUse(write_5m=row.input_tokens - shared, write_1h=shared, breakpoints=2)


def test_a_1h_breakpoint_after_a_5m_one_is_refused(sim: Simulator) -> None:
    wrong = body(text("x", type="ephemeral", ttl="1h"), system=system(**EPHEMERAL))
    with pytest.raises(ApiError) as info:
        checked(sim, wrong)
    assert info.value.status == 400
    assert info.value.message == (
        "messages.0.content.0.cache_control.ttl: a ttl='1h' cache_control block must not come "
        "after a ttl='5m' cache_control block. Note that blocks are processed in the following "
        "order: `tools`, `system`, `messages`."
    )
    # tools come first: a 5m tool then a 1h system block is refused too
    tool = {"name": "t", "input_schema": {"type": "object"}, "cache_control": EPHEMERAL}
    with pytest.raises(ApiError) as info:
        checked(sim, body(tools=[tool], system=system(type="ephemeral", ttl="1h")))
    assert info.value.message.startswith("system.0.cache_control.ttl: a ttl='1h'")
    # the top-level one is last: 1h there after a 5m block is refused
    with pytest.raises(ApiError) as info:
        checked(sim, body(system=system(**EPHEMERAL), cache_control={"type": "ephemeral", "ttl": "1h"}))
    assert info.value.message.startswith("cache_control.ttl: ")
    # 1h before 5m, and equal TTLs, are fine
    checked(sim, body(text("x", type="ephemeral"), system=system(type="ephemeral", ttl="1h")))
    checked(sim, body(text("x", type="ephemeral", ttl="1h"), system=system(type="ephemeral", ttl="1h")))


# --- 5. the 4-breakpoint limit -------------------------------------------------------------------


def test_a_fifth_breakpoint_is_a_400_the_top_level_one_included(sim: Simulator) -> None:
    four = [text(f"part {i}", **EPHEMERAL) for i in range(4)]
    assert sum(seg.ttl is not None for seg in checked(sim, body(*four)).segments) == 4
    with pytest.raises(ApiError) as info:
        checked(sim, body(*four, cache_control=EPHEMERAL))
    assert info.value.status == 400
    assert (
        info.value.message
        == "cache_control: A maximum of 4 blocks with cache_control may be provided. Found 5."
    )
    checked(sim, body(*four[:3], text("row"), cache_control=EPHEMERAL))  # 3 + the top-level one


# --- 6. Message Batches: own namespace, best effort ------------------------------------------------


def test_online_entries_are_not_seen_by_batches(sim: Simulator, cache: PromptCache) -> None:
    row = checked(sim, body(system=system(**EPHEMERAL)))
    written = cache.use(row, ONLINE).write_5m
    assert cache.peek(row, BATCH) == 0
    assert cache.use(row, BATCH) == CacheUse(write_5m=written, breakpoints=1)  # a batch writes its own
    assert cache.use(row, BATCH).read == written  # which later batch requests read
    assert cache.use(row, BATCH, hit=False) == CacheUse(write_5m=written, breakpoints=1)  # best effort


def test_the_batch_hit_draw_is_seeded_per_custom_id() -> None:
    assert all(batch_hit(0, f"row-{i}", 1.0) for i in range(100))
    assert not any(batch_hit(0, f"row-{i}", 0.0) for i in range(100))
    draws = [batch_hit(7, f"row-{i}", 0.9) for i in range(1000)]
    assert draws == [batch_hit(7, f"row-{i}", 0.9) for i in range(1000)]  # deterministic
    assert 850 <= sum(draws) <= 950
    assert draws != [batch_hit(8, f"row-{i}", 0.9) for i in range(1000)]  # the seed matters


BatchSim = Callable[[float], tuple[RunningSimulator, httpx.Client]]


@pytest.fixture
def batch_sim(make_simulator: Callable[..., RunningSimulator]) -> Iterator[BatchSim]:
    clients: list[httpx.Client] = []

    def make(hit: float) -> tuple[RunningSimulator, httpx.Client]:
        handle = make_simulator(SimConfig(batches=BatchClock(duration_s=0.2, cache_hit=hit, seed=3)))
        client = httpx.Client(base_url=handle.base_url, headers=HEADERS, timeout=30)
        clients.append(client)
        return handle, client

    yield make
    for client in clients:
        client.close()


def row_params(nonce: str) -> dict[str, Any]:
    return body(text(f"Caption it. nonce={nonce}"), system=system(type="ephemeral", ttl="1h"))


def run_batch(client: httpx.Client, ids: list[str]) -> list[dict[str, Any]]:
    """The batch's results in processing order."""
    batch = create(client, [{"custom_id": cid, "params": row_params(cid)} for cid in ids])
    return results(client, wait_ended(client, batch["id"]))


def test_a_batch_reads_what_its_first_request_wrote_not_an_online_warm_up(batch_sim: BatchSim) -> None:
    _, client = batch_sim(1.0)
    online = client.post("/v1/messages", json=row_params("warm"))
    shared = online.json()["usage"]["cache_creation_input_tokens"]
    assert shared > 0
    lines = run_batch(client, [f"row-{i}" for i in range(5)])
    usages = [line["result"]["message"]["usage"] for line in lines]
    # the online warm-up does not carry into the batch: its first processed request writes ...
    assert (usages[0]["cache_read_input_tokens"], usages[0]["cache_creation_input_tokens"]) == (0, shared)
    assert usages[0]["cache_creation"]["ephemeral_1h_input_tokens"] == shared
    # ... and every later one of the same batch reads it
    assert [u["cache_read_input_tokens"] for u in usages[1:]] == [shared] * 4
    assert [u["cache_creation_input_tokens"] for u in usages[1:]] == [0] * 4
    # a later batch reads what the earlier one wrote, from its first request on
    again = run_batch(client, ["next-0", "next-1"])
    assert [line["result"]["message"]["usage"]["cache_read_input_tokens"] for line in again] == [shared] * 2
    book = client.get("/_ledger").json()
    assert (book["cache_hits"], book["cache_misses"]) == (6, 2)


def test_batch_hits_are_best_effort_and_predictable(batch_sim: BatchSim) -> None:
    _, client = batch_sim(0.5)
    ids = [f"row-{i}" for i in range(12)]
    run_batch(client, ["warm-up"])  # the docs' one-request warm-up batch
    lines = run_batch(client, ids)
    read = {
        line["custom_id"]: line["result"]["message"]["usage"]["cache_read_input_tokens"] > 0 for line in lines
    }
    assert read == {cid: batch_hit(3, cid, 0.5) for cid in ids}
    assert 0 < sum(read.values()) < len(ids)  # this seed draws some of each


# --- 7. the ledger counts what was charged, by kind -------------------------------------------------


def test_the_ledger_prices_exactly_what_the_answers_say(batch_sim: BatchSim) -> None:
    handle, client = batch_sim(1.0)
    answers = [client.post("/v1/messages", json=row_params(f"on-{i}")).json() for i in range(3)]
    plain = client.post("/v1/messages", json=body(text("nonce=plain"))).json()  # no breakpoint
    lines = run_batch(client, ["b-0", "b-1", "b-2"])
    batched = [line["result"]["message"] for line in lines]
    book = client.get("/_ledger").json()
    usages = [a["usage"] for a in [*answers, plain, *batched]]
    assert book["cache_read_tokens"] == sum(u["cache_read_input_tokens"] for u in usages) > 0
    assert book["cache_write_5m_tokens"] == sum(
        u["cache_creation"]["ephemeral_5m_input_tokens"] for u in usages
    )
    assert book["cache_write_1h_tokens"] == sum(
        u["cache_creation"]["ephemeral_1h_input_tokens"] for u in usages
    )
    assert book["uncached_input_tokens"] == sum(u["input_tokens"] for u in usages)
    batch_usages = [m["usage"] for m in batched]
    assert book["batch_cache_read_tokens"] == sum(u["cache_read_input_tokens"] for u in batch_usages)
    assert book["batch_cache_write_1h_tokens"] == sum(
        u["cache_creation"]["ephemeral_1h_input_tokens"] for u in batch_usages
    )
    assert book["batch_uncached_input_tokens"] == sum(u["input_tokens"] for u in batch_usages)
    assert (book["cache_hits"], book["cache_misses"]) == (4, 2)  # online: 1 write, 2 reads; batch alike
    # dollars from the ledger's kinds equal batcher's price of every answer
    prices = handle.sim.registry.get(HAIKU)
    assert prices is not None
    p = prices.prices
    per = 1_000_000

    def dollars(prefix: str) -> float:
        return (
            book[f"{prefix}uncached_input_tokens"] * p.input
            + book[f"{prefix}output_tokens"] * p.output
            + book[f"{prefix}cache_read_tokens"] * p.cache_read
            + book[f"{prefix}cache_write_5m_tokens"] * p.cache_write_5m
            + book[f"{prefix}cache_write_1h_tokens"] * p.cache_write_1h
        ) / per

    charged = dollars("") - dollars("batch_") * (1 - p.batch_discount)
    priced = sum(usage_cost(prices, m["usage"]) for m in [*answers, plain]) + sum(
        usage_cost(prices, m["usage"], batch=True) for m in batched
    )
    assert charged == pytest.approx(priced, rel=1e-12)


# --- 8. the ITPM bucket --------------------------------------------------------------------------


def test_a_cached_read_through_the_lookback_is_admitted_where_the_uncached_prompt_is_not(
    simulator: RunningSimulator,
) -> None:
    with httpx.Client(base_url=simulator.base_url, headers=HEADERS, timeout=10) as client:
        client.post("/v1/messages", json=body(system=system(**EPHEMERAL))).raise_for_status()
        row = lookback_body(5)  # its breakpoint is 5 blocks past the cached one
        counted = {k: v for k, v in row.items() if k != "max_tokens"}
        n = client.post("/v1/messages/count_tokens", json=counted).json()["input_tokens"]
        shared = prefix_tokens(simulator.sim, row, 1)
        assert shared > 0.8 * n
        # the bucket holds half a prompt: enough for the uncached rest, not for the whole
        update = {"limits": {"itpm": 0.5 * n * 6, "burst_window_s": 10}}
        assert client.post("/_control", json=update).status_code == 200
        first = client.post("/v1/messages", json=row)
        assert first.status_code == 200, first.text
        assert first.json()["usage"]["cache_read_input_tokens"] == shared
        # the entry expires (the cache's clock moved on by /_control): the same prompt is refused
        assert client.post("/_control", json={"cache_clock_skew_s": 301}).status_code == 200
        assert client.post("/v1/messages", json=row).status_code == 429


def test_count_tokens_is_unaffected_by_the_cache(simulator: RunningSimulator) -> None:
    with httpx.Client(base_url=simulator.base_url, headers=HEADERS, timeout=10) as client:
        payload = body(system=system(**EPHEMERAL))
        counted = {k: v for k, v in payload.items() if k != "max_tokens"}
        before = client.post("/v1/messages/count_tokens", json=counted).json()["input_tokens"]
        usage = client.post("/v1/messages", json=payload).json()["usage"]
        after = client.post("/v1/messages/count_tokens", json=counted).json()["input_tokens"]
        assert before == after == usage["input_tokens"] + usage["cache_creation_input_tokens"]
        book = client.get("/_ledger").json()
        assert (book["cache_hits"], book["cache_misses"]) == (0, 1)  # counting is not a request


def test_control_checks_the_new_settings(simulator: RunningSimulator) -> None:
    with httpx.Client(base_url=simulator.base_url, headers=HEADERS, timeout=10) as client:
        bad = client.post("/_control", json={"batches": {"cache_hit": 1.5}})
        assert bad.status_code == 400 and "batches.cache_hit" in bad.text
        assert client.post("/_control", json={"batches": {"cache_hit": 1.0}}).status_code == 200
        assert simulator.sim.config.batches.cache_hit == 1.0
        assert client.post("/_control", json={"cache_clock_skew_s": "x"}).status_code == 400


# --- batcher's own bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "mode"), [(HAIKU, None), (HAIKU, "format"), ("claude-haiku-4-5", "tool")])
def test_batchers_bodies_write_once_and_later_rows_read(
    sim: Simulator, cache: PromptCache, model: str, mode: str | None
) -> None:
    """The one breakpoint batcher puts on the examples' end is read by every later row."""
    from batcher.api.bodies import Example, ImagePart, RequestSettings, StructuredRequest, messages_body
    from batcher.core.cache import CachePoint
    from tests.simulator.test_validate import b64_image

    schema = {
        "type": "object",
        "properties": {"caption": {"type": "string"}},
        "required": ["caption"],
        "additionalProperties": False,
    }
    structured = StructuredRequest(mode, schema) if mode else None  # type: ignore[arg-type]
    answer = '{"caption": "a red bike"}'
    examples = [
        Example(
            [ImagePart("base64", b64_image(1000, 1000, colour=(i, 0, 0)), "image/png")], "Describe it", answer
        )
        for i in range(3)
    ]
    profile = sim.registry.get(model)
    assert profile is not None
    settings = RequestSettings(max_tokens=50, system="Be factual. " * 1500)

    def row(colour: tuple[int, int, int]) -> Checked:
        image = ImagePart("base64", b64_image(300, 200, colour=colour), "image/png")
        payload = messages_body(
            profile, settings, [image], "Describe it", structured, examples, CachePoint("5m", "examples", 0)
        )
        return checked(sim, payload)

    first, second = row((0, 90, 0)), row((0, 0, 90))
    wrote = cache.use(first)
    assert wrote.read == 0 and 0 < wrote.write_5m < first.input_tokens
    read = cache.use(second)
    assert (read.read, read.written) == (wrote.write_5m, 0)
