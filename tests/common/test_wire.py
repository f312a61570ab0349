"""The tensor wire format: round trips, chunking, zero copy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from modelrunner.errors import InvalidTensorError
from modelrunner.wire import (
    DIM_NAMES_KEY,
    SHAPE_KEY,
    SampleDecoder,
    SampleLayout,
    encode_rows,
    encode_sample,
)


def _through_ipc(schema: pa.Schema, batches: list[pa.RecordBatch]) -> tuple[pa.Schema, list]:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for b in batches:
            writer.write_batch(b)
    reader = pa.ipc.open_stream(sink.getvalue())
    return reader.schema, list(reader)


def _round_trip(arrays: dict[str, np.ndarray], **plan: object) -> tuple[SampleLayout, dict]:
    layout = SampleLayout.plan(arrays, **plan)  # type: ignore[arg-type]
    schema, batches = _through_ipc(layout.schema(), list(encode_sample(layout, arrays)))
    received = SampleLayout.from_schema(schema)
    decoder = SampleDecoder(received)
    samples = [s for b in batches for s in decoder.feed(b)]
    assert len(samples) == 1
    assert not decoder.in_progress
    return received, samples[0]


@pytest.mark.parametrize(
    "dtype",
    [
        "float16",
        "float32",
        "float64",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint64",
        "bool",
    ],
)
def test_small_sample_round_trips_every_dtype(dtype: str) -> None:
    a = (np.random.default_rng(0).random((1, 2, 5, 7)) * 100).astype(dtype)
    layout, out = _round_trip({"raw": a}, dim_names={"raw": ("batch", "channel", "y", "x")})
    assert not layout.chunked
    assert layout.tensors[0].dim_names == ("batch", "channel", "y", "x")
    assert out["raw"].dtype == a.dtype
    np.testing.assert_array_equal(out["raw"], a)


def test_small_schema_is_a_plain_fixed_shape_tensor() -> None:
    a = np.zeros((1, 1, 4, 4), "float32")
    schema = SampleLayout.plan({"raw": a}, {"raw": ("b", "c", "y", "x")}).schema()
    field = schema.field("raw")
    assert isinstance(field.type, pa.FixedShapeTensorType)
    assert field.type.shape == [1, 1, 4, 4]
    assert field.type.dim_names == ["b", "c", "y", "x"]
    assert field.metadata is None


def test_large_multi_tensor_sample_is_chunked_and_reassembled() -> None:
    rng = np.random.default_rng(1)
    arrays = {
        "big": rng.random((1, 1, 300, 200)).astype("float32"),
        "other": rng.integers(0, 9, (2, 3, 50, 7)).astype("uint16"),
        "tiny": np.arange(3, dtype="int64"),
    }
    layout, out = _round_trip(arrays, batch_bytes=32 * 1024)
    assert layout.chunked and layout.chunks > 5
    for name, a in arrays.items():
        np.testing.assert_array_equal(out[name], a)


def test_chunked_schema_carries_full_shape_and_dim_names() -> None:
    a = np.zeros((1, 1, 64, 64), "float32")
    layout = SampleLayout.plan({"raw": a}, {"raw": ("b", "c", "y", "x")}, batch_bytes=4096)
    md = layout.schema().field("raw").metadata
    assert md[SHAPE_KEY] == b"[1, 1, 64, 64]"
    assert md[DIM_NAMES_KEY] == b'["b", "c", "y", "x"]'
    batches = list(encode_sample(layout, {"raw": a}))
    assert len(batches) == layout.chunks
    assert all(b.nbytes <= 4096 + 64 for b in batches)


def test_encoding_wraps_the_array_without_copying() -> None:
    a = np.random.default_rng(2).random((1, 1, 256, 256)).astype("float32")
    layout = SampleLayout.plan({"raw": a})
    (batch,) = encode_sample(layout, {"raw": a})
    values = batch.column(0).storage.values
    assert values.buffers()[1].address == a.ctypes.data


def test_chunks_of_a_large_array_are_views_except_the_padded_last() -> None:
    a = np.random.default_rng(3).random((1, 1, 100, 64)).astype("float32")
    layout = SampleLayout.plan({"raw": a}, batch_bytes=64 * 4 * 30)
    batches = list(encode_sample(layout, {"raw": a}))
    t = layout.tensors[0]
    row_bytes = t.lines_per_chunk * 64 * 4
    for i, b in enumerate(batches[:-1]):
        assert b.column(0).storage.values.buffers()[1].address == a.ctypes.data + i * row_bytes


def test_decoding_gives_views_of_the_received_buffer() -> None:
    a = np.random.default_rng(4).random((1, 1, 128, 128)).astype("float32")
    layout = SampleLayout.plan({"raw": a})
    schema, batches = _through_ipc(layout.schema(), list(encode_sample(layout, {"raw": a})))
    (out,) = SampleDecoder(SampleLayout.from_schema(schema)).feed(batches[0])
    buffer = batches[0].column(0).storage.values.buffers()[1]
    assert out["raw"].ctypes.data == buffer.address
    assert not out["raw"].flags.writeable


def test_rows_carry_several_samples() -> None:
    frames = [{"x": np.full((2, 3), i, "float32")} for i in range(4)]
    layout = SampleLayout.plan(frames[0])
    batch = encode_rows(layout, frames)
    assert batch.num_rows == 4
    out = SampleDecoder(layout).feed(batch)
    assert [int(s["x"][0, 0]) for s in out] == [0, 1, 2, 3]


def test_unsupported_dtype_is_refused_with_its_name() -> None:
    with pytest.raises(InvalidTensorError, match="complex128 cannot be sent"):
        SampleLayout.plan({"x": np.zeros(3, "complex128")})


def test_scalar_and_wrong_dim_names_are_refused() -> None:
    with pytest.raises(InvalidTensorError, match="is a scalar"):
        SampleLayout.plan({"x": np.float32(1.0).reshape(())})
    with pytest.raises(InvalidTensorError, match="has 2 axes but 3 dim names"):
        SampleLayout.plan({"x": np.zeros((2, 2))}, {"x": ("a", "b", "c")})


def test_non_tensor_column_is_refused() -> None:
    schema = pa.schema([pa.field("x", pa.float32())])
    with pytest.raises(InvalidTensorError, match=r"must be an arrow\.fixed_shape_tensor"):
        SampleLayout.from_schema(schema)
