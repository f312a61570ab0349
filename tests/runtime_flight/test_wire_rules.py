"""The rules of docs/wire-format.md sections 2 and 2.4, one test each, through Flight messages
built by hand from ``protos/arrow/flight/Flight.proto`` (as a client in another language builds
them) against the session's runtime. Where the Python client gives the reference result, the
hand-built exchange must give the same."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pytest
from bioimageio.spec.model import v0_5

from modelrunner.client import ModelInfo, ModelRunnerClient
from modelrunner.runtime_flight.input_mapping import map_inputs
from modelrunner.runtime_flight.server import RuntimeFlightServer
from modelrunner.v1 import models_pb2, runtime_pb2
from tests.compiled_protos import FLIGHT, CompiledProto, compile_proto
from tests.runtime_flight.hand_built import Answer, decode, exchange_messages

EXTENSION_NAME = b"ARROW:extension:name"
EXTENSION_METADATA = b"ARROW:extension:metadata"
IMAGE = np.arange(48, dtype=np.float32).reshape(6, 8)
"""A y,x image of distinct values, so a wrong axis order cannot give the right answer."""
MODEL_DIMS = ["batch", "channel", "y", "x"]


@pytest.fixture(scope="module")
def flight(tmp_path_factory: pytest.TempPathFactory) -> CompiledProto:
    return compile_proto(FLIGHT, tmp_path_factory.mktemp("flight-proto"))


@pytest.fixture
def channel(runtime: RuntimeFlightServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        yield channel


def tensor_field(
    name: str,
    value_type: pa.DataType,
    shape: Sequence[int],
    extension_metadata: str,
    metadata: dict[bytes, bytes] | None = None,
) -> pa.Field:
    """A fixed-shape tensor column declared by hand: FixedSizeList storage and the two
    extension keys, without ``pa.fixed_shape_tensor``."""
    return pa.field(
        name,
        pa.list_(value_type, math.prod(shape)),
        nullable=False,
        metadata={
            EXTENSION_NAME: b"arrow.fixed_shape_tensor",
            EXTENSION_METADATA: extension_metadata.encode(),
            **(metadata or {}),
        },
    )


def one_row(schema: pa.Schema, arrays: Sequence[np.ndarray]) -> pa.RecordBatch:
    """A record batch of one row: each array's values, in C order, as its column's storage."""
    columns = [
        pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(a).ravel()), a.size)
        for a in arrays
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def exchange(
    flight: CompiledProto,
    channel: grpc.Channel,
    model_id: str,
    schema: pa.Schema,
    batches: Sequence[pa.RecordBatch],
    messages: list[Any] | None = None,
) -> Answer:
    stub = flight.stub(channel, "FlightService")
    command = runtime_pb2.PredictCommand(model_id=model_id).SerializeToString()
    if messages is None:
        messages = exchange_messages(flight, command, schema, batches)
    return decode(list(stub["DoExchange"](iter(messages), timeout=60)))


def refusal(
    flight: CompiledProto,
    channel: grpc.Channel,
    model_id: str,
    schema: pa.Schema,
    batches: Sequence[pa.RecordBatch],
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        exchange(flight, channel, model_id, schema, batches)
    return info.value


def output(answer: Answer) -> np.ndarray:
    (batch,) = answer.batches
    return batch.column(0).to_numpy_ndarray()[0]


def detail(error: grpc.RpcError) -> models_pb2.ErrorDetail:
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    return models_pb2.ErrorDetail.FromString(trailers["modelrunner-error-bin"])


def compact(**fields: Any) -> str:
    """The extension metadata as pyarrow writes it: no spaces."""
    return json.dumps(fields, separators=(",", ":"))


# -- 2.4: what pyarrow writes, and a field built by hand ------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "written"),
    [
        ({"dim_names": MODEL_DIMS}, '{"shape":[1,1,6,8],"dim_names":["batch","channel","y","x"]}'),
        ({}, '{"shape":[1,1,6,8]}'),
        (
            {"dim_names": MODEL_DIMS, "permutation": [0, 1, 3, 2]},
            '{"shape":[1,1,6,8],"permutation":[0,1,3,2],"dim_names":["batch","channel","y","x"]}',
        ),
    ],
    ids=["dim-names", "no-dim-names", "permutation"],
)
def test_pyarrow_writes_the_extension_metadata_as_compact_json(
    kwargs: dict[str, Any], written: str
) -> None:
    field = pa.field("input", pa.fixed_shape_tensor(pa.float32(), [1, 1, 6, 8], **kwargs))
    header = pa.schema([field]).serialize().to_pybytes()
    for key, value in (
        (EXTENSION_NAME, b"arrow.fixed_shape_tensor"),
        (EXTENSION_METADATA, written.encode()),
    ):
        # a flatbuffer string: its length (uint32), the bytes, a NUL
        assert len(value).to_bytes(4, "little") + value + b"\0" in header
        assert key in header


def test_the_runtimes_outputs_carry_the_same_compact_metadata(
    flight: CompiledProto, channel: grpc.Channel, identity: ModelInfo
) -> None:
    schema = pa.schema(
        [tensor_field("input", pa.float32(), [1, 1, 6, 8], compact(shape=[1, 1, 6, 8]))]
    )
    stub = flight.stub(channel, "FlightService")
    command = runtime_pb2.PredictCommand(model_id=identity.id).SerializeToString()
    messages = exchange_messages(flight, command, schema, [one_row(schema, [IMAGE])])
    first, *_ = list(stub["DoExchange"](iter(messages), timeout=60))
    assert b'{"shape":[1,1,6,8],"dim_names":["batch","channel","y","x"]}' in first.data_header
    assert not first.data_body and not first.app_metadata  # the Schema comes first, alone


@pytest.mark.parametrize(
    "extension_metadata",
    [
        compact(shape=[1, 1, 6, 8], dim_names=MODEL_DIMS),
        '{ "shape": [1, 1, 6, 8], "dim_names": ["batch", "channel", "y", "x"] }',
        '{"dim_names": ["batch", "channel", "y", "x"], "shape": [1, 1, 6, 8]}',
        compact(shape=[1, 1, 6, 8]),
    ],
    ids=["compact", "spaced", "keys-reordered", "no-dim-names"],
)
def test_a_hand_built_tensor_field_gives_the_python_clients_result(
    flight: CompiledProto,
    channel: grpc.Channel,
    client: ModelRunnerClient,
    identity: ModelInfo,
    extension_metadata: str,
) -> None:
    schema = pa.schema([tensor_field("input", pa.float32(), [1, 1, 6, 8], extension_metadata)])
    answer = exchange(flight, channel, identity.id, schema, [one_row(schema, [IMAGE])])
    expected = client.predict(identity.id, IMAGE[None, None])["output"]
    np.testing.assert_array_equal(output(answer), expected)
    (batch,) = answer.batches
    assert batch.schema.field("output").type.dim_names == MODEL_DIMS
    frame = runtime_pb2.FrameResult.FromString(answer.metadata[-1])
    assert (frame.frame, frame.weight_format) == (0, "onnx")


@pytest.mark.parametrize(
    ("list_size", "extension_metadata", "message"),
    [
        (
            47,
            compact(shape=[1, 1, 6, 8]),
            "Product of shape dimensions (48) does not match FixedSizeList size (47)",
        ),
        (
            48,
            "{not json",
            "Invalid serialized JSON data: TAPE_ERROR: The JSON document has an improper "
            "structure: missing or superfluous commas, braces, missing keys, etc.  This is a "
            "fatal and unrecoverable error.",
        ),
    ],
    ids=["list-size", "json"],
)
def test_an_extension_pyarrow_cannot_read_is_refused_by_pyarrow_without_our_trailer(
    flight: CompiledProto,
    channel: grpc.Channel,
    identity: ModelInfo,
    list_size: int,
    extension_metadata: str,
    message: str,
) -> None:
    field = pa.field(
        "input",
        pa.list_(pa.float32(), list_size),
        metadata={
            EXTENSION_NAME: b"arrow.fixed_shape_tensor",
            EXTENSION_METADATA: extension_metadata.encode(),
        },
    )
    schema = pa.schema([field])
    values = pa.array(IMAGE.ravel()[:list_size])
    batch = pa.RecordBatch.from_arrays(
        [pa.FixedSizeListArray.from_arrays(values, list_size)], schema=schema
    )
    error = refusal(flight, channel, identity.id, schema, [batch])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert error.details() == message  # type: ignore[attr-defined]
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    assert "modelrunner-error-bin" not in trailers


def test_a_fixed_size_list_without_the_extension_keys_is_refused(
    flight: CompiledProto, channel: grpc.Channel, identity: ModelInfo
) -> None:
    schema = pa.schema([pa.field("input", pa.list_(pa.float32(), 48))])
    error = refusal(flight, channel, identity.id, schema, [one_row(schema, [IMAGE])])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert detail(error).message == (
        "column 'input' has type fixed_size_list<item: float>[48]; every column must be an "
        "arrow.fixed_shape_tensor (see docs/wire-format.md)"
    )


def test_the_schema_may_come_in_the_message_after_the_descriptor(
    flight: CompiledProto, channel: grpc.Channel, identity: ModelInfo
) -> None:
    schema = pa.schema([tensor_field("input", pa.float32(), [6, 8], compact(shape=[6, 8]))])
    command = runtime_pb2.PredictCommand(model_id=identity.id).SerializeToString()
    first, batch = exchange_messages(flight, command, schema, [one_row(schema, [IMAGE])])
    data = flight.message("FlightData")
    alone = [data(flight_descriptor=first.flight_descriptor), data(data_header=first.data_header)]
    answer = exchange(flight, channel, identity.id, schema, [], messages=[*alone, batch])
    np.testing.assert_array_equal(output(answer), IMAGE[None, None])


def test_only_the_first_messages_descriptor_counts_and_input_app_metadata_is_ignored(
    flight: CompiledProto, channel: grpc.Channel, identity: ModelInfo
) -> None:
    schema = pa.schema([tensor_field("input", pa.float32(), [6, 8], compact(shape=[6, 8]))])
    command = runtime_pb2.PredictCommand(model_id=identity.id).SerializeToString()
    first, batch = exchange_messages(flight, command, schema, [one_row(schema, [IMAGE])])
    batch.flight_descriptor.type = first.flight_descriptor.type
    batch.flight_descriptor.cmd = b"\x0a\x05ab"  # not even a PredictCommand
    batch.app_metadata = b"anything at all"
    answer = exchange(flight, channel, identity.id, schema, [], messages=[first, batch])
    np.testing.assert_array_equal(output(answer), IMAGE[None, None])


# -- 2: how inputs are mapped to the model's axes ------------------------------------------------


def _named(
    flight: CompiledProto,
    channel: grpc.Channel,
    model_id: str,
    array: np.ndarray,
    dim_names: Sequence[str] | None,
    value_type: pa.DataType | None = None,
    metadata: dict[bytes, bytes] | None = None,
    name: str = "input",
) -> Answer:
    fields: dict[str, Any] = {"shape": list(array.shape)}
    if dim_names is not None:
        fields["dim_names"] = list(dim_names)
    value_type = value_type or pa.from_numpy_dtype(array.dtype)
    schema = pa.schema([tensor_field(name, value_type, array.shape, compact(**fields), metadata)])
    return exchange(flight, channel, model_id, schema, [one_row(schema, [array])])


@pytest.mark.parametrize("dtype", ["uint8", "int16", "int64", "uint64", "float64"])
def test_an_input_of_another_dtype_is_cast_to_the_models(
    flight: CompiledProto, channel: grpc.Channel, identity: ModelInfo, dtype: str
) -> None:
    answer = _named(flight, channel, identity.id, IMAGE.astype(dtype), ["y", "x"])
    out = output(answer)
    assert out.dtype == np.float32  # the model's input (and output) type
    np.testing.assert_array_equal(out, IMAGE[None, None])


def test_a_boolean_input_travels_as_uint8_marked_bool(
    flight: CompiledProto, channel: grpc.Channel, identity: ModelInfo
) -> None:
    mask = (IMAGE % 3 == 0).astype(np.uint8)
    answer = _named(
        flight, channel, identity.id, mask, ["y", "x"], metadata={b"modelrunner.dtype": b"bool"}
    )
    np.testing.assert_array_equal(output(answer), mask[None, None].astype(np.float32))


def test_dim_names_in_another_order_are_transposed_to_the_models(
    flight: CompiledProto, channel: grpc.Channel, identity: ModelInfo
) -> None:
    sent = np.ascontiguousarray(IMAGE[None, None].transpose(3, 2, 1, 0))  # x, y, channel, batch
    answer = _named(flight, channel, identity.id, sent, ["x", "y", "channel", "batch"])
    np.testing.assert_array_equal(output(answer), IMAGE[None, None])
    (batch,) = answer.batches
    assert batch.schema.field("output").type.dim_names == MODEL_DIMS


def test_the_extensions_permutation_is_not_read(
    flight: CompiledProto, channel: grpc.Channel, identity: ModelInfo
) -> None:
    """The values are taken in C order of ``shape``, named by ``dim_names``, as if no
    permutation had been sent."""
    answer = _named(flight, channel, identity.id, IMAGE, None)
    schema = pa.schema(
        [
            tensor_field(
                "input",
                pa.float32(),
                [6, 8],
                compact(shape=[6, 8], permutation=[1, 0], dim_names=["y", "x"]),
            )
        ]
    )
    permuted = exchange(flight, channel, identity.id, schema, [one_row(schema, [IMAGE])])
    np.testing.assert_array_equal(output(permuted), output(answer))
    np.testing.assert_array_equal(output(permuted), IMAGE[None, None])


@pytest.mark.parametrize("names", [["b", "c", "y", "x"], ["batch", "c", "y", "x"]])
def test_dim_names_may_use_the_aliases_b_and_c(
    flight: CompiledProto,
    channel: grpc.Channel,
    identity: ModelInfo,
    names: list[str],
) -> None:
    answer = _named(flight, channel, identity.id, IMAGE[None, None], names)
    np.testing.assert_array_equal(output(answer), IMAGE[None, None])


def test_dim_names_may_use_the_aliases_t_and_i() -> None:
    """No tiny model has time or index axes: the mapping is checked on a tensor description."""
    axes: list[v0_5.InputAxis] = [
        v0_5.BatchAxis(),
        v0_5.TimeInputAxis(size=v0_5.ParameterizedSize(min=1, step=1)),
        v0_5.IndexInputAxis(size=3),
        v0_5.ChannelAxis(channel_names=[v0_5.Identifier("c0")]),
    ]
    tensor = v0_5.InputTensorDescr.model_construct(id=v0_5.TensorId("input"), axes=axes)
    model = SimpleNamespace(inputs=[tensor])
    values = np.arange(15, dtype=np.float32).reshape(3, 5)
    mapped = map_inputs(model, {"input": values}, {"input": ("i", "t")})  # type: ignore[arg-type]
    np.testing.assert_array_equal(mapped[v0_5.TensorId("input")], values.T[None, :, :, None])


def test_named_axes_the_model_has_but_the_input_lacks_are_added_as_singletons(
    flight: CompiledProto, channel: grpc.Channel, identity: ModelInfo
) -> None:
    answer = _named(flight, channel, identity.id, IMAGE, ["y", "x"])
    np.testing.assert_array_equal(output(answer), IMAGE[None, None])


def test_a_named_axis_the_model_lacks_is_refused_even_of_size_1(
    flight: CompiledProto, channel: grpc.Channel, identity: ModelInfo
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _named(flight, channel, identity.id, IMAGE[None], ["z", "y", "x"])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert detail(info.value).message == (
        "input 'input' has an axis 'z' that the model does not have; its axes are "
        "(batch, channel, y, x)"
    )


def test_without_dim_names_an_extra_singleton_axis_is_dropped(
    flight: CompiledProto, channel: grpc.Channel, identity: ModelInfo
) -> None:
    answer = _named(flight, channel, identity.id, IMAGE.reshape(1, 1, 1, 6, 8), None)
    np.testing.assert_array_equal(output(answer), IMAGE[None, None])


def test_without_dim_names_the_first_singleton_axes_are_dropped_not_the_last(
    flight: CompiledProto, channel: grpc.Channel, identity: ModelInfo
) -> None:
    """(1, 1, 6, 8, 1) loses its first axis, not its last: (1, 6, 8, 1) has 6 channels."""
    with pytest.raises(grpc.RpcError) as info:
        _named(flight, channel, identity.id, IMAGE.reshape(1, 1, 6, 8, 1), None)
    assert detail(info.value).message == (
        "input 'input' has 6 channel(s) on axis 'channel', the model expects 1 (c0)"
    )


def test_without_dim_names_a_lower_rank_gets_singletons_in_axis_order(
    flight: CompiledProto, channel: grpc.Channel, identity: ModelInfo
) -> None:
    answer = _named(flight, channel, identity.id, IMAGE, None)
    np.testing.assert_array_equal(output(answer), IMAGE[None, None])


def test_a_vector_is_reported_in_the_shape_it_was_sent_in(
    flight: CompiledProto, channel: grpc.Channel, nuclei: ModelInfo
) -> None:
    """The issue's report: 262144 values were refused as "shape (1, 1, 262144)"."""
    with pytest.raises(grpc.RpcError) as info:
        _named(flight, channel, nuclei.id, np.zeros(262144, np.float32), None, name="raw")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    error = detail(info.value)
    assert error.message == (
        "input 'raw' has shape (262144,), which cannot be mapped to the model's axes "
        "(batch, channel, y, x): pass dim names, or an array with 4 axes (or fewer, leaving "
        "out singleton axes)"
    )
    assert error.details["got"] == "1 axes (262144,)"
