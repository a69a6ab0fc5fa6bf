"""The write-first gate (batcher.core.warmup): one writer at a time, open once it answered, passed on
when it failed, closed again when the entry may have expired."""

from __future__ import annotations

from batcher.core.cache import CachePoint
from batcher.core.warmup import EXPIRY_MARGIN_S, WarmupGate


def test_the_first_request_writes_alone_and_the_gate_opens_once_it_answered() -> None:
    gate = WarmupGate.for_point(CachePoint("5m", "system", 2000))
    assert gate.ttl_s == 300
    assert gate.admit(0.0) == "write"
    assert gate.admit(0.1) == "wait" and gate.admit(0.2) == "wait"
    gate.answered(sent_at=0.0)
    assert gate.admit(1.0) == "read" and gate.admit(1.0) == "read"
    assert (gate.writes, gate.reads) == (1, 2)


def test_a_failed_writer_passes_its_turn_to_the_next_request() -> None:
    gate = WarmupGate(300.0)
    assert gate.admit(0.0) == "write"
    gate.failed(writer=True)
    assert gate.admit(0.5) == "write" and gate.admit(0.6) == "wait"
    # A reader that failed changes nothing: the writer still holds the gate.
    gate.failed(writer=False)
    assert gate.admit(0.7) == "wait"


def test_an_entry_unused_for_its_ttl_closes_the_gate_again() -> None:
    gate = WarmupGate(300.0)
    gate.admit(0.0)
    gate.answered(sent_at=0.0)
    assert gate.admit(300.0 - EXPIRY_MARGIN_S - 1) == "read"
    gate.answered(sent_at=300.0 - EXPIRY_MARGIN_S - 1)
    later = 2 * (300.0 - EXPIRY_MARGIN_S) + 1
    assert gate.admit(later) == "write" and gate.admit(later) == "wait"
    assert gate.writes == 2
