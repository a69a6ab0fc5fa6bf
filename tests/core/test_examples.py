"""batcher.core.examples: example answers checked and sent as JSON, the examples prepared once
through the row preparer, the prefix's tokens and the cache decision, the breakpoint in the
bodies (checked against the OpenAPI schema), and a row's worst case with a breakpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image

from batcher.api.bodies import ImagePart
from batcher.config import parse_job
from batcher.core.cache import CachePoint
from batcher.core.examples import (
    ExampleError,
    PreparedExamples,
    decide_for_job,
    example_answers,
    prefix_body,
    prefix_tokens,
    prepare_examples,
    settle_prefix,
)
from batcher.core.outcomes import Prepared
from batcher.core.plan import Planner, RowTokens, row_worst_cost
from batcher.core.prepare import RowPreparer
from batcher.images.prepare import PreparedImage, prepare_file
from batcher.models import load_registry
from batcher.records import ImageSent, Row

HAIKU = load_registry()["claude-haiku-5-5"]
SCHEMA = {"type": "object", "properties": {"caption": {"type": "string"}}, "required": ["caption"]}


class CountingPool:
    """Prepares in this thread with the real preparer, counting each image."""

    workers = 1

    def __init__(self) -> None:
        self.sources: list[Any] = []
        #: how many images each image's request was said to hold (its sizing depends on it)
        self.in_request: list[int] = []

    async def prepare(
        self, source: Any, profile: Any, options: Any, images_in_request: int = 1
    ) -> PreparedImage:
        self.sources.append(source)
        self.in_request.append(images_in_request)
        return prepare_file(source, profile, options, images_in_request)


def job_with(tmp: Path, *, examples: list[dict[str, Any]], output: bool = False, **request: Any) -> Any:
    (tmp / "ex").mkdir(exist_ok=True)
    for name, size in (("a.jpg", (900, 600)), ("b.jpg", (600, 900))):
        Image.new("RGB", size, (120, 60, 30)).save(tmp / "ex" / name, quality=80)
    data: dict[str, Any] = {
        "input": {"manifest": "m.csv", "prompt": "Describe this image."},
        "request": {"model": "claude-haiku-5-5", "max_tokens": 100, "examples": examples, **request},
    }
    if output:
        data["output"] = {"schema": SCHEMA}
    return parse_job(data, tmp / "job.toml")


def spec_for(job: Any) -> Any:
    from batcher.output import load_output

    return load_output(job)


def test_answers_are_text_without_output_and_compact_checked_json_with_it(tmp_path: Path) -> None:
    plain = job_with(tmp_path, examples=[{"image": "ex/a.jpg", "answer": "A brown field."}])
    assert example_answers(plain, None) == ["A brown field."]
    structured = job_with(
        tmp_path,
        output=True,
        examples=[
            {"image": "ex/a.jpg", "answer": {"caption": "A brown field."}},
            {"image": "ex/b.jpg", "answer": '{ "caption" :  "Tall." }'},
        ],
    )
    assert example_answers(structured, spec_for(structured)) == [
        '{"caption":"A brown field."}',
        '{"caption":"Tall."}',
    ]


def test_an_answer_that_does_not_fit_the_schema_names_the_example_and_the_path(tmp_path: Path) -> None:
    job = job_with(
        tmp_path,
        output=True,
        examples=[
            {"image": "ex/a.jpg", "answer": {"caption": "ok"}},
            {"image": "ex/b.jpg", "answer": {"caption": 3}},
        ],
    )
    with pytest.raises(
        ExampleError, match=r"job\.toml: request\.examples\[1\]\.answer: does not fit .*caption"
    ):
        example_answers(job, spec_for(job))
    bad_json = job_with(tmp_path, output=True, examples=[{"image": "ex/a.jpg", "answer": "not json"}])
    with pytest.raises(ExampleError, match=r"request\.examples\[0\]\.answer: .*not JSON"):
        example_answers(bad_json, spec_for(bad_json))


def preparer_for(job: Any, pool: Any) -> RowPreparer:
    return RowPreparer.for_job(job, HAIKU, pool, downloader=None, state=None, stopping=anyio.Event())


@pytest.mark.anyio
async def test_examples_are_prepared_once_a_run_as_rows_are(tmp_path: Path) -> None:
    job = job_with(
        tmp_path,
        examples=[
            {"image": "ex/a.jpg", "answer": "One."},
            {"images": ["ex/a.jpg", "ex/b.jpg"], "prompt": "Both?", "answer": "Two."},
        ],
    )
    pool = CountingPool()
    prefix, decision = await settle_prefix(job, HAIKU, preparer_for(job, pool), None, batch=False)
    assert len(pool.sources) == 3  # each example image once, before any row
    assert [e.prompt for e in prefix.examples] == ["Describe this image.", "Both?"]
    assert prefix.image_tokens == (
        HAIKU.image_tokens(900, 600),
        HAIKU.image_tokens(900, 600),
        HAIKU.image_tokens(600, 900),
    )
    # A planner with the prefix plans every row without preparing the examples again.
    planner = Planner.for_job(job, HAIKU, prefix=prefix)
    for n in range(3):
        row = Row(id=f"r{n}", images=["x.jpg"], prompt="Describe this image.", fields={}, index=n)
        planner.plan(
            Prepared(row, [ImagePart("base64", "AAAA", "image/jpeg")], [ImageSent("x.jpg", tokens=100)], [])
        )
    assert len(pool.sources) == 3
    assert decision.point is not None and decision.point.anchor == "examples"
    # Sized for the whole request: the three example images and (at least) one of the row's.
    assert pool.in_request == [4, 4, 4]
    rows = RowPreparer.for_job(
        job,
        HAIKU,
        pool,
        downloader=None,
        state=None,
        stopping=anyio.Event(),
        shared_images=prefix.image_count,
    )
    two = Row(id="r", images=[str(tmp_path / "ex" / "a.jpg")] * 2, prompt="p", fields={}, index=0)
    await rows.prepare_row(two)
    assert pool.in_request[3:] == [5, 5]


@pytest.mark.anyio
async def test_a_bad_example_image_names_its_key(tmp_path: Path) -> None:
    job = job_with(tmp_path, examples=[{"images": ["ex/a.jpg", "ex/missing.jpg"], "answer": "x"}])
    with pytest.raises(ExampleError, match=r"job\.toml: request\.examples\[0\]\.images\[1\]: .*missing\.jpg"):
        await prepare_examples(job, HAIKU, preparer_for(job, CountingPool()), ["x"])
    (tmp_path / "ex" / "bad.jpg").write_bytes(b"\xff\xd8\xff not an image")
    job = job_with(tmp_path, examples=[{"image": "ex/bad.jpg", "answer": "x"}])
    with pytest.raises(ExampleError, match=r"request\.examples\[0\]\.image: "):
        await prepare_examples(job, HAIKU, preparer_for(job, CountingPool()), ["x"])


def examples_of(n_images: int, tokens: int = 1000) -> PreparedExamples:
    from batcher.api.bodies import Example

    examples = tuple(Example([ImagePart("url", "")], "Describe.", "Answer.") for _ in range(n_images))
    return PreparedExamples(examples, (tokens,) * n_images)


def test_prefix_tokens_count_system_examples_and_their_images(tmp_path: Path) -> None:
    job = job_with(tmp_path, examples=[], system="Be brief. " * 100)
    bare = prefix_tokens(job, HAIKU, None, PreparedExamples((), ()))
    assert bare > 200  # the system prompt
    two = prefix_tokens(job, HAIKU, None, examples_of(2))
    assert two - bare > 2000  # two images of 1,000 tokens and their turns
    assert "messages" in prefix_body(job, HAIKU, None, examples_of(2).examples)


def test_the_breakpoint_at_the_examples_the_system_or_none(tmp_path: Path) -> None:
    with_examples = job_with(tmp_path, examples=[{"image": "ex/a.jpg", "answer": "x"}], system="s")
    point = decide_for_job(with_examples, HAIKU, 5000, batch=False).point
    assert point == CachePoint("5m", "examples", 5000)
    assert decide_for_job(with_examples, HAIKU, 5000, batch=True).point == CachePoint("1h", "examples", 5000)
    system_only = job_with(tmp_path, examples=[], system="s")
    assert decide_for_job(system_only, HAIKU, 600, batch=False).point == CachePoint("5m", "system", 600)
    under = decide_for_job(system_only, HAIKU, 500, batch=False)
    assert under.point is None and "under claude-haiku-5-5's minimum of 512" in under.reason
    off = with_examples.model_copy(update={"cache": with_examples.cache.model_copy(update={"mode": "off"})})
    assert decide_for_job(off, HAIKU, 5000, batch=False).point is None


def test_an_unknown_minimum_places_the_breakpoint_and_says_so(tmp_path: Path) -> None:
    import dataclasses

    job = job_with(tmp_path, examples=[], system="s")
    unknown = dataclasses.replace(HAIKU, min_cacheable_tokens=None)
    decision = decide_for_job(job, unknown, 100, batch=False)
    assert decision.point is not None and "minimum cacheable length is unknown" in decision.reason


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.anyio
async def test_bodies_with_examples_and_the_breakpoint_fit_the_api(
    tmp_path: Path, check: Any, structured: bool
) -> None:
    from batcher.core.structured import StructuredOutput

    answer: Any = {"caption": "A field."} if structured else "A field."
    job = job_with(
        tmp_path,
        output=structured,
        system="Style. " * 400,
        examples=[{"image": "ex/a.jpg", "answer": answer}, {"image": "ex/b.jpg", "answer": answer}],
    )
    output = StructuredOutput(spec_for(job), "tool") if structured else None
    prefix, _ = await settle_prefix(job, HAIKU, preparer_for(job, CountingPool()), output, batch=False)
    assert prefix.cache is not None
    planner = Planner.for_job(job, HAIKU, output, prefix)
    row = Row(id="r", images=["x.jpg"], prompt="Describe this image.", fields={}, index=0)
    plan = planner.plan(
        Prepared(row, [ImagePart("base64", "AAAA", "image/jpeg")], [ImageSent("x.jpg", tokens=50)], [])
    )
    check(plan.body, "CreateMessageParams")
    marked = [
        (n, block["type"])
        for n, m in enumerate(plan.body["messages"])
        for block in m["content"]
        if "cache_control" in block
    ]
    # Text: the last example's answer; tool: the tool_result that opens the row's own turn.
    assert marked == ([(4, "tool_result")] if structured else [(3, "text")])
    assert plan.cache == prefix.cache
    if structured:
        assert plan.body["messages"][1]["content"][0]["input"] == {"caption": "A field."}
    assert plan.tokens.input > prefix.cache.prefix_tokens


def test_the_worst_case_prices_the_prefix_at_the_write_price_of_its_ttl() -> None:
    tokens = RowTokens(text=4000, image=1000)
    plain = row_worst_cost(HAIKU, tokens, 100, batch=False)
    five = row_worst_cost(HAIKU, tokens, 100, batch=False, cache=CachePoint("5m", "examples", 3000))
    hour = row_worst_cost(HAIKU, tokens, 100, batch=False, cache=CachePoint("1h", "examples", 3000))
    prices = HAIKU.prices
    written = 3750  # the prefix padded as text is
    assert five - plain == pytest.approx(written * (prices.cache_write_5m - prices.input) / 1e6)
    assert hour - plain == pytest.approx(written * (prices.cache_write_1h - prices.input) / 1e6)
    batch = row_worst_cost(HAIKU, tokens, 100, batch=True, cache=CachePoint("1h", "examples", 3000))
    assert batch == pytest.approx(hour * prices.batch_discount)
