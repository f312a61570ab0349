"""One prediction on an Arrow Flight exchange of its own: the sample written (from a thread when
it is chunked, so outputs can come back while it uploads), the outputs read, progress reported
(docs/wire-format.md). Lockstep calls share exchanges instead (:mod:`.sessions`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from modelrunner import converters, errors, types
from modelrunner.body_alignment import write_aligned
from modelrunner.transport_errors import translated_errors
from modelrunner.types import ProgressCallback
from modelrunner.v1 import runtime_pb2
from modelrunner.wire import (
    END_NOTICE_FRAME,
    WRITE_OPTIONS,
    SampleDecoder,
    SampleLayout,
    encode_sample,
)

from .cancellation import CallRegistry

logger = logging.getLogger(__name__)

READ_OPTIONS = pa.ipc.IpcReadOptions(ensure_alignment=pa.ipc.Alignment.DataTypeSpecific)
_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", ""}


def call_options(timeout: float | None) -> flight.FlightCallOptions:
    return flight.FlightCallOptions(timeout=timeout, read_options=READ_OPTIONS)


def parse_frame_result(metadata: pa.Buffer | None) -> runtime_pb2.FrameResult:
    result = runtime_pb2.FrameResult()
    if metadata is not None and metadata.size:
        result.ParseFromString(metadata.to_pybytes())
    return result


def is_end_notice(metadata: pa.Buffer | None) -> bool:
    """Whether a metadata-only message is the runtime's end notice."""
    try:
        result = parse_frame_result(metadata)
    except Exception:  # noqa: BLE001 - not ours to judge here: the reader reads it again
        return False
    return result.frame == END_NOTICE_FRAME and result.HasField("error")


def exchange_predict(
    client: flight.FlightClient,
    command: bytes,
    arrays: Mapping[str, np.ndarray],
    dim_names: Mapping[str, tuple[str, ...]],
    *,
    timeout: float | None,
    batch_bytes: int,
    progress: ProgressCallback | None,
    calls: CallRegistry,
) -> dict[str, np.ndarray]:
    """Send one sample on an exchange of ``command`` (a serialized ``PredictCommand``), return
    its outputs (views of the received buffers when unchunked). ``calls`` can cancel it (see
    :mod:`.cancellation`)."""
    layout = SampleLayout.plan(arrays, dim_names, batch_bytes=batch_bytes)
    descriptor = flight.FlightDescriptor.for_command(command)
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
