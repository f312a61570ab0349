"""Lockstep predictions on open exchanges: sessions (``PredictCommand.session``).

Opening a Flight exchange costs about as much as moving a 512x512 frame, so ``predict`` keeps
the exchange open after a call and sends the next sample of the same runtime, command and input
layout on it (see docs/wire-format.md, "Sessions"). A session serves one call at a time; idle
ones wait in a small pool, least recently used first out. A session idle for a few seconds is
closed: a runtime that stops waits for its open exchanges to end.

One watcher thread per pool, present only while there is something to watch, cancels a call at
its deadline (a session's exchange has none of its own, it outlives calls) and closes sessions
idle for too long.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from typing import NoReturn

import numpy as np
import pyarrow.flight as flight

from modelrunner import converters, errors
from modelrunner.body_alignment import write_aligned
from modelrunner.transport_errors import translated_errors
from modelrunner.units import MiB
from modelrunner.v1 import runtime_pb2
from modelrunner.wire import WRITE_OPTIONS, SampleDecoder, SampleLayout, encode_sample

from .cancellation import CallRegistry
from .exchanges import END_NOTICE_FRAME, call_options, parse_frame_result

logger = logging.getLogger(__name__)

SESSION_MAX_BYTES = 64 * MiB
"""Larger samples take an exchange of their own: they may be tiled and streamed back, and the
cost of opening an exchange is nothing next to moving them."""
MAX_IDLE_SESSIONS = 8
IDLE_S = 5.0
"""An idle session is closed after this long (a runtime that stops waits for it)."""
WATCH_SIGINT_AFTER_S = 0.05
"""A session's call is watched for Ctrl-C (:mod:`.cancellation`) when its call before took at
least this long, or it is its first: quicker calls return before a person notices, and then
Ctrl-C takes effect."""

SessionKey = tuple[str, bytes, SampleLayout]
"""(runtime URI, serialized PredictCommand, input layout): what a session is bound to."""


def fits_session(arrays: Mapping[str, np.ndarray]) -> bool:
    return sum(a.nbytes for a in arrays.values()) <= SESSION_MAX_BYTES


class _NotSent(Exception):
    """The session was over before it took the sample (the runtime ended it, or its transport
    failed while writing): the sample may go again on another session."""

    def __init__(self, cause: BaseException | None) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Session:
    """One open exchange in session mode, used by one call at a time."""

    def __init__(self, client: flight.FlightClient, key: SessionKey) -> None:
        self.key = key
        self.layout = key[2]
        self.model_id = runtime_pb2.PredictCommand.FromString(key[1]).model_id
        self.frames = 0
        """Samples answered so far: the index the runtime gives the next one."""
        self.last_call_s = float("inf")
        """How long its last call took (none yet: infinitely long)."""
        self.idle_since = 0.0
        self.expired = False
        """Set (under the pool's lock) when the watcher cancelled the call at its deadline."""
        self._decoder: SampleDecoder | None = None
        descriptor = flight.FlightDescriptor.for_command(key[1])
        # no timeout: the exchange outlives calls; each call's timeout is the pool's to enforce
        self.writer, self.reader = client.do_exchange(descriptor, call_options(None))
        try:
            self.writer.begin(self.layout.schema(), options=WRITE_OPTIONS)
        except BaseException:
            self.discard()
            raise

    def predict(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | _Failed:
        """Send one sample and read its answer: the outputs, or the runtime's error for it (the
        session stays usable then). Raises :class:`_NotSent` or a transport error."""
        try:
            for batch in encode_sample(self.layout, arrays):
                write_aligned(self.writer, batch)
        except (flight.FlightError, OSError) as e:
            raise _NotSent(e) from None
        return self._answer()

    def _answer(self) -> dict[str, np.ndarray] | _Failed:
        frame = self.frames
        started = False
        while True:
            try:
                chunk = self.reader.read_chunk()
            except StopIteration:
                if not started:  # ended before this sample: the runtime never started it
                    raise _NotSent(None) from None
                raise errors.InternalError(
                    f"the runtime ended the session in the middle of frame {frame}'s outputs"
                ) from None
            meta = parse_frame_result(chunk.app_metadata)
            if chunk.data is None and meta.frame == END_NOTICE_FRAME and meta.HasField("error"):
                self._end_on_notice(converters.from_pb_error(meta.error))
            if meta.frame != frame:
                raise errors.InternalError(
                    f"the runtime answered frame {meta.frame} of a session waiting for {frame}"
                )
            started = True
            if meta.HasField("error"):
                self.frames += 1
                return _Failed(converters.from_pb_error(meta.error))
            if chunk.data is None:
                continue
            if self._decoder is None:
                self._decoder = SampleDecoder(SampleLayout.from_schema(self.reader.schema))
            samples = self._decoder.feed(chunk.data)
            if samples:
                self.frames += 1
                return samples[0]

    def _end_on_notice(self, notice: errors.ModelRunnerError) -> NoReturn:
        """The runtime's end notice (docs/wire-format.md, section 3): end this side of the
        exchange, as the notice asks, and raise the call's error (its status, which the caller
        types), or the notice's own when the call ends without one."""
        try:
            self.writer.done_writing()
        except Exception:  # noqa: BLE001 - the call is over already: its status follows
            pass
        while True:
            try:
                self.reader.read_chunk()
            except StopIteration:
                raise notice from None

    def close(self) -> None:
        """End an idle session: the runtime sees the end of the input and ends the exchange."""
        try:
            self.writer.done_writing()
            self.writer.close()
        except Exception:  # noqa: BLE001 - already broken: nothing left to end
            self.discard()

    def discard(self) -> None:
        """Cancel the exchange (a call may be in progress on the runtime)."""
        try:
            self.reader.cancel()
        except Exception:  # noqa: BLE001 - already finished
            pass
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - a cancelled call refuses to close cleanly
            pass


class _Failed:
    """The runtime's answer for a sample that failed (the session itself is fine)."""

    def __init__(self, error: errors.ModelRunnerError) -> None:
        self.error = error


class SessionPool:
    """Idle sessions of one client, and the watcher of deadlines and idle times."""

    def __init__(
        self, calls: CallRegistry, *, max_idle: int = MAX_IDLE_SESSIONS, idle_s: float = IDLE_S
    ) -> None:
        """``calls``: the client's calls in progress, which can cancel a session's call."""
        self.calls = calls
        self.max_idle = max_idle
        self.idle_s = idle_s
        self._cond = threading.Condition()
        self._idle: list[_Session] = []  # least recently used first
        self._deadlines: dict[_Session, float] = {}
        self._watcher: threading.Thread | None = None
        self._next_wake = math.inf
        self._closed = False

    @property
    def idle(self) -> int:
        """Idle sessions in the pool."""
        with self._cond:
            return len(self._idle)

    def predict(
        self,
        client: flight.FlightClient,
        uri: str,
        command: bytes,
        arrays: Mapping[str, np.ndarray],
        dim_names: Mapping[str, tuple[str, ...]],
        *,
        timeout: float | None,
        batch_bytes: int,
    ) -> dict[str, np.ndarray]:
        """Predict one sample on an idle session for ``(uri, command, layout)``, or a new one.

        A pooled session that turns out to be over before it took the sample (the runtime
        restarted or ended it) is replaced once by a new one; a sample the runtime took is never
        sent again. ``timeout`` bounds the whole call, as it does for a one-shot exchange."""
        layout = SampleLayout.plan(arrays, dim_names, batch_bytes=batch_bytes)
        key: SessionKey = (uri, command, layout)
        deadline = None if timeout is None else time.monotonic() + timeout
        session = self._checkout(key)
        with translated_errors():
            if session is not None:
                try:
                    return self._predict_on(session, arrays, deadline, timeout)
                except _NotSent:
                    logger.debug("a pooled session was over; sending the sample on a new one")
            session = _Session(client, key)
            try:
                return self._predict_on(session, arrays, deadline, timeout)
            except _NotSent as e:
                if e.cause is not None:
                    raise e.cause from None
                raise errors.UnavailableError(
                    "the runtime ended a new session before its first sample: it may be stopping"
                ) from None

    def _predict_on(
        self,
        session: _Session,
        arrays: Mapping[str, np.ndarray],
        deadline: float | None,
        timeout: float | None,
    ) -> dict[str, np.ndarray]:
        self._arm(session, deadline)
        started = time.monotonic()
        try:
            watch = session.last_call_s >= WATCH_SIGINT_AFTER_S
            with self.calls.track(session.reader, watch_sigint=watch):
                result = session.predict(arrays)
            session.last_call_s = time.monotonic() - started
        except BaseException:
            expired = self._disarm(session)
            session.discard()
            if expired:
                raise errors.DeadlineExceededError(
                    f"the prediction did not finish within its timeout of {timeout:g} s"
                ) from None
            raise
        if self._disarm(session):
            session.discard()  # answered, but the watcher cancelled the exchange meanwhile
        else:
            self._checkin(session)
        if isinstance(result, _Failed):
            raise result.error
        return result

    # -- the pool ------------------------------------------------------------------------------

    def _checkout(self, key: SessionKey) -> _Session | None:
        with self._cond:
            for i in range(len(self._idle) - 1, -1, -1):
                if self._idle[i].key == key:
                    return self._idle.pop(i)
        return None

    def _checkin(self, session: _Session) -> None:
        evicted = []
        with self._cond:
            if self._closed:
                evicted.append(session)
            else:
                session.idle_since = time.monotonic()
                self._idle.append(session)
                while len(self._idle) > self.max_idle:
                    evicted.append(self._idle.pop(0))
                self._wake_by(session.idle_since + self.idle_s)
        for s in evicted:
            s.close()

    def drop(self, uri: str) -> None:
        """Close the idle sessions on ``uri`` (its connection is going away)."""
        with self._cond:
            dropped = [s for s in self._idle if s.key[0] == uri]
            self._idle = [s for s in self._idle if s.key[0] != uri]
        for s in dropped:
            s.close()

    def drop_model(self, model_id: str) -> None:
        """Close the idle sessions on ``model_id`` (a full id: the model was removed)."""
        with self._cond:
            dropped = [s for s in self._idle if s.model_id == model_id]
            self._idle = [s for s in self._idle if s.model_id != model_id]
        for s in dropped:
            s.close()

    def close(self) -> None:
        """Close every idle session; sessions in use are closed when their call ends."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify()
        for s in idle:
            s.close()

    # -- the watcher ---------------------------------------------------------------------------

    def _arm(self, session: _Session, deadline: float | None) -> None:
        if deadline is None:
            return
        with self._cond:
            self._deadlines[session] = deadline
            self._wake_by(deadline)

    def _disarm(self, session: _Session) -> bool:
        """Stop watching the call's deadline; whether the watcher already cancelled it."""
        with self._cond:
            self._deadlines.pop(session, None)
            return session.expired

    def _wake_by(self, when: float) -> None:
        """(Lock held.) Make sure the watcher looks again no later than ``when``."""
        if self._watcher is None:
            self._watcher = threading.Thread(
                target=self._watch, name="modelrunner-sessions", daemon=True
            )
            self._next_wake = when
            self._watcher.start()
        elif when < self._next_wake:
            self._next_wake = when
            self._cond.notify()

    def _watch(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                late = [s for s, d in self._deadlines.items() if d <= now]
                for s in late:
                    del self._deadlines[s]
                    s.expired = True
                stale = [s for s in self._idle if now - s.idle_since >= self.idle_s]
                if stale:
                    self._idle = [s for s in self._idle if s not in stale]
                if late or stale:
                    # cancel and close without the lock: calls may check in meanwhile
                    self._cond.release()
                    try:
                        for s in late:
                            s.reader.cancel()
                        for s in stale:
                            s.close()
                    finally:
                        self._cond.acquire()
                    continue
                wakes = [
                    *self._deadlines.values(),
                    *(s.idle_since + self.idle_s for s in self._idle),
                ]
                if not wakes:
                    self._watcher = None
                    self._next_wake = math.inf
                    return
                self._next_wake = min(wakes)
                self._cond.wait(self._next_wake - now)
