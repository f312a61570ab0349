"""Rights that follow a call for as long as it is open, on both planes.

A call that serves many frames (a Flight session or stream, an Open Inference stream) is granted
its rights when it opens: who the caller is, and the full id of the model it names, resolved as
that caller. Those rights can go while the call is open: a token is revoked or its role changed,
a model is unpublished, taken out of the caller's workspace or removed. :class:`CallRights` is
what the call consults before each frame or request it serves:

* :meth:`CallRights.check` asks the authority again (the token file, the model's visibility)
  at most once every ``every_s`` (``settings.auth_cache_s``, the documented bound); in between a
  frame costs a clock read and a comparison: no lock, no call, no allocation.
* :meth:`CallRights.end` ends the call at its next check with the error given, without waiting
  for the bound: :class:`OpenCalls` finds the calls open on a model that is being removed.
* :meth:`CallRights.idle` and :meth:`CallRights.at_work`: a call that waits for its client's
  next request holds no working slot of its client's limit, only an idle one
  (:class:`~modelrunner.call_slots.HeldSlot`), and takes a working slot again when the request
  arrives.

A refusal is final: the call keeps raising it. While the authority cannot be reached (a remote
runtime's control service restarting: ``UnavailableError``) the call keeps the rights it had and
asks again after ``every_s``, so a control service restart does not end every session.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from modelrunner import errors

if TYPE_CHECKING:
    from modelrunner.call_slots import HeldSlot

Recheck = Callable[[], None]
"""Asks the authority whether the call's rights still hold; raises the refusal
(UnauthenticatedError, PermissionDeniedError, ModelNotFoundError) when they do not."""


class CallRights:
    """The rights one open call was granted, consulted before each of its frames."""

    __slots__ = ("_clock", "_due", "_ended", "_every_s", "_recheck", "_slot", "model_id")

    def __init__(
        self,
        model_id: str,
        recheck: Recheck | None = None,
        *,
        every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        slot: HeldSlot | None = None,
    ) -> None:
        """``model_id``: the full id the call was granted; ``recheck``: None when there is no
        authority to ask (authentication off: only :meth:`end` ends the call); ``slot``: the
        call's slot of its client's limit (None: no limit)."""
        self.model_id = model_id
        self._recheck = recheck
        self._every_s = every_s
        self._clock = clock
        self._due = clock() + every_s
        self._ended: errors.ModelRunnerError | None = None
        self._slot = slot

    def check(self) -> None:
        """Raise the refusal when the call's rights are gone (the hot path: see module)."""
        if self._ended is not None:
            raise _copy(self._ended)
        if self._recheck is None:
            return
        now = self._clock()
        if now < self._due:
            return
        try:
            self._recheck()
        except errors.UnavailableError:
            pass  # the authority is away: keep what was granted, ask again after the bound
        except errors.ModelRunnerError as exc:
            self._ended = exc
            raise _copy(exc) from None
        self._due = self._clock() + self._every_s

    def idle(self) -> bool:
        """The call waits for its client's next request, holding an idle slot instead of a
        working one; False when its client has as many idle calls as it may: end the call now
        (its client sends the next request on a new one)."""
        return self._slot is None or self._slot.idle()

    def at_work(self) -> None:
        """The client's next request is arriving: RESOURCE_EXHAUSTED when its other calls hold
        every working slot (as a new call would get)."""
        if self._slot is not None:
            self._slot.at_work()

    def end(self, error: errors.ModelRunnerError) -> None:
        """End the call at its next :meth:`check` with ``error``."""
        self._ended = error

    @property
    def ended(self) -> bool:
        return self._ended is not None


class OpenCalls:
    """The calls open on one server, by model, so that an event reaches the calls it concerns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_model: dict[str, set[CallRights]] = {}

    @contextmanager
    def holding(self, rights: CallRights) -> Iterator[CallRights]:
        """Count ``rights`` among the open calls while the block runs."""
        with self._lock:
            self._by_model.setdefault(rights.model_id, set()).add(rights)
        try:
            yield rights
        finally:
            with self._lock:
                calls = self._by_model.get(rights.model_id)
                if calls is not None:
                    calls.discard(rights)
                    if not calls:
                        del self._by_model[rights.model_id]

    def end_model(self, model_id: str, error: errors.ModelRunnerError) -> int:
        """End every call open on ``model_id`` at its next frame; returns how many."""
        with self._lock:
            calls = list(self._by_model.get(model_id, ()))
        for rights in calls:
            rights.end(error)
        return len(calls)

    def count(self, model_id: str) -> int:
        with self._lock:
            return len(self._by_model.get(model_id, ()))


def _copy(error: errors.ModelRunnerError) -> errors.ModelRunnerError:
    """A fresh exception of the same kind (each raise gets its own traceback)."""
    return type(error)(error.message, details=error.details)
