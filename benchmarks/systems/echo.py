"""The ceiling: frames echoed by a bare Flight server in another process (``echo_server``).

Frames travel as modelrunner moves them (one ``arrow.fixed_shape_tensor`` column, one row per
frame, zero-copy on both sides, aligned reads) with plain pyarrow and nothing else:

* lockstep: one ``do_exchange`` kept open, each frame written and its echo read before the next
  is written, the call pattern of ``client.predict`` (whose calls in a row share one exchange, a
  session);
* stream: one ``do_exchange`` for all frames of a round, a writer thread keeping at most
  ``max_in_flight`` frames unanswered, the pattern of ``client.predict_stream``.
"""

from __future__ import annotations

import sys
import threading
import time
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from ..context import BenchContext
from ..frames import FrameSize, make_frame
from ..modelrunner_server import REPO_ROOT
from ..processes import ServerProcess, free_port
from ..rounds import ECHO, IDENTITY, LOCKSTEP, STREAM, Case

READ_OPTIONS = pa.ipc.IpcReadOptions(ensure_alignment=pa.ipc.Alignment.DataTypeSpecific)
DESCRIPTOR = flight.FlightDescriptor.for_command(b"echo")


def frame_batch(frame: np.ndarray) -> pa.RecordBatch:
    """One row, one ``fixed_shape_tensor`` column, wrapping the frame's buffer (no copy)."""
    column = pa.FixedShapeTensorArray.from_numpy_ndarray(frame.reshape((1, *frame.shape)))
    return pa.RecordBatch.from_arrays([column], names=["input"])


def batch_frame(batch: pa.RecordBatch) -> np.ndarray:
    """The frame a batch carries, as a view of the received buffer."""
    return batch.column(0).to_numpy_ndarray()[0]


def _options() -> flight.FlightCallOptions:
    return flight.FlightCallOptions(timeout=600, read_options=READ_OPTIONS)


def echo_once(client: flight.FlightClient, batch: pa.RecordBatch) -> np.ndarray:
    writer, reader = client.do_exchange(DESCRIPTOR, _options())
    with writer:
        writer.begin(batch.schema)
        writer.write_batch(batch)
        writer.done_writing()
        out = batch_frame(reader.read_chunk().data)
    return out


class EchoSession:
    """One exchange kept open for lockstep calls, opened on first use."""

    def __init__(self, client: flight.FlightClient, batch: pa.RecordBatch) -> None:
        self.client, self.batch = client, batch
        self._open: tuple[flight.FlightStreamWriter, flight.FlightStreamReader] | None = None

    def echo(self) -> np.ndarray:
        if self._open is None:
            writer, reader = self.client.do_exchange(DESCRIPTOR, _options())
            writer.begin(self.batch.schema)
            self._open = writer, reader
        writer, reader = self._open
        writer.write_batch(self.batch)
        return batch_frame(reader.read_chunk().data)

    def close(self) -> None:
        if self._open is not None:
            writer, _ = self._open
            self._open = None
            writer.done_writing()
            writer.close()


def lockstep(session: EchoSession, frames: int) -> float:
    start = time.perf_counter()
    for _ in range(frames):
        session.echo()
    return time.perf_counter() - start


def stream(
    client: flight.FlightClient, batch: pa.RecordBatch, frames: int, max_in_flight: int
) -> float:
    credits = threading.Semaphore(max_in_flight)
    failure: list[BaseException] = []
    start = time.perf_counter()
    writer, reader = client.do_exchange(DESCRIPTOR, _options())

    def upload() -> None:
        try:
            writer.begin(batch.schema)
            for _ in range(frames):
                credits.acquire()
                writer.write_batch(batch)
            writer.done_writing()
        except BaseException as e:  # noqa: BLE001 - reported by the reading side
            failure.append(e)
            reader.cancel()

    thread = threading.Thread(target=upload, name="echo-upload", daemon=True)
    thread.start()
    try:
        for _ in range(frames):
            batch_frame(reader.read_chunk().data)
            credits.release()
    finally:
        thread.join(timeout=60)
        writer.close()
    if failure:
        raise failure[0]
    return time.perf_counter() - start


def echo_cases(ctx: BenchContext, sizes: list[FrameSize]) -> list[Case]:
    port = free_port()
    server = ctx.stack.enter_context(
        ServerProcess(
            "echo-server",
            [sys.executable, "-m", "benchmarks.echo_server", "--port", str(port)],
            ctx.log_dir / "echo-server.log",
            cwd=REPO_ROOT,
        )
    )
    client = ctx.stack.enter_context(flight.connect(f"grpc://127.0.0.1:{port}"))
    server.wait_ready(lambda: client.wait_for_available(timeout=1) is None, timeout=30)
    in_flight = ctx.settings.max_in_flight
    cases = []
    for size in sizes:
        frame = make_frame(size.shape)
        batch = frame_batch(frame)
        session = EchoSession(client, batch)
        ctx.stack.callback(session.close)

        def check(frame: np.ndarray = frame, batch: pa.RecordBatch = batch) -> None:
            if not np.array_equal(echo_once(client, batch), frame):
                raise RuntimeError("the echo server changed the frame")

        cases.append(
            Case(
                ECHO,
                LOCKSTEP,
                IDENTITY,
                size.label,
                size.nbytes,
                call="one do_exchange kept open",
                run=partial(lockstep, session),
                check=check,
                min_frames=ctx.settings.lockstep_min_frames,
            )
        )
        cases.append(
            Case(
                ECHO,
                STREAM,
                IDENTITY,
                size.label,
                size.nbytes,
                call=f"one do_exchange, {in_flight} in flight",
                run=partial(stream, client, batch, max_in_flight=in_flight),
                min_frames=ctx.settings.stream_min_frames,
            )
        )
    return cases
