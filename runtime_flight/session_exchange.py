"""A session: lockstep predictions on one exchange, all in the handler's thread. Read a sample,
answer it, read the next, until the client finishes writing or cancels. A sample that fails is
answered with its error and the session goes on; a sample whose caller lost its rights ends the
session with that error. While it waits for its client's next sample a session holds an idle
slot of its token's ``max_exchanges_per_token``, not a working one, and no share of the runtime's
``max_receiving_bytes`` (it takes its sample's again when the next arrives: a runtime with no
room for it ends the session with RESOURCE_EXHAUSTED). Sessions opened before the
runtime retired them end before their next sample (the client sends it again on a new
exchange)."""

from __future__ import annotations

import logging
import time

from modelrunner import errors
from modelrunner.wire import SampleDecoder, SampleLayout

from .exchange_calls import CancelPolling, ExchangeCall, malformed_input
from .frame_io import (
    DimNames,
    Sample,
    aligned_sample,
    announced_layout,
    output_layout,
    write_error,
    write_frame,
)
from .memory_release import release_free_memory
from .outputs import StreamedOutputs, whole_outputs

logger = logging.getLogger(__name__)


def serve_session(call: ExchangeCall) -> None:
    context, reader, counters = call.context, call.reader, call.counters
    epoch = counters.session_epoch
    layout, dims = announced_layout(context, reader, call.service.limits, call.receiving)
    decoder = SampleDecoder(layout)
    out_layout: SampleLayout | None = None
    frame = 0
    rights, seen = call.rights, call.seen
    with counters.session():
        while True:
            if frame and not decoder.in_progress:
                call.receiving.release()  # between samples a session holds none
                if not rights.idle():
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
            call.receiving.hold_again()  # RESOURCE_EXHAUSTED, as for a new exchange
            with malformed_input(context):
                samples = decoder.feed(chunk.data)
            if layout.chunked:
                # as for a single sample: the batch is copied into the sample
                del chunk
                release_free_memory()
            for sample in samples:
                if counters.session_epoch != epoch:
                    logger.info("session ended before its frame %d", frame)
                    return
                call.check_rights_again()
                counters.busy(+1)
                try:
                    out_layout = _answer(call, out_layout, sample, dims, frame)
                finally:
                    counters.busy(-1)
                frame += 1


def _answer(
    call: ExchangeCall,
    layout: SampleLayout | None,
    sample: Sample,
    dims: DimNames,
    frame: int,
) -> SampleLayout | None:
    """Predict one sample of a session and write its outputs, or its error; returns the
    outputs' layout (the exchange's output schema, fixed by the first answered sample)."""
    context, writer, seen = call.context, call.writer, call.seen
    cancelled = CancelPolling(context)
    started = time.perf_counter()
    nbytes_in = sum(a.nbytes for a in sample.values())
    try:
        predicted = call.service.predict(
            call.request.with_inputs(aligned_sample(sample), dims), cancelled=cancelled
        )
        del sample
        outputs = (
            whole_outputs(predicted, cancelled)
            if isinstance(predicted, StreamedOutputs)
            else predicted
        )
        written = output_layout(
            layout, outputs, frame=frame, batch_bytes=call.batch_bytes, what="session"
        )
    except errors.ModelRunnerError as e:
        if context.is_cancelled():
            raise
        write_error(writer, frame, e)
        seen.frame(nbytes_in, None, 0.0, e)
        return layout
    except Exception as e:
        logger.exception("frame %d of a session failed", frame)
        write_error(
            writer, frame, errors.InternalError(f"prediction failed: {type(e).__name__}: {e}")
        )
        seen.frame(nbytes_in, None, 0.0)
        return layout
    write_frame(writer, written, outputs, frame=frame, first=layout is None)
    seen.frame(nbytes_in, outputs.arrays, time.perf_counter() - started)
    return written
