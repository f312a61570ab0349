"""The runtime's Arrow Flight server: a thin transport over :class:`RuntimeService`.

``do_exchange`` runs predictions (one sample, a stream of frames, or a session of lockstep
samples); ``do_action`` loads, unloads and tests models and reports the runtime's state. Every error leaves through
:func:`flight_errors`, as a Flight error carrying a serialized ``ErrorDetail``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
from google.protobuf.message import DecodeError

from modelrunner import converters, errors, types
from modelrunner.auth import Role
from modelrunner.body_alignment import write_aligned
from modelrunner.call_rights import CallRights
from modelrunner.transport_errors import bounded, to_flight_error
from modelrunner.v1 import control_pb2, runtime_pb2
from modelrunner.wire import (
    DEFAULT_BATCH_BYTES,
    WRITE_OPTIONS,
    BandEncoder,
    SampleDecoder,
    SampleLayout,
    TensorSpec,
    check_model_ref,
    encode_sample,
)

from .call_gate import CallGate
from .caller_auth import CallerChecks
from .exchange_metrics import ExchangeObservation, observing
from .memory_release import release_free_memory
from .model_removal import remove_model
from .service import Outputs, RuntimeService, StreamedOutputs, whole_outputs

logger = logging.getLogger(__name__)

_ACTIONS = {
    "load_model": "Load a model: LoadModelRequest -> LoadModelResponse",
    "unload_model": "Unload a model: UnloadModelRequest -> UnloadModelResponse",
    "test_model": "Run bioimageio.core's model test: TestModelRequest -> TestModelResponse",
    "runtime_info": "Devices, warm models and versions: (empty) -> RuntimeInfo",
}
_END = object()
_DRAIN_POLL_S = 0.2
"""How often an idle stream looks whether the runtime is shutting down."""
SHUTDOWN_NOTICE_FRAME = -1
"""``FrameResult.frame`` of a draining stream's shutdown notice (a metadata-only message whose
error is ServerShuttingDownError): the client ends its side of the stream (DoneWriting)."""
_RELEASE_INTERVAL_S = 1.0
"""Cancelled exchanges give free memory back to the system at most this often."""
CANCEL_POLL_S = 0.05
"""How often a prediction asks whether its call was cancelled. gRPC takes about 75 µs to answer
(here), as long as the runtime's whole work on a 512x512 frame: a quick prediction never asks."""


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


def aligned(a: np.ndarray) -> np.ndarray:
    """Received buffers can be misaligned for their data type; frameworks want aligned ones."""
    return a if a.flags.aligned else a.copy()


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
        self.active_exchanges = 0
        """Predictions in progress (streams and sessions included): what a cancelled call must
        give back."""
        self.exchanges_opened = 0
        """Prediction exchanges opened since the start (a session counts once, however many
        samples it carries)."""
        self.active_sessions = 0
        self.busy_sessions = 0
        """Sessions predicting a sample now (the others wait for their client's next one)."""
        self.exchanges_cancelled = 0
        """Prediction exchanges the client cancelled (or dropped) since the start: not
        failures, which the client would have been told about."""
        self._exchanges_lock = threading.Lock()
        self._last_release = float("-inf")
        """When a cancelled exchange last gave free memory back to the system."""
        self._session_epoch = 0
        """Sessions opened before the last :meth:`retire_sessions` end at their next sample."""
        self.draining = threading.Event()
        """Set by :meth:`begin_drain`: streams answer the frames they hold and end."""

    def begin_drain(self) -> None:
        """The start of a graceful shutdown (``modelrunner.graceful_shutdown``): open streams
        answer the frames already received, then end with ServerShuttingDownError; single
        predictions run on; sessions end before their next sample once :meth:`shutdown` runs."""
        self.draining.set()

    def retire_sessions(self) -> None:
        """End the sessions open now before their next sample: the runtime ends the exchange
        without answering it, and the client sends that sample again on a new exchange."""
        with self._exchanges_lock:
            self._session_epoch += 1

    def shutdown(self) -> None:
        """Stop serving. Flight waits for calls in progress, idle sessions included: the
        reference client closes a session idle for a few seconds, and a session that sends a
        sample now is ended before it (the client sends it again, to a runtime that runs)."""
        self.retire_sessions()
        if self.active_sessions:
            logger.info("waiting for %d open session(s) to end", self.active_sessions)
        super().shutdown()

    @property
    def queue_depth(self) -> int:
        """Predictions in progress: the exchanges open, less the sessions that wait for their
        client's next sample (what the runtime reports for placement and metrics)."""
        return self.active_exchanges - self.active_sessions + self.busy_sessions

    @property
    def max_sample_bytes(self) -> int:
        """Largest sample a client may announce (setting ``max_sample_bytes``)."""
        return int(self.service.settings.max_sample_bytes)

    # -- predictions ---------------------------------------------------------------------------

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
        with self._counting_exchange():
            try:
                with flight_errors("prediction", context):
                    command = _parse_command(descriptor)
                    with self.gate.exchange(context, command.model_id) as rights:
                        # the model as the caller resolved it: nothing resolves it again
                        command.model_id = rights.model_id
                        kind = (
                            "session"
                            if command.session
                            else "stream"
                            if command.stream
                            else "predict"
                        )
                        with observing(kind, rights.model_id) as seen:
                            self._serve(context, command, reader, writer, seen, rights)
            finally:
                # counted before the exchange stops counting as active
                if context.is_cancelled():
                    self._cancelled(command, started, idle=seen is not None and seen.ended_idle)

    def _serve(
        self,
        context: flight.ServerCallContext,
        command: runtime_pb2.PredictCommand,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
        seen: ExchangeObservation,
        rights: CallRights,
    ) -> None:
        if command.session:
            self._serve_session(context, command, reader, writer, seen, rights)
        elif command.stream:
            self._serve_stream(context, command, reader, writer, seen, rights)
        else:
            self._serve_one(context, command, reader, writer)

    def _cancelled(
        self, command: runtime_pb2.PredictCommand | None, started: float, *, idle: bool = False
    ) -> None:
        """The one line a cancelled exchange leaves, once its work has stopped and its buffers
        are gone."""
        with self._exchanges_lock:
            self.exchanges_cancelled += 1
            now = time.monotonic()
            # at most once a second: a client opening and cancelling empty exchanges in a
            # loop must not make the runtime trim its heap for each
            trim = now - self._last_release >= _RELEASE_INTERVAL_S
            if trim:
                self._last_release = now
        if trim:
            release_free_memory()
        kind = (
            "session"
            if command is not None and command.session
            else "stream"
            if command is not None and command.stream
            else "prediction"
        )
        model = command.model_id[:12] if command is not None else "?"
        if idle:
            # a session waiting for its next frame: its client closed it or went away, which
            # is how sessions end (a client process that exits without close() too)
            logger.debug(
                "session of model %s ended by its client after %.2f s, between frames",
                model,
                time.monotonic() - started,
            )
            return
        logger.info(
            "%s of model %s cancelled by the client after %.2f s",
            kind,
            model,
            time.monotonic() - started,
        )

    @contextmanager
    def _counting_exchange(self) -> Iterator[None]:
        with self._exchanges_lock:
            self.exchanges_opened += 1
        with self._counting("active_exchanges"):
            yield

    @contextmanager
    def _counting(self, counter: str) -> Iterator[None]:
        """``counter`` (an attribute) counts this call while it runs."""
        with self._exchanges_lock:
            setattr(self, counter, getattr(self, counter) + 1)
        try:
            yield
        finally:
            with self._exchanges_lock:
                setattr(self, counter, getattr(self, counter) - 1)

    def _serve_one(
        self,
        context: flight.ServerCallContext,
        command: runtime_pb2.PredictCommand,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
    ) -> None:
        inputs, dims = _receive_sample(context, reader, self.max_sample_bytes)
        cancelled = _CancelPolling(context)

        def report(progress: types.Progress) -> None:
            if command.report_progress and not cancelled():
                writer.write_metadata(
                    runtime_pb2.FrameResult(
                        frame=0, progress=converters.to_pb_progress(progress)
                    ).SerializeToString()
                )

        outputs = self.service.predict(command, inputs, dims, progress=report, cancelled=cancelled)
        # a streamed prediction holds the input as long as it needs it; nothing else should
        del inputs
        if isinstance(outputs, StreamedOutputs):
            with closing(outputs):
                self._write_streamed(context, writer, outputs)
        else:
            self._write_outputs(writer, None, outputs, frame=0)

    def _write_streamed(
        self,
        context: flight.ServerCallContext,
        writer: flight.MetadataRecordBatchWriter,
        outputs: StreamedOutputs,
    ) -> None:
        """Send the outputs' schema, then each record batch as soon as its rows are predicted;
        a band is dropped once its batches are written, so no whole output is ever held."""
        layout = SampleLayout.plan_shapes(
            {k: TensorSpec(shape, outputs.dtypes[k]) for k, shape in outputs.shapes.items()},
            outputs.dim_names,
            batch_bytes=self.batch_bytes,
        )
        writer.begin(layout.schema(), options=WRITE_OPTIONS)
        metadata = _frame_metadata(
            0, outputs.weight_format, outputs.device, getattr(outputs, "serving_path", "")
        )
        encoder = BandEncoder(layout)
        for bands in outputs.bands:
            if context.is_cancelled():
                raise errors.CancelledError("the client cancelled the prediction")
            _write_batches(writer, encoder.add(bands), metadata)
            del bands  # before the next band is predicted
        if not encoder.done:
            raise errors.InternalError("the tiled prediction ended before its outputs were whole")

    def _write_outputs(
        self,
        writer: flight.MetadataRecordBatchWriter,
        layout: SampleLayout | None,
        outputs: Outputs,
        *,
        frame: int,
    ) -> SampleLayout:
        if layout is None:
            layout = SampleLayout.plan(
                outputs.arrays, outputs.dim_names, batch_bytes=self.batch_bytes
            )
            writer.begin(layout.schema(), options=WRITE_OPTIONS)
        elif not layout.matches(outputs.arrays):
            raise errors.InternalError(
                f"frame {frame}: output shapes changed within a stream: "
                f"{ {k: list(v.shape) for k, v in outputs.arrays.items()} }"
            )
        metadata = _frame_metadata(
            frame, outputs.weight_format, outputs.device, getattr(outputs, "serving_path", "")
        )
        for batch in encode_sample(layout, outputs.arrays):
            write_aligned(writer, batch, metadata)
        return layout

    def _serve_stream(
        self,
        context: flight.ServerCallContext,
        command: runtime_pb2.PredictCommand,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
        seen: ExchangeObservation | None = None,
        rights: CallRights | None = None,
    ) -> None:
        seen = seen or ExchangeObservation("stream", command.model_id)
        rights = rights or CallRights(command.model_id)
        layout = _announced_layout(context, reader, self.max_sample_bytes)
        dims = {t.name: t.dim_names for t in layout.tensors if t.dim_names}
        max_batch = self.service.stream_batch_limit(command)
        # Frames are read and decoded on a thread while the model runs, bounded so a fast
        # client cannot make the server buffer more than a few frames.
        frames: queue.Queue[object] = queue.Queue(maxsize=max(2, 2 * max_batch))
        reading = _FrameReader(context, reader, layout, frames)
        reading.start()
        cancelled = _CancelPolling(context)
        out_layout: SampleLayout | None = None
        try:
            while True:
                batch = _take_batch(frames, max_batch, self.draining, reading)
                if batch is None:
                    drained = errors.ServerShuttingDownError(
                        "the runtime is shutting down: the frames received were answered; "
                        "send the rest again on a new stream"
                    )
                    # The notice asks the client to end its side of the stream: the frame
                    # reader waits for its next message, which a client between frames (a
                    # microscope between acquisitions) may not send for minutes.
                    _write_error(writer, SHUTDOWN_NOTICE_FRAME, drained)
                    raise drained
                if not batch:
                    break
                rights.check()
                if cancelled():
                    seen.cancelled = True
                    return  # logged once by do_exchange
                started = time.perf_counter()
                results = self.service.predict_frames(
                    command,
                    [{k: aligned(v) for k, v in s.items()} for _, s in batch],
                    dims,
                    cancelled=cancelled,
                )
                for (index, sample), result in zip(batch, results, strict=True):
                    if isinstance(result, errors.ModelRunnerError):
                        _write_error(writer, index, result)
                        seen.frame(sum(a.nbytes for a in sample.values()), None, 0.0)
                    else:
                        out_layout = self._write_outputs(writer, out_layout, result, frame=index)
                        seen.frame(
                            sum(a.nbytes for a in sample.values()),
                            result.arrays,
                            time.perf_counter() - started,
                        )
        finally:
            if self.draining.is_set():
                # The reader must not outlive the call (it reads the call's stream: pyarrow
                # aborts the process). It ends at the client's next message: the end of its
                # side that the shutdown notice asks for, or a frame; the process's grace
                # period bounds a client that sends neither.
                reading.stop_reading()
                reading.join()
            else:
                reading.stop()
        if reading.error is not None and not context.is_cancelled():
            with malformed_input(context):
                raise reading.error

    def _serve_session(
        self,
        context: flight.ServerCallContext,
        command: runtime_pb2.PredictCommand,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
        seen: ExchangeObservation | None = None,
        rights: CallRights | None = None,
    ) -> None:
        """Lockstep predictions on one exchange, all in this thread: read a sample, answer it,
        read the next, until the client finishes writing or cancels. A sample that fails is
        answered with its error and the session goes on; a sample whose caller lost its rights
        ends the session with that error."""
        seen = seen or ExchangeObservation("session", command.model_id)
        rights = rights or CallRights(command.model_id)
        epoch = self._session_epoch
        layout = _announced_layout(context, reader, self.max_sample_bytes)
        dims = {t.name: t.dim_names for t in layout.tensors if t.dim_names}
        decoder = SampleDecoder(layout)
        out_layout: SampleLayout | None = None
        frame = 0
        with self._counting("active_sessions"):
            while True:
                if frame and not decoder.in_progress and not rights.idle():
                    # its token keeps as many idle sessions as it may: the client sends its
                    # next sample on a new exchange (max_exchanges_per_token)
                    return
                try:
                    with malformed_input(context):
                        chunk = reader.read_chunk()
                except StopIteration:
                    seen.ended_idle = True  # a client that goes away ends its input too
                    return
                except Exception:
                    if context.is_cancelled():
                        seen.ended_idle = True
                        return
                    raise
                if chunk.data is None:
                    continue
                rights.at_work()
                with malformed_input(context):
                    samples = decoder.feed(chunk.data)
                if layout.chunked:
                    # as in _read_one_sample: the batch is copied into the sample
                    del chunk
                    release_free_memory()
                for sample in samples:
                    if self._session_epoch != epoch:
                        logger.info("session ended before its frame %d", frame)
                        return
                    rights.check()
                    with self._counting("busy_sessions"):
                        out_layout = self._answer_session_sample(
                            context, command, writer, out_layout, sample, dims, frame, seen
                        )
                    frame += 1

    def _answer_session_sample(
        self,
        context: flight.ServerCallContext,
        command: runtime_pb2.PredictCommand,
        writer: flight.MetadataRecordBatchWriter,
        layout: SampleLayout | None,
        sample: dict[str, np.ndarray],
        dims: dict[str, tuple[str, ...]],
        frame: int,
        seen: ExchangeObservation,
    ) -> SampleLayout | None:
        """Predict one sample of a session and write its outputs, or its error; returns the
        outputs' layout (the exchange's output schema, fixed by the first answered sample)."""
        cancelled = _CancelPolling(context)
        started = time.perf_counter()
        nbytes_in = sum(a.nbytes for a in sample.values())
        try:
            predicted = self.service.predict(
                command, {k: aligned(v) for k, v in sample.items()}, dims, cancelled=cancelled
            )
            del sample
            outputs = (
                whole_outputs(predicted, cancelled)
                if isinstance(predicted, StreamedOutputs)
                else predicted
            )
            if layout is not None and not layout.matches(outputs.arrays):
                raise errors.InternalError(
                    f"frame {frame}: output shapes changed within a session: "
                    f"{ {k: list(v.shape) for k, v in outputs.arrays.items()} }; "
                    "predict this sample on an exchange of its own",
                    details={"frame": frame},
                )
            out_layout = layout or SampleLayout.plan(
                outputs.arrays, outputs.dim_names, batch_bytes=self.batch_bytes
            )
        except errors.ModelRunnerError as e:
            if context.is_cancelled():
                raise
            _write_error(writer, frame, e)
            seen.frame(nbytes_in, None, 0.0, e)
            return layout
        except Exception as e:
            logger.exception("frame %d of a session failed", frame)
            _write_error(
                writer, frame, errors.InternalError(f"prediction failed: {type(e).__name__}: {e}")
            )
            seen.frame(nbytes_in, None, 0.0)
            return layout
        if layout is None:
            writer.begin(out_layout.schema(), options=WRITE_OPTIONS)
        written = self._write_outputs(writer, out_layout, outputs, frame=frame)
        seen.frame(nbytes_in, outputs.arrays, time.perf_counter() - started)
        return written

    # -- actions -------------------------------------------------------------------------------

    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        return list(_ACTIONS.items())

    def do_action(
        self, context: flight.ServerCallContext, action: flight.Action
    ) -> Iterator[bytes]:
        with flight_errors(f"action {errors.clip(action.type, 64)!r}", context):
            body = action.body.to_pybytes() if action.body is not None else b""
            handler = self._action_handlers().get(action.type)
            if handler is None:
                raise errors.InvalidArgumentError(
                    f"unknown action {errors.clip(action.type)!r}; actions: {sorted(_ACTIONS)}"
                )
            with observing(action.type, ""):
                result = handler(context, body)
        return iter([result])

    def _action_handlers(
        self,
    ) -> dict[str, Callable[[flight.ServerCallContext, bytes], bytes]]:
        return {
            "load_model": self._load,
            "unload_model": self._unload,
            "test_model": self._test,
            "runtime_info": self._info,
        }

    def _load(self, context: flight.ServerCallContext, body: bytes) -> bytes:
        request = _parse(runtime_pb2.LoadModelRequest(), body)
        model_id = self.gate.model_for(context, Role.READ, "load_model", request.model_id)
        info = self.service.load(model_id, request.weight_format, request.device)
        return runtime_pb2.LoadModelResponse(
            model=converters.to_pb_loaded_model(info.model), load_seconds=info.load_seconds
        ).SerializeToString()

    def _unload(self, context: flight.ServerCallContext, body: bytes) -> bytes:
        # Unloading stops other users' work: an admin, or the control service when a model is
        # removed (with the control token it issued for this runtime).
        self.caller_checks.require(context, (Role.ADMIN, Role.CONTROL), "unload_model")
        request = _parse(runtime_pb2.UnloadModelRequest(), body)
        if request.removed:
            removal = remove_model(self.service, self.gate.open_calls, request.model_id)
            return runtime_pb2.UnloadModelResponse(
                unloaded=removal.unloaded, calls_in_flight=removal.calls_in_flight
            ).SerializeToString()
        count = self.service.unload(request.model_id, request.weight_format, request.device)
        return runtime_pb2.UnloadModelResponse(unloaded=count).SerializeToString()

    def _test(self, context: flight.ServerCallContext, body: bytes) -> bytes:
        request = _parse(control_pb2.TestModelRequest(), body)
        with self.gate.tests.slot():
            model_id = self.gate.model_for(
                context, (Role.READ, Role.CONTROL), "test_model", request.model_id
            )
            report = self.service.test(model_id, request.weight_format, request.device)
        return control_pb2.TestModelResponse(
            report=converters.to_pb_report(report)
        ).SerializeToString()

    def _info(self, context: flight.ServerCallContext, body: bytes) -> bytes:
        self.caller_checks.require(context, Role.READ, "runtime_info")
        info = self.service.info()
        if not self.caller_checks.sees_everything(context):
            # which models are warm would tell other workspaces' model ids
            info = info.model_copy(update={"loaded_models": ()})
        return converters.to_pb_runtime(info).SerializeToString()


def _announced_layout(
    context: flight.ServerCallContext,
    reader: flight.MetadataRecordBatchReader,
    max_sample_bytes: int,
) -> SampleLayout:
    """The layout the client's schema announces, refused before anything is allocated when
    its sample is larger than ``max_sample_bytes``."""
    with malformed_input(context):
        layout = SampleLayout.from_schema(reader.schema)
    if layout.nbytes > max_sample_bytes:
        raise errors.InvalidTensorError(
            f"the announced sample takes {layout.nbytes} bytes "
            f"({_describe(layout)}), more than this runtime's limit of {max_sample_bytes} "
            "bytes (setting max_sample_bytes); predict it in smaller parts",
            details={"got": layout.nbytes, "expected": f"at most {max_sample_bytes}"},
        )
    return layout


def _describe(layout: SampleLayout) -> str:
    return errors.clip(", ".join(f"{t.name!r}: {list(t.shape)} {t.dtype}" for t in layout.tensors))


def _receive_sample(
    context: flight.ServerCallContext,
    reader: flight.MetadataRecordBatchReader,
    max_sample_bytes: int,
) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, ...]]]:
    """Read one whole sample and its dim names. The decoder and the received batches are gone
    when this returns, so the sample's arrays are the only copy of the input left."""
    layout = _announced_layout(context, reader, max_sample_bytes)
    with malformed_input(context):
        sample = _read_one_sample(context, reader, SampleDecoder(layout))
    dims = {t.name: t.dim_names for t in layout.tensors if t.dim_names}
    return {k: aligned(v) for k, v in sample.items()}, dims


def _read_one_sample(
    context: flight.ServerCallContext,
    reader: flight.MetadataRecordBatchReader,
    decoder: SampleDecoder,
) -> dict[str, np.ndarray]:
    sample: dict[str, np.ndarray] | None = None
    for chunk in reader:
        if context.is_cancelled():
            raise errors.CancelledError("the client cancelled the prediction")
        if chunk.data is None:
            continue
        done = decoder.feed(chunk.data)
        if decoder.layout.chunked:
            # the batch is copied into the sample: hand its buffer back to the system now, or a
            # large input leaves tens of MiB of freed receive buffers resident
            del chunk
            release_free_memory()
        if done:
            if sample is not None or len(done) > 1:
                raise errors.InvalidArgumentError(
                    "a prediction takes one sample; use stream mode for several"
                )
            sample = done[0]
    if sample is None:
        raise errors.InvalidArgumentError("the prediction stream ended before a whole sample")
    return sample


@lru_cache(maxsize=64)  # single predictions all answer frame 0 of one model
def _frame_metadata(frame: int, weight_format: str, device: str, serving_path: str) -> pa.Buffer:
    return pa.py_buffer(
        runtime_pb2.FrameResult(
            frame=frame, weight_format=weight_format, device=device, serving_path=serving_path
        ).SerializeToString()
    )


class _CancelPolling:
    """``context.is_cancelled``, asked at most every :data:`CANCEL_POLL_S` (first after that long);
    once cancelled, always cancelled."""

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


def _write_error(
    writer: flight.MetadataRecordBatchWriter, frame: int, error: errors.ModelRunnerError
) -> None:
    """A failed frame's answer: a metadata-only message carrying the error."""
    writer.write_metadata(
        runtime_pb2.FrameResult(
            frame=frame, error=converters.to_pb_error(bounded(error))
        ).SerializeToString()
    )


def _write_batches(
    writer: flight.MetadataRecordBatchWriter,
    batches: list[pa.RecordBatch],
    metadata: pa.Buffer,
) -> None:
    """Write and forget: a batch may be a view of a band, which should go once it is sent."""
    for batch in batches:
        write_aligned(writer, batch, metadata)


def _parse(message: Any, body: bytes) -> Any:
    try:
        message.ParseFromString(body)
    except DecodeError as e:
        raise errors.InvalidArgumentError(f"cannot parse {type(message).__name__}: {e}") from None
    model_id = getattr(message, "model_id", None)
    if isinstance(model_id, str) and model_id:
        check_model_ref(model_id)
    return message


def _parse_command(descriptor: flight.FlightDescriptor) -> runtime_pb2.PredictCommand:
    if descriptor.descriptor_type != flight.DescriptorType.CMD:
        raise errors.InvalidArgumentError(
            "a prediction needs a CMD descriptor holding a serialized PredictCommand"
        )
    command = _parse(runtime_pb2.PredictCommand(), descriptor.command)
    if not command.model_id:
        raise errors.InvalidArgumentError("PredictCommand.model_id is empty")
    return command


class _FrameReader(threading.Thread):
    """Reads and decodes a stream's frames into a bounded queue as (index, sample)."""

    def __init__(
        self,
        context: flight.ServerCallContext,
        reader: flight.MetadataRecordBatchReader,
        layout: SampleLayout,
        frames: queue.Queue[object],
    ) -> None:
        super().__init__(name="modelrunner-frame-reader", daemon=True)
        self.context, self.reader, self.frames = context, reader, frames
        self.decoder = SampleDecoder(layout)
        self.error: BaseException | None = None
        self._stopped = threading.Event()

    def run(self) -> None:
        index = 0
        try:
            for chunk in self.reader:
                if self._stopped.is_set():
                    return
                if chunk.data is None:
                    continue
                for sample in self.decoder.feed(chunk.data):
                    if not self._put((index, sample)):
                        return
                    index += 1
        except BaseException as e:  # noqa: BLE001 - reported by the handler thread
            if not self.context.is_cancelled():
                self.error = e
        finally:
            self._put(_END)

    def _put(self, item: object) -> bool:
        while not self._stopped.is_set():
            try:
                self.frames.put(item, timeout=0.1)
                return True
            except queue.Full:
                if self.context.is_cancelled():
                    return False
        return False

    def stop_reading(self) -> None:
        """Queue no more frames (those queued stay)."""
        self._stopped.set()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=5)


def _take_batch(
    frames: queue.Queue[object],
    max_batch: int,
    draining: threading.Event,
    reading: _FrameReader,
) -> list[tuple[int, dict[str, np.ndarray]]] | None:
    """Wait for one frame, then take whatever else is already waiting, up to ``max_batch``.
    Once ``draining`` is set, no more frames are read and None follows the frames received."""
    while True:
        if draining.is_set():
            reading.stop_reading()
            try:
                first = frames.get_nowait()
            except queue.Empty:
                return None
            if first is _END:
                frames.put(_END)
                return []
            break
        try:
            first = frames.get(timeout=_DRAIN_POLL_S)
            break
        except queue.Empty:
            continue
    if first is _END:
        frames.put(_END)
        return []
    batch = [first]
    while len(batch) < max_batch:
        try:
            item = frames.get_nowait()
        except queue.Empty:
            break
        if item is _END:
            frames.put(_END)
            break
        batch.append(item)
    return batch  # type: ignore[return-value]
