"""The simulator's stand-in for the API tokenizer: its rules, and its independence from the client."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from batcher.simulator import tokens

ROOT = Path(__file__).resolve().parents[2]


def pieces(text: str) -> list[str]:
    return [m.group() for m in tokens._PIECE.finditer(text)]


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_neither_counts_with_the_others_rule() -> None:
    # the client estimates, the simulator counts: a test comparing them must be able to fail
    assert not any(n.startswith("batcher.simulator") for n in imported(ROOT / "batcher/tokens.py"))
    for path in (ROOT / "batcher/simulator").glob("*.py"):
        assert "batcher.tokens" not in imported(path), path


def test_the_pre_tokenizer_splits_like_a_bpe_one() -> None:
    assert pieces("It's 2026 and JSON isn't CamelCase.\n\n  x") == [
        "It",
        "'s",
        " ",
        "202",
        "6",
        " and",
        " JSON",
        " isn",
        "'t",
        " CamelCase",
        ".",
        "\n\n  ",
        "x",
    ]
    assert pieces('{"name":"record_caption"}') == ['{"', "name", '":"', "record", "_", "caption", '"}']
    assert pieces("naïve café 日本語") == ["na", "ï", "ve", " caf", "é", " 日本語"]
    assert "".join(pieces("a\x00b\x7f \t€")) == "a\x00b\x7f \t€"  # every character is in a piece


@pytest.mark.parametrize(
    ("text", "units"),
    [
        ("", 0),
        (" the", 1),
        ("photograp", 2),
        (" photograph", 2),
        ("characterisation", 3),  # 8 letters whole
        ("JSON", 2),
        ("CamelCase", 3),
        ("Title", 1),
        ("I", 1),  # odd case splits worse
        ("1", 1),
        ("123", 1),
        ("1234567", 3),
        (".", 1),
        ('":{"', 2),
        (" ...", 1),
        ("日本語", 3),
        ("é", 1),
        ("🙂", 2),
        ("\n", 1),
        (" " * 9, 2),
        ("\x00", 1),
    ],
)
def test_what_each_piece_costs(text: str, units: int) -> None:
    assert tokens.text_units(text) == units


def test_the_factor_scales_the_whole_text_rounding_up() -> None:
    text = "Describe the picture."  # 4 units
    assert tokens.text_tokens(text, 100) == 4
    assert tokens.text_tokens(text, 130) == 6  # ceil(5.2)
    assert tokens.text_tokens("", 130) == 0
    assert tokens.text_tokens("a" * 20_000, 100) == tokens.text_tokens("a" * 20_000, 100)  # uncached


def test_prose_costs_about_four_and_a_half_bytes_a_token_code_and_numbers_more() -> None:
    prose = "The small boat drifts past the old harbour wall while gulls circle over the water. " * 5
    data = '{"id":"row-0001","w":1024,"h":768,"tags":["a","b"]}' * 5
    assert 4.0 < len(prose.encode()) / tokens.text_tokens(prose, 100) < 5.5
    assert len(data.encode()) / tokens.text_tokens(data, 100) < 3.0


@pytest.mark.parametrize("f100", [100, 130])
@pytest.mark.parametrize(
    "text",
    [
        "Received 1 image. Image 1: 320x200 image/png (base64), mean colour #c81e3c. nonce=abc",
        "supercalifragilisticexpialidocious words",
        "日本語のテキスト🙂 and more",
        "   spaced   out   ",
    ],
)
def test_a_cut_is_the_longest_prefix_within_the_budget(text: str, f100: int) -> None:
    total = tokens.text_tokens(text, f100)
    for max_tokens in range(total + 2):
        kept = tokens.cut_to_tokens(text, max_tokens, f100)
        assert text.startswith(kept)
        assert tokens.text_tokens(kept, f100) <= max_tokens
        if max_tokens >= total:
            assert kept == text
        else:  # one more character would not fit
            assert tokens.text_tokens(text[: len(kept) + 1], f100) > max_tokens
