"""Where a lockstep frame's time goes apart from the network: modelrunner's own work per call,
measured in the benchmark's process with nothing else running.

* client: ``client.predict`` with stand-ins for the control service and the Flight calls (they
  return a prepared answer at once), so what is left is the client's Python: input checks,
  layout, encoding and decoding of one frame;
* runtime: ``RuntimeService.predict`` on a warm ONNX identity pipeline, called directly: the
  runtime's work between receiving a frame and sending its output (input mapping, checks, plan,
  the model). Of that, the model's own forward (ONNX Runtime's ``Identity`` copies the frame)
  and the NaN check (one ``min()`` pass over the frame) are shown apart;
* one numpy copy of the frame, for scale (a received buffer that is misaligned costs one).

Figures are medians over repeats, in microseconds, for the same (cache-warm) frame each call.
The Flight transport itself is the echo ceiling of the timed rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..frames import FrameSize, make_frame
from ..modelrunner_server import IDENTITY_MIN_SIZE, IDENTITY_STEP, _identity_builder

REPEATS = 7


@dataclass(frozen=True)
class Overhead:
    size: str
    frame_bytes: int
    client_us: float
    runtime_us: float
    model_us: float
    nan_check_us: float
    copy_us: float

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def measure_overhead(workdir: Path, sizes: list[FrameSize], *, seconds: float) -> list[Overhead]:
    """Per-call costs for each frame size; ``seconds`` bounds each figure's measuring time."""
    from modelrunner.predict_request import PredictRequest
    from modelrunner.runtime_flight.service import RuntimeService
    from modelrunner.settings import Settings

    package = _identity_builder()(
        workdir / "overhead-identity", min_size=IDENTITY_MIN_SIZE, step=IDENTITY_STEP
    )
    service = RuntimeService(
        Settings(cache_dir=workdir / "overhead-cache", device="cpu"), lambda _id: package
    )
    try:
        rows = []
        for size in sizes:
            frame = make_frame(size.shape)
            request = PredictRequest(model_id="0" * 64, weight_format="onnx", inputs={"": frame})
            service.predict(request)
            with service.pool.use("0" * 64, "onnx") as warm:
                fast = warm.fast
            if fast is None:
                raise RuntimeError("the identity model should take the fast path")
            inputs = {fast.input_ids[0]: frame}
            rows.append(
                Overhead(
                    size=size.label,
                    frame_bytes=size.nbytes,
                    client_us=_per_call(_client_predict(frame), seconds),
                    runtime_us=_per_call(partial(service.predict, request), seconds),
                    model_us=_per_call(partial(fast.predict, inputs, nan_possible=False), seconds),
                    nan_check_us=_per_call(frame.min, seconds),
                    copy_us=_per_call(frame.copy, seconds),
                )
            )
        return rows
    finally:
        service.close()


def _per_call(call: Callable[[], Any], seconds: float) -> float:
    """Median microseconds per call over :data:`REPEATS` timed batches of calls."""
    call()
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < seconds / (REPEATS + 1) or n < 3:
        call()
        n += 1
    timings = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        for _ in range(n):
            call()
        timings.append((time.perf_counter() - t) / n)
    return statistics.median(timings) * 1e6


def _client_predict(frame: np.ndarray) -> Callable[[], object]:
    """``client.predict`` of ``frame`` whose control and Flight calls answer at once."""
    from modelrunner.client import ModelRunnerClient
    from modelrunner.runtime_client import Route, RuntimeClient
    from modelrunner.v1 import runtime_pb2
    from modelrunner.wire import SampleLayout, encode_sample

    dims = {"output": ("batch", "channel", "y", "x")}
    layout = SampleLayout.plan({"output": frame}, dims)
    (answer,) = encode_sample(layout, {"output": frame})
    metadata: dict[int, pa.Buffer] = {}
    route = Route("0" * 64, ("grpc://127.0.0.1:1",), "stand-in")

    def frame_metadata(frame: int) -> pa.Buffer:
        """FrameResult of the session's ``frame``-th answer (made once: not the client's work)."""
        buffer = metadata.get(frame)
        if buffer is None:
            buffer = metadata[frame] = pa.py_buffer(
                runtime_pb2.FrameResult(
                    frame=frame, weight_format="onnx", device="cpu"
                ).SerializeToString()
            )
        return buffer

    class Chunk:
        data = answer

        def __init__(self, app_metadata: pa.Buffer) -> None:
            self.app_metadata = app_metadata

    class Reader:
        """Answers every sample written on its exchange, in order, like a runtime's session."""

        schema = answer.schema

        def __init__(self) -> None:
            self.pending = 0
            self.frame = 0

        def read_chunk(self) -> Chunk:
            if not self.pending:
                raise StopIteration
            self.pending -= 1
            self.frame += 1
            return Chunk(frame_metadata(self.frame - 1))

        def cancel(self) -> None:
            pass

    class Writer:
        def __init__(self, reader: Reader) -> None:
            self.reader = reader

        def __enter__(self) -> Writer:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def begin(self, schema: pa.Schema, options: object = None) -> None:
            pass

        def write_batch(self, batch: pa.RecordBatch) -> None:
            self.reader.pending += 1

        def write_with_metadata(self, batch: pa.RecordBatch, metadata: object) -> None:
            self.reader.pending += 1

        def done_writing(self) -> None:
            pass

        def close(self) -> None:
            pass

    class Flight:
        def do_exchange(self, descriptor: object, options: object) -> tuple[Writer, Reader]:
            reader = Reader()
            return Writer(reader), reader

    class Control:
        def route(self, *args: object, **kwargs: object) -> Route:
            return route

        def kept_route(self, *args: object) -> Route:
            return route

        def close(self) -> None:
            pass

    runtimes = RuntimeClient()
    runtimes.connection = lambda uri: Flight()  # type: ignore[method-assign,assignment,return-value]
    client = ModelRunnerClient("127.0.0.1:1")
    client.close()
    client._control = Control()  # type: ignore[assignment]
    client._runtimes = runtimes
    client._closed = False
    return lambda: client.predict("stand-in", frame)
