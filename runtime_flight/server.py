"""The runtime's Arrow Flight edge over its data plane (:class:`~.service.RuntimeService`).

``do_exchange`` reads the descriptor's ``PredictCommand`` into a ``PredictRequest`` and hands
the exchange to the module of its kind: one sample (:mod:`.single_exchange`), a stream of
frames (:mod:`.stream_exchange`) or a session of lockstep samples (:mod:`.session_exchange`).
``do_action`` loads, unloads and tests models and reports the runtime's state
(:mod:`.flight_actions`). Every error leaves through :func:`.exchange_calls.flight_errors`, as a
Flight error carrying a serialized ``ErrorDetail``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.flight as flight

from modelrunner import errors
from modelrunner.call_rights import CallRights
from modelrunner.predict_command import ExchangeKind, exchange_kind, from_command
from modelrunner.v1 import runtime_pb2
from modelrunner.wire import DEFAULT_BATCH_BYTES

from .call_gate import CallGate
from .caller_auth import CallerChecks
from .exchange_calls import ExchangeCall, ExchangeCounters, flight_errors
from .exchange_metrics import ExchangeObservation, observing
from .flight_actions import ACTIONS, FlightActions, parse_message
from .service import RuntimeService
from .session_exchange import serve_session
from .single_exchange import serve_single
from .stream_exchange import serve_stream

logger = logging.getLogger(__name__)

_SERVE: dict[ExchangeKind, Callable[[ExchangeCall], None]] = {
    "predict": serve_single,
    "stream": serve_stream,
    "session": serve_session,
}


class RuntimeFlightServer(flight.FlightServerBase):  # type: ignore[misc]
    def __init__(
        self,
        location: str,
        service: RuntimeService,
        *,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        caller_checks: CallerChecks | None = None,
        **kwargs: Any,
    ) -> None:
        """``caller_checks``: who may call (none: everyone, the runtime is on loopback);
        ``kwargs`` go to ``FlightServerBase`` (TLS certificates, client verification)."""
        self.caller_checks = caller_checks or CallerChecks(None)
        super().__init__(location, middleware=self.caller_checks.middleware(), **kwargs)
        self.service = service
        self.gate = CallGate(self.caller_checks, service.resolve, service.settings)
        """Rights and limits of every call (:mod:`.call_gate`)."""
        self.batch_bytes = batch_bytes
        self.counters = ExchangeCounters()
        self.actions = FlightActions(service, self.gate)
        self.draining = threading.Event()
        """Set by :meth:`begin_drain`: streams answer the frames they hold and end."""

    def begin_drain(self) -> None:
        """The start of a graceful shutdown (``modelrunner.serving.graceful_shutdown``): open streams
        answer the frames already received, then end with ServerShuttingDownError; single
        predictions run on; sessions end before their next sample once :meth:`shutdown` runs."""
        self.draining.set()

    def retire_sessions(self) -> None:
        """End the sessions open now before their next sample: the runtime ends the exchange
        without answering it, and the client sends that sample again on a new exchange."""
        self.counters.retire_sessions()

    def shutdown(self) -> None:
        """Stop serving. Flight waits for calls in progress, idle sessions included: the
        reference client closes a session idle for a few seconds, and a session that sends a
        sample now is ended before it (the client sends it again, to a runtime that runs)."""
        self.retire_sessions()
        if self.counters.sessions:
            logger.info("waiting for %d open session(s) to end", self.counters.sessions)
        super().shutdown()

    @property
    def queue_depth(self) -> int:
        """Predictions in progress (see :class:`.exchange_calls.ExchangeCounters`)."""
        return self.counters.queue_depth

    # the counters by their earlier names, for callers that read them
    active_exchanges = property(lambda self: self.counters.active)
    exchanges_opened = property(lambda self: self.counters.opened)
    exchanges_cancelled = property(lambda self: self.counters.cancelled)
    active_sessions = property(lambda self: self.counters.sessions)
    busy_sessions = property(lambda self: self.counters.busy_sessions)

    def do_exchange(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
    ) -> None:
        started = time.monotonic()
        command: runtime_pb2.PredictCommand | None = None
        seen: ExchangeObservation | None = None
        with self.counters.exchange():
            try:
                with flight_errors("prediction", context):
                    command = _parse_command(descriptor)
                    with self.gate.exchange(context, command.model_id) as rights:
                        command.model_id = rights.model_id  # resolved as the caller: final
                        kind = exchange_kind(command)
                        with observing(kind, rights.model_id) as seen:
                            call = self.exchange_call(
                                context, command, reader, writer, seen, rights
                            )
                            with call.receiving_in(self.gate.receiving):
                                _SERVE[kind](call)
            finally:
                # counted before the exchange stops counting as active
                if context.is_cancelled():
                    self.counters.count_cancelled()
                    _log_cancelled(command, started, idle=seen is not None and seen.ended_idle)

    def exchange_call(
        self,
        context: flight.ServerCallContext,
        command: runtime_pb2.PredictCommand,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
        seen: ExchangeObservation | None = None,
        rights: CallRights | None = None,
    ) -> ExchangeCall:
        """An exchange of ``command`` on this server, as its kind's handler takes it (``rights``
        None: those of a caller that may do anything)."""
        return ExchangeCall(
            context=context,
            request=from_command(command),
            reader=reader,
            writer=writer,
            service=self.service,
            counters=self.counters,
            rights=rights or CallRights(command.model_id),
            seen=seen or ExchangeObservation(exchange_kind(command), command.model_id),
            batch_bytes=self.batch_bytes,
            draining=self.draining,
            report_progress=command.report_progress,
        )

    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        return list(ACTIONS.items())

    def do_action(
        self, context: flight.ServerCallContext, action: flight.Action
    ) -> Iterator[bytes]:
        with flight_errors(f"action {errors.clip(action.type, 64)!r}", context):
            body = action.body.to_pybytes() if action.body is not None else b""
            handler = self.actions.handlers.get(action.type)
            if handler is None:
                raise errors.InvalidArgumentError(
                    f"unknown action {errors.clip(action.type)!r}; actions: {sorted(ACTIONS)}"
                )
            with observing(action.type, ""):
                result = handler(context, body)
        return iter([result])


_KIND_NAMES = {"predict": "prediction", "stream": "stream", "session": "session"}
_ENDED_BETWEEN_FRAMES = "session of model %s ended by its client after %.2f s, between frames"


def _log_cancelled(
    command: runtime_pb2.PredictCommand | None, started: float, *, idle: bool
) -> None:
    """The one line a cancelled exchange leaves, once its work has stopped. ``idle``: a session
    its client closed or left between frames, which is how sessions end (debug level)."""
    model = command.model_id[:12] if command is not None else "?"
    seconds = time.monotonic() - started
    if idle:
        logger.debug(_ENDED_BETWEEN_FRAMES, model, seconds)
        return
    kind = "prediction" if command is None else _KIND_NAMES[exchange_kind(command)]
    logger.info("%s of model %s cancelled by the client after %.2f s", kind, model, seconds)


def _parse_command(descriptor: flight.FlightDescriptor) -> runtime_pb2.PredictCommand:
    if descriptor.descriptor_type != flight.DescriptorType.CMD:
        raise errors.InvalidArgumentError(
            "a prediction needs a CMD descriptor holding a serialized PredictCommand"
        )
    command = parse_message(runtime_pb2.PredictCommand(), descriptor.command)
    if not command.model_id:
        raise errors.InvalidArgumentError("PredictCommand.model_id is empty")
    return command
