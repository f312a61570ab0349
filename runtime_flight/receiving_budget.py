"""The runtime's budget for samples being received (setting ``max_receiving_bytes``).

A Flight server cannot end a call whose client sends nothing: pyarrow has no server-side
cancel, and a handler that returns while its stream is being read crashes the process. So
instead of an idle timeout, memory is bounded: every prediction exchange reserves the size of
the sample its schema announces when the runtime reads that schema, before a byte of the sample
arrives, and gives it back when the call ends; a session gives it back between samples (it
holds none then) and reserves it again when its next sample starts to arrive. Together the
exchanges of every client, with or without authentication, never reserve more than the
budget; one more is refused with RESOURCE_EXHAUSTED naming the setting. A frame stream reserves
one frame for as long as it is open (the few frames it queues while its client sends them come
on top: at most twice its batch limit).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from modelrunner.limits import over_limit

SETTING = "max_receiving_bytes"


class ReceivingBudget:
    """Bytes of samples being received or held by exchanges, all clients together."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._reserved = 0

    @property
    def reserved(self) -> int:
        """Bytes reserved now."""
        return self._reserved

    @contextmanager
    def reserving(self) -> Iterator[Reservation]:
        """An exchange's share of the budget, empty until it reserves its sample, given back
        when the block ends."""
        reservation = Reservation(self)
        try:
            yield reservation
        finally:
            reservation.release()

    def _take(self, nbytes: int, described: str) -> None:
        with self._lock:
            receiving = self._reserved
            if receiving + nbytes <= self.limit:
                self._reserved = receiving + nbytes
                return
        sample = f"the announced sample takes {nbytes} bytes" + (
            f" ({described})" if described else ""
        )
        details: dict[str, Any] = {"got": nbytes, "receiving": receiving}
        if nbytes > self.limit:
            raise over_limit(
                SETTING,
                self.limit,
                f"{sample}, more than this runtime receives at once ({self.limit} bytes); "
                "predict it in smaller parts",
                **details,
            )
        raise over_limit(
            SETTING,
            self.limit,
            f"{sample}; the runtime is receiving {receiving} bytes of other samples and takes "
            f"at most {self.limit} at once: try again when some have been answered",
            **details,
        )

    def _give_back(self, nbytes: int) -> None:
        with self._lock:
            self._reserved -= nbytes


class Reservation:
    """One exchange's share of a :class:`ReceivingBudget`: at most one sample's bytes at a
    time (no budget: nothing is counted)."""

    def __init__(self, budget: ReceivingBudget | None) -> None:
        self._budget = budget
        self._sample_bytes = 0
        self._described = ""
        self.held = 0
        """Bytes held now."""

    def hold(self, nbytes: int, described: str = "") -> None:
        """Reserve the sample the exchange announced (``described``: its tensors, for the
        message); RESOURCE_EXHAUSTED when the budget has no room for it."""
        self._sample_bytes, self._described = nbytes, described
        self.hold_again()

    def hold_again(self) -> None:
        """Reserve the announced sample again, after :meth:`release` (a session's next sample
        starts to arrive); nothing when it is held."""
        if self.held or self._budget is None:
            return
        self._budget._take(self._sample_bytes, self._described)
        self.held = self._sample_bytes

    def release(self) -> None:
        """Give the reservation back (the sample was answered, or the call ends)."""
        if self.held and self._budget is not None:
            self._budget._give_back(self.held)
        self.held = 0
