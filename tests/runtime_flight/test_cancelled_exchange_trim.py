"""A cancelled exchange gives free memory back to the system (malloc_trim), but at most once a
second: trimming the heap is not free, and a client may open and cancel exchanges in a loop."""

from __future__ import annotations

import time

import pytest

from modelrunner.runtime_flight import server as server_module
from modelrunner.runtime_flight.server import RuntimeFlightServer


def test_cancelled_exchanges_in_a_loop_trim_the_heap_once_a_second(
    runtime: RuntimeFlightServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: open and cancel empty exchanges as fast as possible."""
    trims: list[float] = []
    monkeypatch.setattr(server_module, "release_free_memory", lambda: trims.append(1) or True)
    monkeypatch.setattr(runtime, "_last_release", float("-inf"))
    cancelled = runtime.exchanges_cancelled
    try:
        for _ in range(200):
            runtime._cancelled(None, time.monotonic())
        assert len(trims) == 1
        runtime._last_release -= server_module._RELEASE_INTERVAL_S  # a second later
        runtime._cancelled(None, time.monotonic())
        assert len(trims) == 2
    finally:
        runtime.exchanges_cancelled = cancelled
