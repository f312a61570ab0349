"""The Flight handler of a streamed tiled prediction: memory near the input's size, outputs sent
as their bands finish, cancellation between bands.

The handler (``single_exchange.serve_single``) runs on a real server object and a real
service, fed by an in-memory reader and writing to an in-memory writer, so that ``tracemalloc``
sees every array the server side allocates (numpy reports its allocations to it) and nothing of
a client's.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from modelrunner import errors
from modelrunner.runtime_flight.server import RuntimeFlightServer
from modelrunner.runtime_flight.service import RuntimeService
from modelrunner.runtime_flight.single_exchange import serve_single
from modelrunner.settings import Settings
from modelrunner.v1 import runtime_pb2
from modelrunner.wire import SampleLayout, column_view, encode_sample
from tests.reference import Pipelines
from tests.runtime_flight.predicting import predict

Tiny = Callable[[str], Path]
MiB = 1024**2
BATCH_BYTES = 2 * MiB
"""Output record batches: small next to the 32-64 MiB inputs here, as 16 MiB ones are next to
the 256 MiB images the limit is meant for."""
BLOCKSIZE = 14
"""The halo model's tiles: 32 + 16 * 14 = 256 pixels."""


@dataclass
class _Chunk:
    data: pa.RecordBatch | None
    app_metadata: pa.Buffer | None = None


class _Reader:
    """The record batches a client sends, as Flight hands them to the handler."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.layout = SampleLayout.plan(arrays)
        self.schema = self.layout.schema()
        self._arrays = arrays

    def __iter__(self) -> Iterator[_Chunk]:
        for batch in encode_sample(self.layout, self._arrays):
            yield _Chunk(batch)


@dataclass
class _Writer:
    """Keeps what a client would check, never the outputs themselves."""

    on_batch: Callable[[], None] = lambda: None
    schema: pa.Schema | None = None
    batches: int = 0
    metadata: list[runtime_pb2.FrameResult] = field(default_factory=list)
    progress: list[tuple[int, int]] = field(default_factory=list)
    total: float = 0.0
    """Sum of the outputs' values (float64), to compare with the assembled prediction."""

    def begin(self, schema: pa.Schema, options: object = None) -> None:
        self.schema = schema

    def write_metadata(self, buffer: bytes) -> None:
        result = runtime_pb2.FrameResult.FromString(bytes(buffer))
        self.progress.append((result.progress.done, result.progress.total))

    def write_with_metadata(self, batch: pa.RecordBatch, metadata: pa.Buffer) -> None:
        assert self.schema is not None and batch.schema.equals(self.schema)
        self.metadata.append(runtime_pb2.FrameResult.FromString(metadata.to_pybytes()))
        for column in batch.columns:
            self.total += float(np.sum(column_view(column, 0), dtype=np.float64))
        self.batches += 1
        self.on_batch()


@dataclass
class _Context:
    cancelled: bool = False

    def is_cancelled(self) -> bool:
        return self.cancelled


@pytest.fixture
def flight_server(tiny: Tiny, tmp_path: Path) -> Iterator[RuntimeFlightServer]:
    """A runtime serving the halo model as ``halo``, streaming tiled predictions of any size."""
    package = tiny("halo")
    settings = Settings(cache_dir=tmp_path / "cache", device="cpu", stream_tiles_min_bytes=0)
    service = RuntimeService(settings, lambda model_id: package)
    server = RuntimeFlightServer("grpc://127.0.0.1:0", service, batch_bytes=BATCH_BYTES)
    try:
        service.load("halo", "pytorch_state_dict", "cpu")
        yield server
    finally:
        server.shutdown()
        service.close()


def _serve_one(
    server: RuntimeFlightServer, context: Any, command: Any, reader: Any, writer: Any
) -> None:
    serve_single(server.exchange_call(context, command, reader, writer))


def _command(**fields: object) -> runtime_pb2.PredictCommand:
    return runtime_pb2.PredictCommand(
        model_id="halo", weight_format="pytorch_state_dict", blocksize=BLOCKSIZE, **fields
    )


def _expected_total(pipelines: Pipelines, tiny: Tiny, image: np.ndarray) -> float:
    pipeline = pipelines.get(tiny("halo"), "pytorch_state_dict")
    out = predict(pipeline, {"raw": image}, blocksize=BLOCKSIZE)
    return float(np.sum(out["out"], dtype=np.float64))


@pytest.mark.parametrize("dtype", ["float32", "uint16"])
def test_server_memory_stays_within_one_and_a_half_inputs(
    flight_server: RuntimeFlightServer,
    pipelines: Pipelines,
    tiny: Tiny,
    dtype: str,
) -> None:
    """From the first received batch to the last sent one, the server side never holds more
    than 1.5x the input (the input itself included): no whole output, no full-size statistics
    temporaries. The uint16 image's float32 output is twice the input's size."""
    image = (np.random.default_rng(0).random((1, 1, 4096, 4096)) * 4000).astype(dtype)
    reader, writer = _Reader({"raw": image}), _Writer()
    tracemalloc.start()
    try:
        _serve_one(flight_server, _Context(), _command(), reader, writer)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 1.5 * image.nbytes, f"peak {peak / MiB:.1f} MiB for {image.nbytes / MiB} MiB"
    output = SampleLayout.from_schema(writer.schema)  # type: ignore[arg-type]
    assert output.tensors[0].shape == (1, 1, 4096, 4096)
    assert writer.batches == output.chunks > 1
    assert {(m.frame, m.weight_format, m.device) for m in writer.metadata} == {
        (0, "pytorch_state_dict", "cpu")
    }
    np.testing.assert_allclose(writer.total, _expected_total(pipelines, tiny, image), rtol=1e-5)


def test_outputs_leave_while_tiles_are_predicted_and_progress_is_reported(
    flight_server: RuntimeFlightServer,
) -> None:
    image = np.random.default_rng(1).random((1, 1, 1024, 1024), dtype=np.float32)
    writer = _Writer()
    events: list[str] = []
    writer.on_batch = lambda: events.append(f"batch after {len(writer.progress)} blocks")
    _serve_one(
        flight_server,
        _Context(),  # type: ignore[arg-type]
        _command(report_progress=True),
        _Reader({"raw": image}),  # type: ignore[arg-type]
        writer,  # type: ignore[arg-type]
    )
    total = writer.progress[-1][1]
    assert writer.progress == [(done, total) for done in range(1, total + 1)]
    assert total == 25  # 5 x 5 tiles of 248 inner pixels
    assert events[0] != f"batch after {total} blocks"  # the first batch left before the end
    assert writer.batches == 2  # 4 MiB of output in 2 MiB batches


def test_cancelling_between_bands_stops_and_returns_the_pipeline(
    flight_server: RuntimeFlightServer,
) -> None:
    image = np.random.default_rng(2).random((1, 1, 1024, 1024), dtype=np.float32)
    context = _Context()
    writer = _Writer()

    def cancel() -> None:
        context.cancelled = True

    writer.on_batch = cancel
    with pytest.raises(errors.CancelledError, match="cancelled"):
        _serve_one(
            flight_server,
            context,  # type: ignore[arg-type]
            _command(),
            _Reader({"raw": image}),  # type: ignore[arg-type]
            writer,  # type: ignore[arg-type]
        )
    assert writer.batches == 1
    (warm,) = flight_server.service.pool._warm.values()
    assert warm.users == 0 and not warm.lock.locked()
    again = _Writer()
    _serve_one(
        flight_server,
        _Context(),  # type: ignore[arg-type]
        _command(),
        _Reader({"raw": image}),  # type: ignore[arg-type]
        again,  # type: ignore[arg-type]
    )
    assert again.batches == 2
