"""Rate-limit token buckets (placeholder: being built; unlimited for now)."""

from __future__ import annotations

from batcher.simulator.config import RateLimits


class Buckets:
    def __init__(self, limits: RateLimits) -> None:
        self.configure(limits)

    def configure(self, limits: RateLimits) -> None:
        self.limits = limits

    def headers(self) -> list[tuple[bytes, bytes]]:
        return []
