"""Batches written with ``write_aligned`` reach a Flight receiver with every tensor on a 16-byte
boundary (no copy needed to use them), and their metadata still parses as the FrameResult it
was."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from modelrunner.body_alignment import ALIGNMENT, write_aligned
from modelrunner.v1 import runtime_pb2
from modelrunner.wire import WRITE_OPTIONS, SampleLayout, encode_sample


class _AlignmentProbe(flight.FlightServerBase):  # type: ignore[misc]
    """Answers each batch with its tensors' addresses modulo the alignment and its metadata."""

    def do_exchange(self, context, descriptor, reader, writer):  # type: ignore[no-untyped-def]
        writer.begin(pa.schema([("misalignment", pa.int64()), ("metadata", pa.binary())]))
        for chunk in reader:
            worst = max(
                column.storage.values.buffers()[1].address % ALIGNMENT
                for column in chunk.data.columns
            )
            metadata = b"" if chunk.app_metadata is None else chunk.app_metadata.to_pybytes()
            writer.write_batch(
                pa.record_batch(
                    [pa.array([worst]), pa.array([metadata], pa.binary())],
                    names=["misalignment", "metadata"],
                )
            )


@pytest.fixture(scope="module")
def probe() -> Iterator[flight.FlightClient]:
    server = _AlignmentProbe("grpc://127.0.0.1:0")
    client = flight.connect(f"grpc://127.0.0.1:{server.port}")
    yield client
    client.close()
    server.shutdown()


@pytest.mark.parametrize("side", [256, 700, 1024, 2048])
@pytest.mark.parametrize("tensors", [1, 2])
def test_tensors_arrive_aligned(probe: flight.FlightClient, side: int, tensors: int) -> None:
    arrays = {"a": np.ones((1, 1, side, side), np.float32)}
    if tensors == 2:
        arrays["b"] = np.ones((1, 3, side // 2, side + 5), np.float64)
    layout = SampleLayout.plan(arrays, {k: ("batch", "channel", "y", "x") for k in arrays})
    frame = runtime_pb2.FrameResult(frame=7, weight_format="onnx", device="cpu")
    writer, reader = probe.do_exchange(flight.FlightDescriptor.for_command(b"probe"))
    with writer:
        writer.begin(layout.schema(), options=WRITE_OPTIONS)
        for metadata in (None, frame.SerializeToString()):
            for batch in encode_sample(layout, arrays):
                write_aligned(writer, batch, metadata)
                answer = reader.read_chunk().data
                assert answer.column(0)[0].as_py() == 0
                received = runtime_pb2.FrameResult()
                received.ParseFromString(answer.column(1)[0].as_py())
                received.ClearField("padding")
                assert received == (frame if metadata else runtime_pb2.FrameResult())
        writer.done_writing()
