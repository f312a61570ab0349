"""Frames in and out of a prediction exchange (docs/wire-format.md), shared by the exchange
kinds: the announced input layout (refused over ``max_sample_bytes``, or when the runtime's
``max_receiving_bytes`` has no room for it, before anything is allocated), one whole sample read, a stream's frames read on a thread into a bounded queue, and
outputs, streamed bands, progress and errors written with their ``FrameResult``.
"""

from __future__ import annotations

import queue
import threading
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from modelrunner import converters, errors, types
from modelrunner.body_alignment import write_aligned
from modelrunner.transport_errors import bounded
from modelrunner.v1 import runtime_pb2
from modelrunner.wire import (
    END_NOTICE_FRAME,
    WRITE_OPTIONS,
    ArraySpec,
    BandEncoder,
    SampleDecoder,
    SampleLayout,
    encode_sample,
)

from .exchange_calls import malformed_input
from .limits import RuntimeLimits
from .memory_release import release_free_memory
from .outputs import Outputs, StreamedOutputs
from .receiving_budget import Reservation

END = object()
"""In a stream's frame queue: the client finished writing (or the reading failed)."""
DRAIN_POLL_S = 0.2
"""How often an idle stream looks whether the runtime is shutting down."""

Sample = dict[str, np.ndarray]
DimNames = dict[str, tuple[str, ...]]


def aligned(a: np.ndarray) -> np.ndarray:
    """Received buffers can be misaligned for their data type; frameworks want aligned ones."""
    return a if a.flags.aligned else a.copy()


def aligned_sample(sample: Sample) -> Sample:
    return {k: aligned(v) for k, v in sample.items()}


def announced_layout(
    context: flight.ServerCallContext,
    reader: flight.MetadataRecordBatchReader,
    limits: RuntimeLimits,
    receiving: Reservation,
) -> tuple[SampleLayout, DimNames]:
    """The layout the client's schema announces and its dim names, refused before anything is
    allocated when its sample is larger than ``max_sample_bytes`` or the runtime's budget for
    samples being received has no room for it (``receiving`` holds its share then)."""
    with malformed_input(context):
        layout = SampleLayout.from_schema(reader.schema)
    described = _describe(layout)
    limits.check_sample_bytes(layout.nbytes, described)
    receiving.hold(layout.nbytes, described)
    return layout, {t.name: t.dim_names for t in layout.tensors if t.dim_names}


def _describe(layout: SampleLayout) -> str:
    return errors.clip(", ".join(f"{t.name!r}: {list(t.shape)} {t.dtype}" for t in layout.tensors))


def receive_sample(
    context: flight.ServerCallContext,
    reader: flight.MetadataRecordBatchReader,
    limits: RuntimeLimits,
    receiving: Reservation,
) -> tuple[Sample, DimNames]:
    """Read one whole sample and its dim names. The decoder and the received batches are gone
    when this returns, so the sample's arrays are the only copy of the input left."""
    layout, dims = announced_layout(context, reader, limits, receiving)
    with malformed_input(context):
        sample = _read_one_sample(context, reader, SampleDecoder(layout))
    return aligned_sample(sample), dims


def _read_one_sample(
    context: flight.ServerCallContext,
    reader: flight.MetadataRecordBatchReader,
    decoder: SampleDecoder,
) -> Sample:
    sample: Sample | None = None
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


class FrameReader(threading.Thread):
    """Reads and decodes a stream's frames into a bounded queue as (index, sample).

    It reads the call's stream, so the call must not end while it runs: pyarrow aborts the
    whole process when a handler returns while another thread is inside a read of its call
    ("pure virtual method called"). :meth:`end` is the only way out: it waits, without a
    timeout, for the client's next message (a frame, the end of its side) or its cancel."""

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
            self._put(END)

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

    def end(self) -> None:
        """Queue no more frames and wait until the reading has stopped: at once when the
        client has ended its side or cancelled, else at its next message (which is dropped).
        A client that may be waiting for an answer must have been told to end its side first
        (:func:`write_end_notice`), or this waits for as long as the client does."""
        self._stopped.set()
        self.join()


def take_batch(
    frames: queue.Queue[object],
    max_batch: int,
    draining: threading.Event,
    reading: FrameReader,
) -> list[tuple[int, Sample]] | None:
    """Wait for one frame, then take whatever else is already waiting, up to ``max_batch``.
    Once ``draining`` is set, no more frames are read and None follows the frames received."""
    while True:
        if draining.is_set():
            reading.stop_reading()
            try:
                first = frames.get_nowait()
            except queue.Empty:
                return None
            if first is END:
                frames.put(END)
                return []
            break
        try:
            first = frames.get(timeout=DRAIN_POLL_S)
            break
        except queue.Empty:
            continue
    if first is END:
        frames.put(END)
        return []
    batch = [first]
    while len(batch) < max_batch:
        try:
            item = frames.get_nowait()
        except queue.Empty:
            break
        if item is END:
            frames.put(END)
            break
        batch.append(item)
    return batch  # type: ignore[return-value]


@lru_cache(maxsize=64)  # single predictions all answer frame 0 of one model
def frame_metadata(frame: int, weight_format: str, device: str, serving_path: str) -> pa.Buffer:
    return pa.py_buffer(
        runtime_pb2.FrameResult(
            frame=frame, weight_format=weight_format, device=device, serving_path=serving_path
        ).SerializeToString()
    )


def output_layout(
    layout: SampleLayout | None,
    outputs: Outputs,
    *,
    frame: int,
    batch_bytes: int,
    what: str = "stream",
) -> SampleLayout:
    """The layout a frame's outputs are written in: the exchange's (``layout``), which they
    must match, or for its first answer a new one."""
    if layout is None:
        return SampleLayout.plan(outputs.arrays, outputs.dim_names, batch_bytes=batch_bytes)
    if not layout.matches(outputs.arrays):
        raise errors.InternalError(
            f"frame {frame}: output shapes changed within a {what}: "
            f"{ {k: list(v.shape) for k, v in outputs.arrays.items()} }"
            + ("; predict this sample on an exchange of its own" if what == "session" else ""),
            details={"frame": frame} if what == "session" else None,
        )
    return layout


def write_frame(
    writer: flight.MetadataRecordBatchWriter,
    layout: SampleLayout,
    outputs: Outputs,
    *,
    frame: int,
    first: bool,
) -> None:
    """Write a frame's outputs in ``layout`` (its schema first, for the exchange's ``first``
    answer)."""
    if first:
        writer.begin(layout.schema(), options=WRITE_OPTIONS)
    metadata = frame_metadata(frame, outputs.weight_format, outputs.device, outputs.serving_path)
    for batch in encode_sample(layout, outputs.arrays):
        write_aligned(writer, batch, metadata)


def write_outputs(
    writer: flight.MetadataRecordBatchWriter,
    layout: SampleLayout | None,
    outputs: Outputs,
    *,
    frame: int,
    batch_bytes: int,
) -> SampleLayout:
    """Write a frame's outputs; the first fixes the exchange's output schema (``layout``
    None), the next must match it."""
    written = output_layout(layout, outputs, frame=frame, batch_bytes=batch_bytes)
    write_frame(writer, written, outputs, frame=frame, first=layout is None)
    return written


def write_streamed(
    context: flight.ServerCallContext,
    writer: flight.MetadataRecordBatchWriter,
    outputs: StreamedOutputs,
    batch_bytes: int,
) -> None:
    """Send the outputs' schema, then each record batch as soon as its rows are predicted;
    a band is dropped once its batches are written, so no whole output is ever held."""
    layout = SampleLayout.plan_shapes(
        {k: ArraySpec(shape, outputs.dtypes[k]) for k, shape in outputs.shapes.items()},
        outputs.dim_names,
        batch_bytes=batch_bytes,
    )
    writer.begin(layout.schema(), options=WRITE_OPTIONS)
    metadata = frame_metadata(0, outputs.weight_format, outputs.device, outputs.serving_path)
    encoder = BandEncoder(layout)
    for bands in outputs.bands:
        if context.is_cancelled():
            raise errors.CancelledError("the client cancelled the prediction")
        for batch in encoder.add(bands):
            # write and forget: a batch may be a view of a band, which should go once sent
            write_aligned(writer, batch, metadata)
        del bands  # before the next band is predicted
    if not encoder.done:
        raise errors.InternalError("the tiled prediction ended before its outputs were whole")


def write_progress(writer: flight.MetadataRecordBatchWriter, progress: types.Progress) -> None:
    writer.write_metadata(
        runtime_pb2.FrameResult(
            frame=0, progress=converters.to_pb_progress(progress)
        ).SerializeToString()
    )


def write_end_notice(writer: flight.MetadataRecordBatchWriter, error: BaseException) -> None:
    """Tell a stream's client that the call ends with ``error`` (an error that is not a
    :class:`~modelrunner.errors.ModelRunnerError` is sent as the INTERNAL error the edge makes
    of it), so that it ends its side of the stream. A client that went away does not read it:
    nothing to tell then."""
    if not isinstance(error, errors.ModelRunnerError):
        error = errors.InternalError(
            f"prediction failed: {type(error).__name__}: {errors.clip(error)}"
        )
    try:
        write_error(writer, END_NOTICE_FRAME, error)
    except Exception:  # noqa: BLE001 - the call is broken or cancelled: its reader ends too
        pass


def write_error(
    writer: flight.MetadataRecordBatchWriter, frame: int, error: errors.ModelRunnerError
) -> None:
    """A failed frame's answer: a metadata-only message carrying the error."""
    writer.write_metadata(
        runtime_pb2.FrameResult(
            frame=frame, error=converters.to_pb_error(bounded(error))
        ).SerializeToString()
    )
