"""``batcher estimate`` of a few-shot job: the examples' images (headers only) and text in every
row's input, the same on the row and the column paths, and the cost with the cache (one write of
the prefix, then reads) beside the cost without it; no breakpoint says why."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from batcher.config import ConfigError
from batcher.estimator import estimate_job, format_estimate, load
from tests.helpers import estimate_json, fewshot_copy, good_rows


def plain_copy(job: Path) -> Path:
    """The same job without its examples, its system prompt nor its cache."""
    text = job.read_text().split("[[request.examples]]")[0].replace('system_file = "prompts/style.md"', "")
    plain = job.with_name("plain.toml")
    plain.write_text(text)
    return plain


def csv_copy(job: Path, rows: list[dict[str, Any]]) -> Path:
    with (job.parent / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "image", "kind"])
        writer.writeheader()
        writer.writerows(rows)
    out = job.with_name("csv.toml")
    out.write_text(job.read_text().replace("manifest.jsonl", "manifest.csv"))
    return out


def test_examples_are_in_every_rows_input_and_the_cache_is_one_write_then_reads(tmp_path: Path) -> None:
    rows = good_rows(tmp_path, 5)
    job_path = fewshot_copy(tmp_path, rows)
    job, profile = load(job_path)
    est = estimate_job(job, profile)
    plain = estimate_job(*load(plain_copy(job_path)))
    assert est.examples == 3 and est.example_images == 3
    example_images = 3 * profile.image_tokens(1200, 900)
    assert est.image_tokens == plain.image_tokens + 5 * example_images
    assert est.images == plain.images + 15
    assert est.input_tokens > plain.input_tokens + 5 * example_images  # and the style guide, the answers
    assert estimate_job(*load(csv_copy(job_path, rows))).input_tokens == est.input_tokens
    cache = est.cache
    assert cache is not None and cache.breakpoint and cache.anchor == "examples"
    assert (cache.writes, cache.reads) == (1, 4)
    assert cache.prefix_tokens > example_images + 1000
    assert cache.cost_online_uncached_usd == pytest.approx(est.cost_usd_online)
    prices = profile.prices
    expected = (
        est.cost_usd_online
        + cache.prefix_tokens * (prices.cache_write_5m + 4 * prices.cache_read - 5 * prices.input) / 1e6
    )
    assert cache.cost_online_usd == pytest.approx(expected)
    batch = (
        est.cost_usd_batch
        + cache.prefix_tokens
        * (prices.cache_write_1h + 4 * prices.cache_read - 5 * prices.input)
        * prices.batch_discount
        / 1e6
    )
    assert cache.cost_batch_usd == pytest.approx(batch)
    text = format_estimate(est)
    assert f"with the cache: 1 write of ~{cache.prefix_tokens:,} tokens, then 4 reads" in text
    assert "hits in batches are best effort" in text


def test_no_breakpoint_leaves_the_cost_as_it_is_and_says_why(tmp_path: Path) -> None:
    rows = good_rows(tmp_path, 3)
    job_path = fewshot_copy(tmp_path, rows)
    job_path.write_text(job_path.read_text().replace('mode = "auto"', 'mode = "off"'))
    est = estimate_job(*load(job_path))
    assert est.cache is not None and not est.cache.breakpoint
    assert est.cache.cost_online_usd == est.cost_usd_online and est.cache.writes == 0
    assert "cache: off ([cache] mode)" in format_estimate(est)
    plain = estimate_job(*load(plain_copy(job_path)))
    assert plain.cache is not None and "nothing shared by every row" in plain.cache.reason


def test_json_has_the_cache_figures(tmp_path: Path) -> None:
    rows = good_rows(tmp_path, 2)
    done = estimate_json(fewshot_copy(tmp_path, rows))
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["examples"] == 3 and got["example_tokens_per_row"] > 0
    cache = got["cache"]
    assert cache["breakpoint"] is True and cache["ttl_online"] == "5m" and cache["ttl_batch"] == "1h"
    assert cache["cost_online_usd"] < cache["cost_online_uncached_usd"]
    assert {"prefix_tokens", "reason", "writes", "reads", "cost_batch_usd", "cost_batch_uncached_usd"} <= set(
        cache
    )
    # Cache reads do not count toward ITPM: the one read leaves its prefix out of the time's input.
    assert got["itpm_input_tokens"] == got["input_tokens"] - cache["reads"] * cache["prefix_tokens"]
    assert cache["reads"] == 1


def test_the_time_counts_no_cache_reads_toward_itpm() -> None:
    from batcher.estimator import CacheEstimate, itpm_tokens

    cache = CacheEstimate("auto", True, "examples", 6000, "5m", "1h", "why", writes=1, reads=99)
    assert itpm_tokens(1_000_000, cache) == 1_000_000 - 99 * 6000
    off = CacheEstimate("off", False, None, 6000, "5m", "1h", "off")
    assert itpm_tokens(1_000_000, off) == 1_000_000 and itpm_tokens(5, None) == 5


def test_a_bad_example_image_is_named(tmp_path: Path) -> None:
    job_path = fewshot_copy(tmp_path, good_rows(tmp_path, 1))
    (tmp_path / "examples" / "bicycle.jpg").unlink()
    with pytest.raises(ConfigError, match=r"request\.examples\[0\]\.image: "):
        estimate_job(*load(job_path))
