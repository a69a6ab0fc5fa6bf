"""The API facts every part shares: patch tokens, the API's own resize, media sniffing, retries."""

from __future__ import annotations

import pytest

from batcher import facts


@pytest.mark.parametrize(
    ("size", "tokens"),
    [((200, 200), 64), ((1000, 1000), 1296), ((1092, 1092), 1521), ((28, 28), 1), ((29, 28), 2)],
)
def test_visual_tokens_count_padded_patches(size: tuple[int, int], tokens: int) -> None:
    assert facts.visual_tokens(*size) == tokens


@pytest.mark.parametrize(
    ("size", "edge", "budget", "expected"),
    [
        # the guide's worked examples
        ((1075, 1520), 1568, 1568, (924, 1307)),
        ((2000, 1500), 1568, 1568, (1270, 952)),
        ((3840, 2160), 1568, 1568, (1456, 819)),
        ((3840, 2160), 2576, 4784, (2576, 1449)),
        ((1092, 1092), 1568, 1568, (1092, 1092)),
        ((200, 200), 1568, 1568, (200, 200)),
        # portrait is the mirror of landscape
        ((1500, 2000), 1568, 1568, (952, 1270)),
        # edge-bound, not token-bound: a long thin strip
        ((6000, 100), 1568, 1568, (1568, 26)),
    ],
)
def test_api_resize_matches_the_guide(size, edge, budget, expected) -> None:  # type: ignore[no-untyped-def]
    assert facts.api_resize(*size, edge, budget) == expected


@pytest.mark.parametrize("size", [(1075, 1520), (2000, 1500), (3840, 2160), (7999, 13), (5, 7000)])
@pytest.mark.parametrize(("edge", "budget"), [(1568, 1568), (2576, 4784), (1000, 500)])
def test_api_resize_is_the_largest_fit(size, edge, budget) -> None:  # type: ignore[no-untyped-def]
    w, h = facts.api_resize(*size, edge, budget)
    assert facts.visual_tokens(w, h) <= budget
    assert max(w, h) <= edge
    assert w <= size[0] and h <= size[1]
    # one pixel more on the long edge no longer fits (or is the original)
    long_edge = max(w, h) + 1
    if long_edge <= max(size):
        bigger = facts._scaled(long_edge, *size)
        assert not facts._fits(*bigger, edge, budget)


def test_api_resize_is_idempotent() -> None:
    once = facts.api_resize(4032, 3024, 1568, 1568)
    assert facts.api_resize(*once, 1568, 1568) == once


def test_api_resize_rejects_empty_images() -> None:
    with pytest.raises(ValueError, match="positive"):
        facts.api_resize(0, 10, 1568, 1568)


@pytest.mark.parametrize(
    ("head", "media_type"),
    [
        (b"\xff\xd8\xff\xe0rest", "image/jpeg"),
        (b"\x89PNG\r\n\x1a\nrest", "image/png"),
        (b"GIF89a....", "image/gif"),
        (b"GIF87a....", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (b"BM\x00\x00", None),
        (b"", None),
    ],
)
def test_sniff_media_type(head: bytes, media_type: str | None) -> None:
    assert facts.sniff_media_type(head) == media_type


def test_b64_len_is_what_base64_produces() -> None:
    import base64

    for n in (0, 1, 2, 3, 4, 5, 1000, 3_932_160):
        assert facts.b64_len(n) == len(base64.b64encode(b"x" * n))


@pytest.mark.parametrize(
    ("status", "header", "code", "retry"),
    [
        (429, None, None, True),
        (529, None, None, True),
        (500, None, None, True),
        (504, None, None, True),
        (400, None, None, False),
        (404, None, None, False),
        (401, None, None, False),
        (400, "true", None, True),  # the header overrides the table
        (529, "false", None, False),
        (429, None, "enforced_spend_limit_reached", False),
        (429, "true", "enforced_spend_limit_reached", False),
    ],
)
def test_should_retry(status: int, header: str | None, code: str | None, retry: bool) -> None:
    assert facts.should_retry(status, header, code) is retry
