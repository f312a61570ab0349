"""Concurrency limits shared by both planes: at most so many calls of a kind at once
(:class:`CallLimit`), or at once from each client (:class:`PerClientLimit`), and for calls that
wait idle between requests (a runtime's sessions) so many at work and so many idle from each
client (:class:`WorkingAndIdleLimit`). A call over its limit is refused at once with
RESOURCE_EXHAUSTED naming the setting, never queued."""

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
        self.take(client)
        try:
            yield
        finally:
            self.give_back(client)

    def take(self, client: str) -> None:
        """One of ``client``'s slots (RESOURCE_EXHAUSTED when it holds them all); give it back
        with :meth:`give_back`."""
        if not self.try_take(client):
            raise over_limit(
                self.setting,
                self.limit,
                f"too many {self._what} at once from {client}: each client may have "
                f"{self.limit}; try again when one has finished",
                client=client,
            )

    def try_take(self, client: str) -> bool:
        """One of ``client``'s slots, when it has one free."""
        with self._lock:
            if self._active[client] >= self.limit:
                return False
            self._active[client] += 1
            return True

    def give_back(self, client: str) -> None:
        with self._lock:
            self._active[client] -= 1
            if self._active[client] <= 0:
                del self._active[client]


class WorkingAndIdleLimit:
    """For calls that wait idle between requests: at most ``limit`` calls of each client at
    work at once (a call is at work from when it opens), and besides them at most ``limit`` of
    its calls idle. An idle call frees its working slot, so idle calls never keep a client's
    new calls out; a call that would be idle past the idle limit ends instead, so a client
    cannot hold threads without bound with calls it leaves open."""

    def __init__(self, setting: str, limit: int, what: str) -> None:
        self.setting = setting
        self.limit = limit
        self._working = PerClientLimit(setting, limit, what)
        self._idle = PerClientLimit(setting, limit, what)

    @contextmanager
    def slot(self, client: str) -> Iterator[HeldSlot]:
        """A working slot of ``client`` for the call (RESOURCE_EXHAUSTED when it holds all of
        them), which the call may turn idle and back while the block runs."""
        self._working.take(client)
        held = HeldSlot(self._working, self._idle, client)
        try:
            yield held
        finally:
            held.give_back()


class HeldSlot:
    """One call's slot of a :class:`WorkingAndIdleLimit`: working or idle. Used by the call's
    own thread only."""

    __slots__ = ("_client", "_idle", "_idle_slots", "_working")

    def __init__(self, working: PerClientLimit, idle: PerClientLimit, client: str) -> None:
        self._working, self._idle_slots, self._client = working, idle, client
        self._idle = False

    def idle(self) -> bool:
        """The call waits for its client's next request: it gives its working slot back for an
        idle one. False when the client has as many idle calls as it may (the call should end
        now; it keeps its working slot until then)."""
        if self._idle:
            return True
        if not self._idle_slots.try_take(self._client):
            return False
        self._working.give_back(self._client)
        self._idle = True
        return True

    def at_work(self) -> None:
        """The call's next request is arriving: a working slot again (RESOURCE_EXHAUSTED when
        the client's other calls hold them all, as for a new call)."""
        if not self._idle:
            return
        self._working.take(self._client)
        self._idle_slots.give_back(self._client)
        self._idle = False

    def give_back(self) -> None:
        (self._idle_slots if self._idle else self._working).give_back(self._client)


__all__ = ["CallLimit", "HeldSlot", "PerClientLimit", "WorkingAndIdleLimit"]
