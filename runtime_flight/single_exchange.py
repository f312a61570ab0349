"""One sample on an exchange of its own: read it whole, predict it, write its outputs (whole,
or band by band as a large tiled prediction finishes its rows), with progress messages when
the command asks for them."""

from __future__ import annotations

from contextlib import closing

from modelrunner import types

from .exchange_calls import CancelPolling, ExchangeCall
from .frame_io import receive_sample, write_outputs, write_progress, write_streamed
from .outputs import StreamedOutputs


def serve_single(call: ExchangeCall) -> None:
    inputs, dims = receive_sample(call.context, call.reader, call.service.limits, call.receiving)
    cancelled = CancelPolling(call.context)
    writer = call.writer

    def report(progress: types.Progress) -> None:
        if call.report_progress and not cancelled():
            write_progress(writer, progress)

    outputs = call.service.predict(
        call.request.with_inputs(inputs, dims), progress=report, cancelled=cancelled
    )
    # a streamed prediction holds the input as long as it needs it; nothing else should
    del inputs
    if isinstance(outputs, StreamedOutputs):
        with closing(outputs):
            write_streamed(call.context, writer, outputs, call.batch_bytes)
    else:
        write_outputs(writer, None, outputs, frame=0, batch_bytes=call.batch_bytes)
