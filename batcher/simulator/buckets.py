"""Rate-limit token buckets (placeholder: being built; unlimited for now).

Interface the messages handler relies on (keep it when filling this in):
- ``Buckets.admit(cost) -> Admission``: take 1 request, ``cost.input_tokens`` and
  ``cost.max_tokens`` of output from the buckets, or raise ``ApiError(429, ...)`` with a
  ``retry-after`` header when a bucket is short (nothing is taken then).
- ``Buckets.settle(admission, output_tokens)``: the answer used ``output_tokens``; give back the
  rest of what ``admit`` took for output.
- ``Buckets.admit_files()``: one Files API request against its own, separate budget (about 100
  a minute in the beta), or raise ``ApiError(429, ...)``.
- ``Buckets.headers()``: ``anthropic-ratelimit-*`` headers (as ASGI byte pairs) for every response.
"""

from __future__ import annotations

from dataclasses import dataclass

from batcher.simulator.config import RateLimits
from batcher.simulator.core import MessageCost


@dataclass
class Admission:
    cost: MessageCost


class Buckets:
    def __init__(self, limits: RateLimits) -> None:
        self.configure(limits)

    def configure(self, limits: RateLimits) -> None:
        self.limits = limits

    def admit(self, cost: MessageCost) -> Admission:
        return Admission(cost)

    def admit_files(self) -> None:
        return None

    def settle(self, admission: Admission, output_tokens: int) -> None:
        return None

    def headers(self) -> list[tuple[bytes, bytes]]:
        return []
