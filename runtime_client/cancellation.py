"""Cancelling calls in progress: ``close()`` from another thread, an asyncio task cancelled, and
Ctrl-C (SIGINT) while the main thread waits for a runtime.

Every blocking Flight wait of a prediction runs inside :meth:`CallRegistry.track`, which knows
the call's reader, so that

- :meth:`CallRegistry.cancel_all` (what ``ModelRunnerClient.close()`` does) cancels each call in
  progress: the runtime sees the call cancelled and stops at its next tile, and the waiting
  caller gets :class:`~modelrunner.errors.CancelledError`;
- a :class:`CancelScope` made current for a call (the async client's, for a task) cancels just
  that call;
- in the main thread, SIGINT cancels the call too. Python runs its signal handlers only between
  bytecodes, so a main thread blocked inside pyarrow's ``read_chunk`` would see Ctrl-C only when
  the next message arrives: for a tiled image, after the whole image. Python's C-level handler
  does write the signal's number to the "wakeup fd" at once (:func:`signal.set_wakeup_fd`): a
  watcher thread reading it cancels the reader, and the read returns. Meanwhile the program's
  SIGINT handler is replaced by one that only takes note, and runs when the call returns
  (``KeyboardInterrupt`` with the default handler): raised inside a pyarrow middleware callback,
  where it would otherwise land, pyarrow logs the exception and drops it.

The wakeup fd and the handler are borrowed only while a call waits. That costs 5-6 µs alone, but
40-70 µs inside a real call in the main thread (borrowing the wakeup fd is the dear part;
benchmarks/README.md, "Cancelling"), and nothing in other threads; a 512x512 frame's round trip
takes about 2 ms. So a session's call is watched only when the session's call before took
longer than :data:`~modelrunner.runtime_client.sessions.WATCH_SIGINT_AFTER_S` (or it has none):
a quick call's Ctrl-C takes effect when it returns, that long later at most.
"""

from __future__ import annotations

import _signal  # the C module: ``signal``'s wrappers convert to enums, 5 µs a call
import contextvars
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Protocol

import pyarrow.flight as flight

from modelrunner import errors

logger = logging.getLogger(__name__)

SIGINT = int(signal.SIGINT)


class Cancellable(Protocol):
    def cancel(self) -> None: ...


def _cancel(reader: Cancellable) -> None:
    try:
        reader.cancel()
    except Exception:  # noqa: BLE001 - already finished: nothing left to stop
        pass


class CancelScope:
    """A handle to cancel calls from another thread: those waiting while the scope is current
    (:meth:`current`), or for a :class:`CallRegistry`, those it tracks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readers: set[Cancellable] = set()
        self.reason: str | None = None
        """Why the scope was cancelled (None: it was not)."""

    def cancel(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
        for reader in list(self._readers):
            _cancel(reader)

    @contextmanager
    def current(self) -> Iterator[CancelScope]:
        token = _scope.set(self)
        try:
            yield self
        finally:
            _scope.reset(token)

    # No lock on the way in and out (they wrap every frame's read): set.add and set.discard are
    # atomic, and cancel() sets the reason before it lists the readers while _add adds before
    # it reads the reason, so a reader added during a cancel is cancelled by one or the other.
    def _add(self, reader: Cancellable) -> bool:
        """Watch ``reader``; False when the scope is already cancelled."""
        self._readers.add(reader)
        return self.reason is None

    def _remove(self, reader: Cancellable) -> None:
        self._readers.discard(reader)


_scope: contextvars.ContextVar[CancelScope | None] = contextvars.ContextVar(
    "modelrunner_cancel_scope", default=None
)


def current_scope() -> CancelScope | None:
    """The scope made current in this thread (:meth:`CancelScope.current`), if any."""
    return _scope.get()


class CallRegistry(CancelScope):
    """The calls in progress on one client; :meth:`cancel_all` cancels them all, for good."""

    def cancel_all(self, reason: str = "the client was closed") -> None:
        self.cancel(reason)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is tracked (the cancelled ones have ended); False on timeout.
        Polls: it runs once, when the client closes."""
        deadline = time.monotonic() + timeout
        while self._readers:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def track(
        self, reader: Cancellable, what: str = "the prediction", *, watch_sigint: bool = True
    ) -> _Tracked:
        """A context for a blocking wait on ``reader``'s call, so that :meth:`cancel_all`, the
        current :class:`CancelScope` and SIGINT (main thread) can cancel it. A call cancelled
        that way raises :class:`~modelrunner.errors.CancelledError` saying why (or
        KeyboardInterrupt); any exception leaving the context cancels the call first.
        ``watch_sigint=False``: a wait known to be short, where Ctrl-C may take effect when it
        returns (watching costs tens of µs a call in the main thread)."""
        return _Tracked(self, reader, what, watch_sigint)

    def raise_if_cancelled(self, what: str = "the call") -> None:
        """Refuse to start a call on a closed client (or in a cancelled scope)."""
        for s in (self, _scope.get()):
            if s is not None and s.reason is not None:
                raise errors.CancelledError(f"{what} was cancelled: {s.reason}")


class _Tracked:
    """:meth:`CallRegistry.track` (a class, not a generator: it wraps every frame's read)."""

    __slots__ = ("_reader", "_scopes", "_sigint", "_watch", "_what")

    def __init__(
        self, registry: CallRegistry, reader: Cancellable, what: str, watch_sigint: bool = True
    ) -> None:
        scope = _scope.get()
        self._scopes = (registry,) if scope is None else (registry, scope)
        self._reader, self._what, self._watch = reader, what, watch_sigint
        self._sigint: _SigintDeferral | None = None

    def __enter__(self) -> None:
        for s in self._scopes:
            if not s._add(self._reader):
                _cancel(self._reader)
        if self._watch:
            self._sigint = _SIGINT.watch(self._reader)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        reader = self._reader
        try:
            if self._sigint is not None:
                self._sigint.end()  # may raise KeyboardInterrupt
        except BaseException:
            _cancel(reader)
            raise
        finally:
            for s in self._scopes:
                s._remove(reader)
        if error is None:
            return
        # a wait that ends in an exception leaves no call running on the runtime
        _cancel(reader)
        reason = next((s.reason for s in self._scopes if s.reason is not None), None)
        if reason is not None and isinstance(
            error, (errors.ModelRunnerError, flight.FlightError, OSError)
        ):
            raise errors.CancelledError(f"{self._what} was cancelled: {reason}") from None


class _SigintDeferral:
    """One watched call of the main thread: what to put back when it returns."""

    __slots__ = ("handler", "reader", "wakeup_fd", "watcher")

    def __init__(
        self, watcher: _SigintWatcher, reader: Cancellable, handler: object, wakeup_fd: int
    ) -> None:
        self.watcher, self.reader, self.handler, self.wakeup_fd = (
            watcher,
            reader,
            handler,
            wakeup_fd,
        )

    def end(self) -> None:
        self.watcher.unwatch(self)


class _SigintWatcher:
    """Cancels the reader the main thread waits on when SIGINT arrives (see the module
    docstring). One per process; its thread starts on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: _SigintDeferral | None = None
        self._receive: socket.socket | None = None
        self._send: socket.socket | None = None
        self._interrupted = False
        """SIGINT came while a call was watched; the program's handler runs when it returns."""

    def watch(self, reader: Cancellable) -> _SigintDeferral | None:
        """Start watching ``reader``'s call; None when there is nothing to do: not the main
        thread (only it gets signals), SIGINT ignored or left to the system, or an outer call
        of the main thread already watched."""
        if threading.main_thread() is not threading.current_thread():
            return None
        handler = _signal.getsignal(SIGINT)
        if not callable(handler) or handler == self._defer:
            return None
        send = self._send if self._send is not None else self._start()
        # In this order, each step undone if a SIGINT (KeyboardInterrupt) comes between two:
        # published first, so that no wakeup fd is borrowed without a watched call to give
        # it back; the fd is borrowed last, once _defer holds SIGINT.
        self._interrupted = False
        watched = _SigintDeferral(self, reader, handler, -1)
        with self._lock:
            self._watched = watched
        deferring = False
        try:
            _signal.signal(SIGINT, self._defer)
            deferring = True
            watched.wakeup_fd = _signal.set_wakeup_fd(send.fileno(), warn_on_full_buffer=False)
        except BaseException as e:
            with self._lock:
                self._watched = None
            if deferring:
                _signal.signal(SIGINT, handler)  # type: ignore[arg-type]
            if isinstance(e, (ValueError, OSError)):  # not the main interpreter, fd gone
                return None
            raise
        return watched

    def unwatch(self, watched: _SigintDeferral) -> None:
        with self._lock:
            self._watched = None
        _signal.set_wakeup_fd(watched.wakeup_fd, warn_on_full_buffer=False)
        _signal.signal(SIGINT, watched.handler)
        if self._interrupted:
            self._interrupted = False
            watched.handler(SIGINT, None)  # type: ignore[operator] # KeyboardInterrupt by default

    def _defer(self, signum: int, frame: FrameType | None) -> None:
        self._interrupted = True

    def _start(self) -> socket.socket:
        with self._lock:
            if self._send is None:
                receive, send = socket.socketpair()
                send.setblocking(False)  # set_wakeup_fd wants a non-blocking fd
                self._receive, self._send = receive, send
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
                watched = self._watched
            if watched is None:
                continue
            if SIGINT in data:
                logger.debug("SIGINT: cancelling the call in progress")
                _cancel(watched.reader)
            if watched.wakeup_fd >= 0:  # the fd we borrowed (asyncio's, say) gets them too
                try:
                    os.write(watched.wakeup_fd, data)
                except OSError:
                    pass


_SIGINT = _SigintWatcher()
