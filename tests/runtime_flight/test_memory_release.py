"""Giving freed memory back to the system: where glibc's allocator runs, it does."""

from __future__ import annotations

import platform

import pytest

from modelrunner.runtime_flight.memory_release import release_free_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_trims() -> None:
    assert release_free_memory() is True
