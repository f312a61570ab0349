"""Concurrency limits shared by both planes: at most so many calls of a kind at once
(:class:`CallLimit`), or at once from each client (:class:`PerClientLimit`). A call over its
limit is refused at once with RESOURCE_EXHAUSTED naming the setting, never queued."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from modelrunner.limits import over_limit


class CallLimit:
    """At most ``limit`` calls at once; one more is refused, naming ``setting``."""

    def __init__(self, setting: str, limit: int, what: str) -> None:
        self.setting = setting
        self.limit = limit
        self._what = what
        self._slots = threading.BoundedSemaphore(limit)

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._slots.acquire(blocking=False):
            raise over_limit(
                self.setting,
                self.limit,
                f"too many {self._what} at once: the server takes {self.limit}; "
                "try again when one has finished",
            )
        try:
            yield
        finally:
            self._slots.release()


class PerClientLimit:
    """At most ``limit`` calls at once from each client."""

    def __init__(self, setting: str, limit: int, what: str) -> None:
        self.setting = setting
        self.limit = limit
        self._what = what
        self._lock = threading.Lock()
        self._active: Counter[str] = Counter()

    @contextmanager
    def slot(self, client: str) -> Iterator[None]:
        with self._lock:
            if self._active[client] >= self.limit:
                raise over_limit(
                    self.setting,
                    self.limit,
                    f"too many {self._what} at once from {client}: each client may have "
                    f"{self.limit}; try again when one has finished",
                    client=client,
                )
            self._active[client] += 1
        try:
            yield
        finally:
            with self._lock:
                self._active[client] -= 1
                if self._active[client] <= 0:
                    del self._active[client]


__all__ = ["CallLimit", "PerClientLimit"]
