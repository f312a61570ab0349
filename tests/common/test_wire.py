"""The tensor wire format: round trips, chunking, zero copy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyarrow as pa
import pytest

from modelrunner.errors import InvalidTensorError
from modelrunner.wire import (
    CHUNK_BYTES,
    DEFAULT_BATCH_BYTES,
    DIM_NAMES_KEY,
    SHAPE_KEY,
    ArraySpec,
    BandEncoder,
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


# -- planning from shapes, encoding bands --------------------------------------------------------


def _specs(arrays: dict[str, np.ndarray]) -> dict[str, ArraySpec]:
    return {n: ArraySpec(a.shape, a.dtype) for n, a in arrays.items()}


@pytest.mark.parametrize("batch_bytes", [1 << 30, 32 * 1024, 4096, 100])
def test_planning_from_shapes_equals_planning_from_arrays(batch_bytes: int) -> None:
    arrays = {
        "big": np.zeros((1, 1, 300, 200), "float32"),
        "other": np.zeros((2, 3, 50, 7), "uint16"),
        "flag": np.zeros((5,), "bool"),
    }
    dims = {"big": ("b", "c", "y", "x")}
    assert SampleLayout.plan_shapes(
        _specs(arrays), dims, batch_bytes=batch_bytes
    ) == SampleLayout.plan(arrays, dims, batch_bytes=batch_bytes)


def test_samples_up_to_the_batch_size_travel_whole_larger_ones_in_small_chunks() -> None:
    side = 2048  # 16 MiB of float32
    whole = SampleLayout.plan_shapes({"raw": ArraySpec((1, 1, side, side), np.dtype("float32"))})
    assert whole.nbytes == DEFAULT_BATCH_BYTES and not whole.chunked
    large = SampleLayout.plan_shapes(
        {"raw": ArraySpec((1, 1, 2 * side, 2 * side), np.dtype("float32"))}
    )
    assert large.chunks == large.nbytes // CHUNK_BYTES == 16
    (t,) = large.tensors
    assert t.lines_per_chunk * math.prod(t.line_shape) * 4 == CHUNK_BYTES


def test_planning_from_shapes_refuses_what_planning_arrays_refuses() -> None:
    with pytest.raises(InvalidTensorError, match="is a scalar"):
        SampleLayout.plan_shapes({"x": ArraySpec((), np.dtype("float32"))})
    with pytest.raises(InvalidTensorError, match="complex128 cannot be sent"):
        SampleLayout.plan_shapes({"x": ArraySpec((3,), np.dtype("complex128"))})
    with pytest.raises(InvalidTensorError, match="no tensors given"):
        SampleLayout.plan_shapes({})


def _bands_of(a: np.ndarray, fractions: list[float]) -> list[np.ndarray]:
    """``a`` cut into bands of rows of its first non-singleton axis, at ``fractions`` of it."""
    axis = next(i for i, s in enumerate(a.shape) if s > 1)
    edges = [0, *(int(f * a.shape[axis]) for f in fractions), a.shape[axis]]
    return [a[(slice(None),) * axis + (slice(lo, hi),)] for lo, hi in itertools.pairwise(edges)]


def _encode_in_bands(
    layout: SampleLayout, arrays: dict[str, np.ndarray], fractions: list[float]
) -> list[pa.RecordBatch]:
    encoder = BandEncoder(layout)
    batches: list[pa.RecordBatch] = []
    bands = {n: _bands_of(a, fractions) for n, a in arrays.items()}
    for step in range(len(fractions) + 1):
        assert not encoder.done
        batches += encoder.add({n: b[step] for n, b in bands.items()})
    assert encoder.done
    return batches


@pytest.mark.parametrize("batch_bytes", [1 << 30, 32 * 1024, 5000, 300])
@pytest.mark.parametrize(
    "fractions", [[], [0.5], [0.1, 0.11, 0.5, 0.77], [i / 37 for i in range(1, 37)]]
)
def test_bands_encode_to_the_batches_of_the_whole_sample(
    batch_bytes: int, fractions: list[float]
) -> None:
    rng = np.random.default_rng(5)
    arrays = {
        "probability": rng.random((1, 1, 300, 130)).astype("float32"),
        "mask": rng.random((1, 150, 65)) > 0.5,
        "labels": rng.integers(0, 1000, (1, 1, 1, 300, 13)).astype("uint16"),
    }
    layout = SampleLayout.plan(arrays, batch_bytes=batch_bytes)
    expected = list(encode_sample(layout, arrays))
    got = _encode_in_bands(layout, arrays, fractions)
    assert len(got) == len(expected) == layout.chunks
    for g, e in zip(got, expected, strict=True):
        assert g.equals(e)
    schema, received = _through_ipc(layout.schema(), got)
    decoder = SampleDecoder(SampleLayout.from_schema(schema))
    (out,) = [s for b in received for s in decoder.feed(b)]
    for name, a in arrays.items():
        np.testing.assert_array_equal(out[name], a)


def test_a_chunk_inside_one_band_is_a_view_of_it() -> None:
    a = np.random.default_rng(6).random((1, 1, 100, 64)).astype("float32")
    layout = SampleLayout.plan({"raw": a}, batch_bytes=64 * 4 * 10)
    lines = layout.tensors[0].lines_per_chunk
    encoder = BandEncoder(layout)
    band = a[:, :, : 3 * lines + 1]
    batches = encoder.add({"raw": band})
    assert len(batches) == 3
    for i, b in enumerate(batches):
        address = b.column(0).storage.values.buffers()[1].address
        assert address == a.ctypes.data + i * lines * 64 * 4
    assert not encoder.done


def test_band_encoder_refuses_bands_that_do_not_fit() -> None:
    layout = SampleLayout.plan({"raw": np.zeros((4, 5), "float32")})
    encoder = BandEncoder(layout)
    with pytest.raises(ValueError, match="a band of float64 for a tensor of float32"):
        encoder.add({"raw": np.zeros((1, 5))})
    with pytest.raises(ValueError, match="'other' is not in the layout"):
        encoder.add({"other": np.zeros((1, 5), "float32")})
    encoder.add({"raw": np.zeros((3, 5), "float32")})
    with pytest.raises(ValueError, match="10 more elements do not fit its shape"):
        encoder.add({"raw": np.zeros((2, 5), "float32")})


def test_layouts_are_reused_for_the_same_arrays_and_schemas() -> None:
    a = np.zeros((1, 1, 32, 32), "float32")
    dims = {"raw": ("b", "c", "y", "x")}
    layout = SampleLayout.plan({"raw": a}, dims)
    assert SampleLayout.plan({"raw": np.ones_like(a)}, dims) is layout
    assert layout.schema() is layout.schema()
    assert SampleLayout.from_schema(layout.schema()) is SampleLayout.from_schema(layout.schema())
    # anything that changes the layout finds another one
    assert SampleLayout.plan({"raw": a}, {"raw": ("b", "c", "x", "y")}) != layout
    assert SampleLayout.plan({"raw": a.astype("float64")}, dims) != layout
    assert SampleLayout.plan({"raw": a}, dims, batch_bytes=1024).chunked


def test_received_layouts_differ_when_only_the_chunked_full_shape_differs() -> None:
    """Arrow compares schemas without field metadata; the full shape of a chunked tensor lives
    there, so reusing received layouts must look at the exact schema."""
    small = np.zeros((3, 64, 64), "float32")
    large = np.zeros((4, 64, 64), "float32")
    a = SampleLayout.plan({"t": small}, batch_bytes=16384)
    b = SampleLayout.plan({"t": large}, batch_bytes=16384)
    assert a.schema().equals(b.schema())  # same chunk type: only the metadata tells them apart
    assert SampleLayout.from_schema(a.schema()).tensors[0].shape == (3, 64, 64)
    assert SampleLayout.from_schema(b.schema()).tensors[0].shape == (4, 64, 64)
