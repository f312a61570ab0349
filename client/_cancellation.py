"""Cancelling calls in progress: ``close()`` from another thread, an asyncio task cancelled, and
Ctrl-C (SIGINT) while the main thread waits for a runtime.

Every blocking Flight read of a prediction runs inside :meth:`CallRegistry.track`, which knows
the call's reader, so that

- :meth:`CallRegistry.cancel_all` (what ``ModelRunnerClient.close()`` does) cancels each call in
  progress: the runtime sees the call cancelled and stops between tiles, and the waiting caller
  gets :class:`~modelrunner.errors.CancelledError`;
- a :class:`CancelScope` made current for a call (the async client's, for a task) cancels just
  that call;
- in the main thread, SIGINT cancels the call too. Python runs its signal handlers only between
  bytecodes, so a main thread blocked inside pyarrow's ``read_chunk`` would see Ctrl-C only when
  the next message arrives, which for a tiled image is after the whole image. Python's C-level
  handler does write the signal's number to the "wakeup fd" at once
  (:func:`signal.set_wakeup_fd`): a watcher thread reading it cancels the reader, the read
  returns, and ``KeyboardInterrupt`` is raised as usual. The wakeup fd is only borrowed for the
  duration of a blocking read (a previous one gets the bytes forwarded), so this costs no thread
  hop per call.
"""

from __future__ import annotations

import contextvars
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Protocol

import pyarrow.flight as flight

from modelrunner import errors

logger = logging.getLogger(__name__)


class Cancellable(Protocol):
    def cancel(self) -> None: ...


def _cancel(reader: Cancellable) -> None:
    try:
        reader.cancel()
    except Exception:  # noqa: BLE001 - already finished: nothing left to stop
        pass


class CancelScope:
    """A handle to cancel one call from another thread (made current with :meth:`current`)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._readers: set[Cancellable] = set()
        self.reason: str | None = None

    def cancel(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            readers = list(self._readers)
        for reader in readers:
            _cancel(reader)

    @contextmanager
    def current(self) -> Iterator[CancelScope]:
        token = _scope.set(self)
        try:
            yield self
        finally:
            _scope.reset(token)

    def _add(self, reader: Cancellable) -> bool:
        """Watch ``reader``; False when the scope is already cancelled."""
        with self._lock:
            self._readers.add(reader)
            return self.reason is None

    def _remove(self, reader: Cancellable) -> None:
        with self._lock:
            self._readers.discard(reader)
            if not self._readers:
                self._lock.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is watched (the cancelled ones have ended); False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._readers, timeout)


_scope: contextvars.ContextVar[CancelScope | None] = contextvars.ContextVar(
    "modelrunner_cancel_scope", default=None
)


class CallRegistry(CancelScope):
    """The calls in progress on one client; :meth:`cancel_all` cancels them all."""

    def cancel_all(self, reason: str = "the client was closed") -> None:
        self.cancel(reason)

    @contextmanager
    def track(self, reader: Cancellable, what: str = "the prediction") -> Iterator[None]:
        """Run a blocking wait on ``reader``'s call so that :meth:`cancel_all`, the current
        :class:`CancelScope` and SIGINT (main thread) can cancel it. A call cancelled that way
        raises :class:`~modelrunner.errors.CancelledError` saying why (or KeyboardInterrupt)."""
        scopes = [s for s in (self, _scope.get()) if s is not None]
        try:
            for s in scopes:
                if not s._add(reader):
                    _cancel(reader)
            with _SIGINT.watching(reader):
                yield
        except BaseException as e:
            # a wait that ends in an exception leaves no call running on the runtime
            _cancel(reader)
            reason = next((s.reason for s in scopes if s.reason is not None), None)
            if reason is None or not isinstance(
                e, (errors.ModelRunnerError, flight.FlightError, OSError)
            ):
                raise
            raise errors.CancelledError(f"{what} was cancelled: {reason}") from None
        finally:
            for s in scopes:
                s._remove(reader)

    def raise_if_cancelled(self, what: str = "the call") -> None:
        """Refuse to start a call on a closed client (or in a cancelled scope)."""
        for s in (self, _scope.get()):
            if s is not None and s.reason is not None:
                raise errors.CancelledError(f"{what} was cancelled: {s.reason}")


class _SigintWatcher:
    """Cancels the readers the main thread waits on when SIGINT arrives (see the module
    docstring). One per process; its thread starts on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readers: set[Cancellable] = set()
        self._receive: socket.socket | None = None
        self._send: socket.socket | None = None
        self._forward = -1
        """The wakeup fd that was set before ours (asyncio's, say): it gets the bytes too."""
        self._interrupted = False
        """SIGINT came while a call was watched; the program's handler runs when it returns."""

    @contextmanager
    def watching(self, reader: Cancellable) -> Iterator[None]:
        handler = signal.getsignal(signal.SIGINT)
        if (
            threading.current_thread() is not threading.main_thread()
            or not callable(handler)  # SIGINT ignored, or left to the system
            or handler == self._defer  # an outer call of this thread watches already
        ):
            yield
            return
        send = self._start()
        try:
            previous_fd = signal.set_wakeup_fd(send.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError):  # not the main interpreter, or the fd went away
            yield
            return
        # Until the call returns, SIGINT is only noted, then handed to the program's handler:
        # raised while pyarrow runs a middleware callback, KeyboardInterrupt would be logged
        # and dropped by pyarrow instead of reaching the caller.
        self._interrupted = False
        signal.signal(signal.SIGINT, self._defer)
        with self._lock:
            self._forward = previous_fd
            self._readers.add(reader)
        try:
            yield
        finally:
            with self._lock:
                self._readers.discard(reader)
                self._forward = -1
            signal.set_wakeup_fd(previous_fd, warn_on_full_buffer=False)
            signal.signal(signal.SIGINT, handler)
            if self._interrupted:
                self._interrupted = False
                handler(signal.SIGINT, None)  # KeyboardInterrupt, with the default handler

    def _defer(self, signum: int, frame: FrameType | None) -> None:
        self._interrupted = True

    def _start(self) -> socket.socket:
        with self._lock:
            if self._send is None:
                self._receive, self._send = socket.socketpair()
                self._send.setblocking(False)  # set_wakeup_fd wants a non-blocking fd
                threading.Thread(target=self._run, name="modelrunner-sigint", daemon=True).start()
            return self._send

    def _run(self) -> None:
        assert self._receive is not None
        while True:
            try:
                data = self._receive.recv(64)
            except OSError:
                return
            with self._lock:
                readers = list(self._readers) if signal.SIGINT in data else []
                forward = self._forward
            for reader in readers:
                logger.debug("SIGINT: cancelling the call in progress")
                _cancel(reader)
            if forward >= 0:
                try:
                    os.write(forward, data)
                except OSError:
                    pass


_SIGINT = _SigintWatcher()
