"""Latency model and fault injection (placeholder: being built; no faults for now)."""

from __future__ import annotations

from batcher.simulator.config import Faults, Latency


class FaultInjector:
    def __init__(self, faults: Faults, latency: Latency) -> None:
        self.configure(faults, latency)

    def configure(self, faults: Faults, latency: Latency) -> None:
        self.faults = faults
        self.latency = latency
