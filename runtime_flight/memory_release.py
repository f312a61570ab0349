"""Hand memory the process has freed back to the operating system.

A large sample arrives as many record batches of several MiB that gRPC assembles in buffers of
its own; once they are copied into the sample they are freed, but glibc's allocator keeps freed
blocks of that size in its heaps (its mmap threshold rises to 32 MiB after the first large
free), so the server's resident memory stays tens of MiB above what it uses for the rest of the
request. ``malloc_trim(0)`` returns those free pages at once. Elsewhere (musl, macOS, Windows)
this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_free_memory() -> bool:
    """Return the allocator's free pages to the system; False where that is not possible.
    Takes a few milliseconds."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
