"""How the simulator counts tokens: its stand-in for the API's tokenizer.

The real API counts text with a byte-pair-encoding tokenizer that batcher cannot run; the client
only *estimates* text (``batcher/tokens.py``: about four UTF-8 bytes a token). If the simulator
counted with the client's rule, every "estimate vs. counted" test would pass by construction, so it
has a rule of its own, shaped like a BPE tokenizer rather than like a byte count. The two modules
never import each other. The rule is deterministic, integer-only and fast (it runs on every
request the simulator receives), and is meant to be plausible, not to match any real vocabulary.

**Text.** A pre-tokenizer regex (``_PIECE``) splits the text into pieces, as BPE tokenizers do
before merging, and each piece costs whole *units*:

- a word of ASCII letters, with the one space before it folded in (``" picture"``): 1 unit up to
  8 letters, then one more for every 5 letters or part of them (``" photographs"`` is 2); a word
  whose case is neither lower nor title (``JSON``, ``CamelCase``) splits worse: ``ceil(n / 3)``;
- an English contraction (``'s``, ``'t``, ``'re``, ``'ve``, ``'ll``, ``'d``, ``'m``): 1;
- digits, in groups of up to 3 (``2026`` is ``202`` + ``6``): 1 a group;
- a run of ASCII punctuation, with a space before it folded in (``{"``, ``":"``, ``. ``):
  ``ceil(n / 3)`` for ``n`` marks;
- a run of non-ASCII characters (a space before it folded in): ``ceil(b / 3)`` for its ``b`` UTF-8
  bytes, so about one a CJK character, two an emoji, two for every three accented letters;
- a run of ASCII whitespace: ``ceil(n / 8)`` (newlines and indentation merge well);
- anything else (a control character): 1.

A text costs ``ceil(units * F / 100)`` tokens, where ``F`` is the model's ``text_token_factor`` in
hundredths (``round(factor * 100)``): the newer tokenizer counts the same text as about 30% more
tokens (factor 1.3). Empty text costs nothing. On English prose this comes to roughly 4.5 bytes a
token; JSON, identifiers, numbers and non-Latin scripts cost more than a byte rule says.

**Framing and everything else** (counted with the text rule wherever there is text):

- **Images** cost ``IMAGE_BLOCK_OVERHEAD`` plus their visual tokens, ``facts.visual_tokens`` of
  the size the model sees them at (``ModelProfile.native_size``): exact, not an estimate.
- **Each message** costs ``MESSAGE_OVERHEAD`` (the role marker and turn separators).
- **A structured-output format** (``output_config.format``) costs ``OUTPUT_FORMAT_OVERHEAD``
  plus the text rule over its schema's canonical JSON (:func:`output_format_text`): the API
  compiles it into a system prompt. It sits after the tools and before the system prompt, so a
  change of schema changes every cached prefix past the tools.
- **Tool definitions** cost the text rule over their compact JSON
  (``{"name", "description", "input_schema"}``, keys in that order, absent ones left out);
  a ``tool_use`` block in the history costs the text rule over ``name + compact JSON(input)``.
- **Output** text costs the text rule; a ``tool_use`` answer the same as a ``tool_use`` block; an
  answer cut by ``max_tokens`` is the longest prefix that costs at most ``max_tokens``
  (:func:`cut_to_tokens`).

A request's input tokens are the sum over the tool definitions, the output format, the system
prompt and every block of every message, each text counted on its own (``validate.py`` tallies them; messages,
``count_tokens``, batches and the rate limiter's input-token admission all use that one tally).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Final

import orjson

from batcher import facts
from batcher.models import ModelProfile

MESSAGE_OVERHEAD: Final = 3
IMAGE_BLOCK_OVERHEAD: Final = 3
#: The fixed framing of a structured-output format (the system-prompt text it is compiled into),
#: on top of its schema's text.
OUTPUT_FORMAT_OVERHEAD: Final = 20

#: The pre-tokenizer: one alternative per kind of piece, tried in this order.
_PIECE: Final = re.compile(
    r"'(?:[stdm]|ll|ve|re)(?![A-Za-z])"  # contraction
    r"| ?[A-Za-z]+"  # ASCII word, its leading space folded in
    r"|[0-9]{1,3}"  # digits, up to three
    r"| ?[!-/:-@\[-`{-~]+"  # ASCII punctuation run
    r"| ?[^\x00-\x7f]+"  # non-ASCII run
    r"|[ \t\n\r\f\v]+"  # ASCII whitespace run
    r"|[\s\S]"  # anything else, one character
)
_SPACE: Final = frozenset(" \t\n\r\f\v")
#: Words up to this many letters are one unit; longer ones add a unit for each started 5 letters.
_WORD_WHOLE: Final = 8
_WORD_STEP: Final = 5
#: Texts up to this many characters are cached (system prompts and tool definitions repeat).
_CACHED_CHARS: Final = 16_384


def factor_hundredths(profile: ModelProfile) -> int:
    """The model's ``text_token_factor`` as an integer number of hundredths."""
    return round(profile.text_token_factor * 100)


def _piece_units(piece: str) -> int:
    """Units of one pre-tokenizer piece, told apart by its last character (never the space)."""
    n = len(piece)
    if n <= 3 and piece.isascii():  # whatever its kind, a short ASCII piece is one unit
        return 1
    last = piece[-1]
    if not last.isascii():
        return -(-len(piece.lstrip(" ").encode("utf-8")) // 3)
    if last.isalpha():
        n -= piece[0] == " "
        if piece.islower() or piece.istitle():
            return 1 if n <= _WORD_WHOLE else 1 + -(-(n - _WORD_WHOLE) // _WORD_STEP)
        return -(-n // 3)
    if last in _SPACE:
        return -(-n // 8)
    return -(-(n - (piece[0] == " ")) // 3)  # punctuation (digits and the rest are short)


def _units(text: str) -> int:
    units = 0
    for piece in _PIECE.findall(text):
        units += 1 if len(piece) <= 3 and piece.isascii() else _piece_units(piece)
    return units


_cached_units = lru_cache(maxsize=2048)(_units)


def text_units(text: str) -> int:
    """The units of ``text`` before the model's factor."""
    return _cached_units(text) if len(text) <= _CACHED_CHARS else _units(text)


def scale(units: int, f100: int) -> int:
    """Tokens for ``units`` at a factor of ``f100`` hundredths."""
    return -(-units * f100 // 100)


def text_tokens(text: str, f100: int) -> int:
    """Tokens for a text (see the module docstring)."""
    return scale(text_units(text), f100) if text else 0


def cut_to_tokens(text: str, max_tokens: int, f100: int) -> str:
    """The longest prefix of ``text`` that costs at most ``max_tokens``: where an answer is cut.

    Pieces are taken whole while they fit; the first that does not is cut within (a long word is
    generated a part at a time).
    """
    budget = max_tokens * 100 // f100  # the most units whose scaled cost is within max_tokens
    units = 0
    kept = text
    for match in _PIECE.finditer(text):
        cost = _piece_units(match.group())
        if units + cost > budget:
            start, piece = match.start(), match.group()
            k = len(piece) - 1
            while k > 0 and units + text_units(piece[:k]) > budget:
                k -= 1
            kept = text[: start + k]
            break
        units += cost
    while kept and text_tokens(kept, f100) > max_tokens:  # a piece that re-splits at the cut
        kept = kept[:-1]
    return kept


def image_tokens(profile: ModelProfile, width: int, height: int) -> tuple[int, tuple[int, int]]:
    """(visual tokens, the size the model sees) for an image sent at ``width`` x ``height``."""
    seen = profile.native_size(width, height)
    return facts.visual_tokens(*seen), seen


def tool_definition_text(tool: dict[str, Any]) -> str:
    """The text a tool definition is counted as."""
    shown = {k: tool[k] for k in ("name", "description", "input_schema") if k in tool}
    return orjson.dumps(shown).decode()


def output_format_text(schema: dict[str, Any]) -> str:
    """The text an ``output_config.format`` schema is counted as: its canonical JSON (compact,
    keys sorted), so the same schema costs the same whatever order its keys were sent in."""
    return orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode()


def tool_use_text(name: str, tool_input: object) -> str:
    """The text a ``tool_use`` block (asked or answered) is counted as."""
    return name + orjson.dumps(tool_input).decode()
