"""A stream of frames on one exchange: a thread reads and decodes frames into a bounded queue
while the model runs; waiting frames are predicted together (stacked where the model allows),
each answered in order with its outputs or its error. A draining runtime answers the frames it
holds, then sends a shutdown notice and ends the stream."""

from __future__ import annotations

import queue
import time

from modelrunner import errors

from .exchange_calls import CancelPolling, ExchangeCall, malformed_input
from .frame_io import (
    SHUTDOWN_NOTICE_FRAME,
    FrameReader,
    aligned_sample,
    announced_layout,
    take_batch,
    write_error,
    write_outputs,
)


def serve_stream(call: ExchangeCall) -> None:
    context, writer, seen = call.context, call.writer, call.seen
    layout, dims = announced_layout(context, call.reader, call.service.limits)
    request = call.request.with_inputs({}, dims)
    max_batch = call.service.stream_batch_limit(request)
    # Frames are read and decoded on a thread while the model runs, bounded so a fast client
    # cannot make the server buffer more than a few frames.
    frames: queue.Queue[object] = queue.Queue(maxsize=max(2, 2 * max_batch))
    reading = FrameReader(context, call.reader, layout, frames)
    reading.start()
    cancelled = CancelPolling(context)
    out_layout = None
    try:
        while True:
            batch = take_batch(frames, max_batch, call.draining, reading)
            if batch is None:
                drained = errors.ServerShuttingDownError(
                    "the runtime is shutting down: the frames received were answered; "
                    "send the rest again on a new stream"
                )
                # The notice asks the client to end its side of the stream: the frame reader
                # waits for its next message, which a client between frames (a microscope
                # between acquisitions) may not send for minutes.
                write_error(writer, SHUTDOWN_NOTICE_FRAME, drained)
                raise drained
            if not batch:
                break
            if cancelled():
                seen.cancelled = True
                return  # logged once by the edge
            call.check_rights_again()
            started = time.perf_counter()
            results = call.service.predict_frames(
                request, [aligned_sample(s) for _, s in batch], cancelled=cancelled
            )
            for (index, sample), result in zip(batch, results, strict=True):
                nbytes = sum(a.nbytes for a in sample.values())
                if isinstance(result, errors.ModelRunnerError):
                    write_error(writer, index, result)
                    seen.frame(nbytes, None, 0.0)
                else:
                    out_layout = write_outputs(
                        writer, out_layout, result, frame=index, batch_bytes=call.batch_bytes
                    )
                    seen.frame(nbytes, result.arrays, time.perf_counter() - started)
    finally:
        if call.draining.is_set():
            # The reader must not outlive the call (it reads the call's stream: pyarrow aborts
            # the process). It ends at the client's next message: the end of its side that the
            # shutdown notice asks for, or a frame; the process's grace period bounds a client
            # that sends neither.
            reading.stop_reading()
            reading.join()
        else:
            reading.stop()
    if reading.error is not None and not context.is_cancelled():
        with malformed_input(context):
            raise reading.error
