"""Calls to a runtime's Arrow Flight server: one exchange per prediction (or a session of them,
see ``_sessions``), actions for the rest."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
from google.protobuf.message import Message

from modelrunner import converters, errors, types
from modelrunner.auth import AUTHORIZATION_HEADER, bearer
from modelrunner.body_alignment import write_aligned
from modelrunner.tls import ClientTls
from modelrunner.transport_errors import ErrorTrailers
from modelrunner.v1 import models_pb2, runtime_pb2
from modelrunner.wire import WRITE_OPTIONS, SampleDecoder, SampleLayout, encode_sample

from ._cancellation import CallRegistry
from ._errors import translated_errors

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[types.Progress], None]
READ_OPTIONS = pa.ipc.IpcReadOptions(ensure_alignment=pa.ipc.Alignment.DataTypeSpecific)
_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", ""}
CLOSE_WAIT_S = 5.0
"""How long ``close()`` waits for cancelled calls to let go of their connections."""


def reachable_uri(flight_uri: str, control_address: str) -> str:
    """A runtime listening on every interface announces a wildcard host: reach it through the
    host the client used for the control service."""
    parts = urlsplit(flight_uri)
    if parts.hostname not in _WILDCARD_HOSTS:
        return flight_uri
    control_host = control_address.rsplit(":", 1)[0] if ":" in control_address else control_address
    return urlunsplit(parts._replace(netloc=f"{control_host}:{parts.port}"))


class _BearerHeader(flight.ClientMiddleware):  # type: ignore[misc]
    def __init__(self, value: str) -> None:
        super().__init__()
        self._headers = {AUTHORIZATION_HEADER: value}

    def sending_headers(self) -> dict[str, str]:
        return self._headers


class _BearerHeaderFactory(flight.ClientMiddlewareFactory):  # type: ignore[misc]
    """Presents the client's token on every Flight call."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._value = bearer(token)

    def start_call(self, info: flight.CallInfo) -> _BearerHeader:
        return _BearerHeader(self._value)


class RuntimeConnections:
    """One Flight client per runtime URI, created on first use and shared by all calls, and the
    predict sessions open on them. Every call presents ``token`` (when given); ``grpc+tls``
    runtimes are verified against ``tls``'s roots (None: the system's). ``calls`` are the
    predictions in progress, which :meth:`close` cancels."""

    def __init__(self, *, token: str | None = None, tls: ClientTls | None = None) -> None:
        from ._sessions import SessionPool  # it builds on this module

        self._connect_kwargs: dict[str, object] = dict(tls.flight_kwargs()) if tls else {}
        # ErrorTrailers: a runtime's INVALID_ARGUMENT and NOT_FOUND carry their typed error in
        # a trailer, which pyarrow shows to middleware only
        middleware: list[flight.ClientMiddlewareFactory] = [ErrorTrailers()]
        if token:
            middleware.append(_BearerHeaderFactory(token))
        self._connect_kwargs["middleware"] = middleware
        self._clients: dict[str, flight.FlightClient] = {}
        self._lock = threading.Lock()
        self.calls = CallRegistry()
        self.sessions = SessionPool(self.calls)

    def get(self, uri: str) -> flight.FlightClient:
        with self._lock:
            client = self._clients.get(uri)
            if client is None:
                with translated_errors():
                    client = flight.connect(uri, **self._connect_kwargs)
                self._clients[uri] = client
            return client

    def drop(self, uri: str) -> None:
        self.sessions.drop(uri)
        with self._lock:
            client = self._clients.pop(uri, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        """Cancel the calls in progress (their callers get CancelledError and the runtimes stop
        working on them), then close the sessions and connections."""
        self.calls.cancel_all()
        if not self.calls.wait_idle(CLOSE_WAIT_S):
            logger.warning("calls still in progress %g s after they were cancelled", CLOSE_WAIT_S)
        self.sessions.close()
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.close()


NAN_POLICIES = {"reject": runtime_pb2.NAN_POLICY_REJECT, "allow": runtime_pb2.NAN_POLICY_ALLOW}


def predict_command(
    model_id: str,
    weight_format: str | None,
    device: str | None,
    *,
    nan_policy: str = "reject",
    blocksize: int | None = None,
    stream: bool = False,
    max_batch_size: int = 1,
    skip_preprocessing: bool = False,
    skip_postprocessing: bool = False,
    reference_path: bool = False,
    precision: str | None = None,
    report_progress: bool = False,
    keep_shape: bool = False,
) -> runtime_pb2.PredictCommand:
    """The ``PredictCommand`` of a prediction, its options checked (also the control service's
    for the Open Inference requests it forwards)."""
    if nan_policy not in NAN_POLICIES:
        raise errors.InvalidArgumentError(
            f"nan_policy must be one of {sorted(NAN_POLICIES)}, got {nan_policy!r}"
        )
    if blocksize is not None and blocksize < 0:
        raise errors.InvalidArgumentError(f"blocksize must be >= 0, got {blocksize}")
    command = runtime_pb2.PredictCommand(
        model_id=model_id,
        weight_format=weight_format or "",
        device=device or "",
        stream=stream,
        max_batch_size=max_batch_size,
        nan_policy=NAN_POLICIES[nan_policy],
        skip_preprocessing=skip_preprocessing,
        skip_postprocessing=skip_postprocessing,
        reference_path=reference_path,
        precision=precision or "",
        report_progress=report_progress,
        keep_shape=keep_shape,
    )
    if blocksize is not None:
        command.blocksize = blocksize
    return command


def call_options(timeout: float | None) -> flight.FlightCallOptions:
    return flight.FlightCallOptions(timeout=timeout, read_options=READ_OPTIONS)


def parse_frame_result(metadata: pa.Buffer | None) -> runtime_pb2.FrameResult:
    result = runtime_pb2.FrameResult()
    if metadata is not None and metadata.size:
        result.ParseFromString(metadata.to_pybytes())
    return result


def exchange_predict(
    client: flight.FlightClient,
    command: runtime_pb2.PredictCommand,
    arrays: Mapping[str, np.ndarray],
    dim_names: Mapping[str, tuple[str, ...]],
    *,
    timeout: float | None,
    batch_bytes: int,
    progress: ProgressCallback | None,
    calls: CallRegistry,
) -> dict[str, np.ndarray]:
    """Send one sample, return its outputs (views of the received buffers when unchunked).
    ``calls`` can cancel it (see :mod:`._cancellation`)."""
    layout = SampleLayout.plan(arrays, dim_names, batch_bytes=batch_bytes)
    descriptor = flight.FlightDescriptor.for_command(command.SerializeToString())
    with translated_errors():
        writer, reader = client.do_exchange(descriptor, call_options(timeout))
        # the reader is cancelled on any way out but the outputs (track), before the writer
        # closes: closing waits for the runtime to end the call, which it does only when
        # the call is cancelled or the whole image predicted
        with _closing(writer), calls.track(reader):
            writer.begin(layout.schema(), options=WRITE_OPTIONS)
            if layout.chunked:
                # A big input goes from a thread so that reading outputs can start any time
                # (the runtime may stream tiles back before the upload ends).
                upload = _Uploader(writer, layout, arrays, progress)
                upload.start()
                try:
                    return _read_outputs(reader, progress)
                except BaseException:
                    reader.cancel()  # so the upload stops too
                    raise
                finally:
                    upload.join()
            for batch in encode_sample(layout, arrays):
                write_aligned(writer, batch)
            writer.done_writing()
            return _read_outputs(reader, progress)


@contextmanager
def _closing(writer: flight.FlightStreamWriter) -> Iterator[None]:
    """Close the writer after the call; after a failure, without letting a cancelled call's
    refusal to close hide the failure."""
    try:
        yield
    except BaseException:
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - the call is over already
            pass
        raise
    writer.close()


class _Uploader(threading.Thread):
    def __init__(
        self,
        writer: flight.FlightStreamWriter,
        layout: SampleLayout,
        arrays: Mapping[str, np.ndarray],
        progress: ProgressCallback | None,
    ) -> None:
        super().__init__(name="modelrunner-upload", daemon=True)
        self.writer, self.layout, self.arrays, self.progress = writer, layout, arrays, progress
        self.error: BaseException | None = None

    def run(self) -> None:
        total, done = self.layout.nbytes, 0
        try:
            for batch in encode_sample(self.layout, self.arrays):
                write_aligned(self.writer, batch)
                done = min(total, done + batch.nbytes)
                if self.progress is not None:
                    self.progress(types.Progress(stage="upload", done=done, total=total))
            self.writer.done_writing()
        except BaseException as e:  # noqa: BLE001 - the reader side reports the call's error
            self.error = e
            logger.debug("upload stopped: %s", e)


def _read_outputs(
    reader: flight.FlightStreamReader, progress: ProgressCallback | None
) -> dict[str, np.ndarray]:
    decoder: SampleDecoder | None = None
    received = 0
    while True:
        try:
            chunk = reader.read_chunk()
        except StopIteration:
            break
        meta = parse_frame_result(chunk.app_metadata)
        if meta.HasField("error"):
            raise converters.from_pb_error(meta.error)
        if meta.HasField("progress") and progress is not None:
            progress(converters.from_pb_progress(meta.progress))
        if chunk.data is None:
            continue
        if decoder is None:
            decoder = SampleDecoder(SampleLayout.from_schema(reader.schema))
        received += chunk.data.nbytes
        samples = decoder.feed(chunk.data)
        if decoder.layout.chunked and progress is not None:
            progress(types.Progress(stage="download", done=received, total=decoder.layout.nbytes))
        if samples:
            return samples[0]
    raise errors.InternalError("the runtime ended the prediction without outputs")


def do_action(
    client: flight.FlightClient,
    action_type: str,
    body: Message | None,
    response: Message,
    *,
    timeout: float | None,
) -> None:
    """Run an action and parse its one result into ``response``."""
    payload = b"" if body is None else body.SerializeToString()
    with translated_errors():
        results = list(client.do_action(flight.Action(action_type, payload), call_options(timeout)))
    if not results:
        raise errors.InternalError(f"action {action_type!r} returned no result")
    response.ParseFromString(results[0].body.to_pybytes())


def runtime_info(client: flight.FlightClient, *, timeout: float | None) -> types.RuntimeInfo:
    info = models_pb2.RuntimeInfo()
    do_action(client, "runtime_info", None, info, timeout=timeout)
    return converters.from_pb_runtime(info)
