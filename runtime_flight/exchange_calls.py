"""What every prediction exchange shares, below the modules of the exchange kinds (single,
stream, session): the call itself (:class:`ExchangeCall`: its context, request, writer, the
caller's rights), polling for its cancellation, the mapping of errors onto Flight, and the
server's counters (:class:`ExchangeCounters`, which owns the queue depth).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.flight as flight

from modelrunner import errors
from modelrunner.call_rights import CallRights
from modelrunner.predict_request import PredictRequest
from modelrunner.transport_errors import to_flight_error

from .exchange_metrics import ExchangeObservation
from .memory_release import release_free_memory
from .receiving_budget import ReceivingBudget, Reservation
from .service import RuntimeService

logger = logging.getLogger(__name__)

CANCEL_POLL_S = 0.05
"""How often a prediction asks whether its call was cancelled. gRPC takes about 75 µs to answer
(here), as long as the runtime's whole work on a 512x512 frame: a quick prediction never asks."""
RELEASE_INTERVAL_S = 1.0
"""Cancelled exchanges give free memory back to the system at most this often."""


@contextmanager
def flight_errors(what: str, context: flight.ServerCallContext | None = None) -> Iterator[None]:
    """Let modelrunner errors leave as the exception that gives their status code (see
    :func:`~modelrunner.transport_errors.to_flight_error`); anything else is an INTERNAL
    error."""
    try:
        yield
    except errors.ModelRunnerError as e:
        raise to_flight_error(e, context) from None
    except flight.FlightError:
        raise
    except Exception as e:
        if context is not None and context.is_cancelled():
            # writing to a call the client cancelled fails: the client went away, no bug
            raise to_flight_error(
                errors.CancelledError(f"{what} was cancelled by the client"), context
            ) from None
        logger.exception("%s failed", what)
        raise to_flight_error(
            errors.InternalError(f"{what} failed: {type(e).__name__}: {errors.clip(e)}"),
            context,
        ) from None


@contextmanager
def malformed_input(context: flight.ServerCallContext) -> Iterator[None]:
    """Reading and decoding what the client sent: Arrow refusing a message (garbage,
    truncated, not matching its schema) is the client's mistake, INVALID_ARGUMENT."""
    try:
        yield
    except (errors.ModelRunnerError, flight.FlightError):
        raise
    except (pa.ArrowException, OSError, ValueError, TypeError, IndexError) as e:
        # (OSError: what pyarrow raises for a truncated message body)
        if context.is_cancelled():
            raise errors.CancelledError("the client cancelled the prediction") from None
        raise errors.InvalidArgumentError(
            f"the input stream is malformed: {type(e).__name__}: {errors.clip(e)} "
            "(see docs/wire-format.md)"
        ) from None


class CancelPolling:
    """``context.is_cancelled``, asked at most every :data:`CANCEL_POLL_S` (first after that
    long); once cancelled, always cancelled."""

    def __init__(self, context: flight.ServerCallContext) -> None:
        self._context = context
        self._asked = time.monotonic()
        self._cancelled = False

    def __call__(self) -> bool:
        if not self._cancelled:
            now = time.monotonic()
            if now - self._asked >= CANCEL_POLL_S:
                self._asked = now
                self._cancelled = bool(self._context.is_cancelled())
        return self._cancelled


class ExchangeCounters:
    """The runtime's prediction exchanges, counted: one object, one lock. Its queue depth is
    what the runtime reports for placement and metrics."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.opened = 0
        """Prediction exchanges opened since the start (a session counts once, however many
        samples it carries)."""
        self.active = 0
        """Predictions in progress (streams and sessions included)."""
        self.sessions = 0
        self.busy_sessions = 0
        """Sessions predicting a sample now (the others wait for their client's next one)."""
        self.cancelled = 0
        """Exchanges the client cancelled (or dropped) since the start: not failures, which
        the client would have been told about."""
        self.session_epoch = 0
        """Sessions opened before the last :meth:`retire_sessions` end at their next sample."""
        self._last_release = float("-inf")

    @property
    def queue_depth(self) -> int:
        """Predictions in progress: the exchanges open, less the sessions that wait for their
        client's next sample."""
        return self.active - self.sessions + self.busy_sessions

    def retire_sessions(self) -> None:
        with self._lock:
            self.session_epoch += 1

    @contextmanager
    def exchange(self) -> Iterator[None]:
        with self._lock:
            self.opened += 1
            self.active += 1
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1

    @contextmanager
    def session(self) -> Iterator[None]:
        with self._lock:
            self.sessions += 1
        try:
            yield
        finally:
            with self._lock:
                self.sessions -= 1

    def busy(self, change: int) -> None:
        """A session's sample is being predicted (+1), or answered (-1)."""
        with self._lock:
            self.busy_sessions += change

    def count_cancelled(self) -> None:
        """One more cancelled exchange; free memory goes back to the system, at most once a
        :data:`RELEASE_INTERVAL_S` (a client opening and cancelling empty exchanges in a loop
        must not make the runtime trim its heap for each)."""
        with self._lock:
            self.cancelled += 1
            now = self._clock()
            trim = now - self._last_release >= RELEASE_INTERVAL_S
            if trim:
                self._last_release = now
        if trim:
            release_free_memory()


@dataclass
class ExchangeCall:
    """One prediction exchange as its handler sees it."""

    context: flight.ServerCallContext
    request: PredictRequest
    """The options of every sample; each sample's arrays come with :meth:`~PredictRequest.
    with_inputs`."""
    reader: flight.MetadataRecordBatchReader
    writer: flight.MetadataRecordBatchWriter
    service: RuntimeService
    counters: ExchangeCounters
    rights: CallRights
    """The caller's rights to the call (:mod:`modelrunner.call_rights`), checked again per
    frame."""
    seen: ExchangeObservation
    batch_bytes: int
    draining: threading.Event
    report_progress: bool = False
    receiving: Reservation = field(default_factory=lambda: Reservation(None))
    """The call's share of the runtime's ``max_receiving_bytes`` (:mod:`.receiving_budget`):
    its announced sample, reserved when its schema is read (none counted outside
    :meth:`receiving_in`)."""

    @contextmanager
    def receiving_in(self, budget: ReceivingBudget) -> Iterator[None]:
        """Count the call's sample in ``budget`` while the block runs; given back after it."""
        with budget.reserving() as self.receiving:
            yield

    def check_rights_again(self) -> None:
        """Where a stream's or a session's next frame is admitted: the caller's rights, asked
        again at most every ``auth_cache_s`` (a clock read in between); a removed model, a
        revoked token or a model the caller no longer sees ends the call with its error."""
        self.rights.check()
