"""A stream of frames on one exchange: a thread reads and decodes frames into a bounded queue
while the model runs; waiting frames are predicted together (stacked where the model allows),
each answered in order with its outputs or its error.

A stream that ends with an error while its client's side is open (the runtime drains, the
caller's rights are gone, the model was removed, a failure of the stream itself) first sends an
end notice carrying that error (:func:`.frame_io.write_end_notice`): the client ends its side,
the frame reader stops at that end (or at the client's next message, which is dropped) and only
then does the call end with the error. The handler never returns while the frame reader reads
the call's stream (pyarrow would abort the process); what this holds, a thread per stream whose
client ignores the notice and sends nothing, is bounded by ``max_exchanges_per_token``."""

from __future__ import annotations

import queue
import time

from modelrunner import errors
from modelrunner.predict_request import PredictRequest

from .exchange_calls import CancelPolling, ExchangeCall, malformed_input
from .frame_io import (
    FrameReader,
    aligned_sample,
    announced_layout,
    take_batch,
    write_end_notice,
    write_error,
    write_outputs,
)


def serve_stream(call: ExchangeCall) -> None:
    context = call.context
    layout, dims = announced_layout(context, call.reader, call.service.limits, call.receiving)
    request = call.request.with_inputs({}, dims)
    max_batch = call.service.stream_batch_limit(request)
    # Frames are read and decoded on a thread while the model runs, bounded so a fast client
    # cannot make the server buffer more than a few frames.
    frames: queue.Queue[object] = queue.Queue(maxsize=max(2, 2 * max_batch))
    reading = FrameReader(context, call.reader, layout, frames)
    reading.start()
    try:
        _answer_frames(call, request, frames, max_batch, reading)
    except Exception as e:
        if not context.is_cancelled():
            # the client may be waiting for an answer, or between frames for minutes: the
            # notice asks it to end its side, which ends the reading
            write_end_notice(call.writer, e)
        raise
    finally:
        # The reader must not outlive the call (it reads the call's stream: pyarrow aborts the
        # process). It ends at once after the client's end or cancel, else at its next message;
        # the process's grace period bounds a draining stream whose client sends neither.
        reading.end()
    if reading.error is not None and not context.is_cancelled():
        with malformed_input(context):
            raise reading.error


def _answer_frames(
    call: ExchangeCall,
    request: PredictRequest,
    frames: queue.Queue[object],
    max_batch: int,
    reading: FrameReader,
) -> None:
    """Answer the frames in order until the client's side ends (or the call is cancelled);
    raises the error that ends the stream."""
    context, writer, seen = call.context, call.writer, call.seen
    cancelled = CancelPolling(context)
    out_layout = None
    while True:
        batch = take_batch(frames, max_batch, call.draining, reading)
        if batch is None:
            raise errors.ServerShuttingDownError(
                "the runtime is shutting down: the frames received were answered; "
                "send the rest again on a new stream"
            )
        if not batch:
            return
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
