"""A cancelled exchange gives free memory back to the system (malloc_trim), but at most once a
second: trimming the heap is not free, and a client may open and cancel exchanges in a loop."""

from __future__ import annotations

import pytest

from modelrunner.runtime_flight import exchange_calls
from modelrunner.runtime_flight.exchange_calls import RELEASE_INTERVAL_S, ExchangeCounters


def test_cancelled_exchanges_in_a_loop_trim_the_heap_once_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack: open and cancel empty exchanges as fast as possible."""
    trims: list[float] = []
    monkeypatch.setattr(exchange_calls, "release_free_memory", lambda: trims.append(1) or True)
    now = [1000.0]
    counters = ExchangeCounters(clock=lambda: now[0])
    for _ in range(200):
        counters.count_cancelled()
    assert len(trims) == 1
    assert counters.cancelled == 200
    now[0] += RELEASE_INTERVAL_S  # a second later
    counters.count_cancelled()
    assert len(trims) == 2
