"""Small records the simulator's parts hand each other (leaf module: imports nothing of them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MessageCost:
    """What a messages request costs, known before it is answered (the rate limits and the
    latency model take it)."""

    #: what it counts toward ITPM: the prompt less what it reads from the prompt cache
    input_tokens: int
    max_tokens: int
    megapixels: float
