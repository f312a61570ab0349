"""What a gRPC client without an Arrow library sees when the runtime refuses a call: the status
code, the message and every trailer pyarrow's Flight server sends, through a stub built from
``protos/arrow/flight/Flight.proto`` alone (docs/wire-format.md section 5).

pyarrow gives a call the status of the exception a handler raises; only ``ArrowInvalid``
(INVALID_ARGUMENT) and ``ArrowKeyError`` (NOT_FOUND) among Arrow's exceptions have a code of
their own, and only Flight's own error types carry ``extra_info``. So each kind of error
arrives in one of three shapes, each pinned here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from modelrunner.client import ModelInfo
from modelrunner.runtime_flight.server import RuntimeFlightServer
from modelrunner.v1 import models_pb2, runtime_pb2
from modelrunner.wire import SampleLayout, encode_sample
from tests.compiled_protos import FLIGHT, CompiledProto, compile_proto
from tests.conftest import Secured
from tests.runtime_flight.hand_built import exchange_messages

ERROR_TRAILER = "modelrunner-error-bin"
TRACEBACK = "Python exception: Traceback (most recent call last):\n"
DIMS = ("batch", "channel", "y", "x")


@pytest.fixture(scope="module")
def flight(tmp_path_factory: pytest.TempPathFactory) -> CompiledProto:
    return compile_proto(FLIGHT, tmp_path_factory.mktemp("flight-proto"))


@pytest.fixture
def channel(runtime: RuntimeFlightServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        yield channel


def _refusal(
    flight: CompiledProto,
    channel: grpc.Channel,
    command: bytes,
    image: np.ndarray,
    dim_names: tuple[str, ...] = (),
) -> grpc.RpcError:
    """The error of a DoExchange of one sample (``image`` as the input ``input``)."""
    stub = flight.stub(channel, "FlightService")
    arrays = {"input": image}
    layout = SampleLayout.plan(arrays, {"input": dim_names} if dim_names else None)
    messages = exchange_messages(flight, command, layout.schema(), encode_sample(layout, arrays))
    with pytest.raises(grpc.RpcError) as info:
        list(stub["DoExchange"](iter(messages), timeout=60))
    return info.value


def _trailers(error: grpc.RpcError) -> dict[str, Any]:
    return dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]


def _detail(error: grpc.RpcError) -> models_pb2.ErrorDetail:
    return models_pb2.ErrorDetail.FromString(_trailers(error)[ERROR_TRAILER])


def _status_detail(error: grpc.RpcError, code: grpc.StatusCode) -> models_pb2.ErrorDetail:
    """The ErrorDetail inside grpc-status-details-bin, read as any gRPC library reads it: a
    google.rpc.Status (built here from its field numbers) with the error's real code."""
    status = _google_rpc_status().FromString(_trailers(error)["grpc-status-details-bin"])
    assert status.code == code.value[0]
    (detail,) = status.details
    assert detail.type_url == "type.googleapis.com/modelrunner.v1.ErrorDetail"
    parsed = models_pb2.ErrorDetail.FromString(detail.value)
    assert status.message == parsed.message
    return parsed


def _command(model_id: str, **fields: Any) -> bytes:
    return runtime_pb2.PredictCommand(model_id=model_id, **fields).SerializeToString()


def _assert_pyarrow_message(error: grpc.RpcError, message: str, detail: str) -> None:
    """The status message is pyarrow's: ours, then ". Detail: " and pyarrow's detail, which
    its x-arrow-status-*-bin trailers repeat apart."""
    trailers = _trailers(error)
    assert trailers["x-arrow-status-message-bin"] == message.encode()
    assert trailers["x-arrow-status-detail-bin"].decode().startswith(detail)
    assert error.details() == f"{message}. Detail: {trailers['x-arrow-status-detail-bin'].decode()}"  # type: ignore[attr-defined]


# -- INVALID_ARGUMENT and NOT_FOUND: ArrowInvalid and ArrowKeyError -------------------------------


@pytest.mark.parametrize(
    ("image", "dim_names", "message", "details"),
    [
        pytest.param(
            np.zeros((2, 3, 4, 5, 6), np.float32),
            (),
            "input 'input' has shape (2, 3, 4, 5, 6), which cannot be mapped to the model's axes "
            "(batch, channel, y, x): pass dim names, or an array with 4 axes (or fewer, leaving "
            "out singleton axes)",
            {
                "tensor": "input",
                "axis": "",
                "expected": "4 axes (batch, channel, y, x)",
                "got": "5 axes (2, 3, 4, 5, 6)",
            },
            id="wrong-rank",
        ),
        pytest.param(
            np.zeros((1, 3, 8, 8), np.float32),
            DIMS,
            "input 'input' has 3 channel(s) on axis 'channel', the model expects 1 (c0)",
            {"tensor": "input", "axis": "channel", "expected": "1", "got": "3"},
            id="wrong-size",
        ),
    ],
)
def test_a_wrong_tensor_is_invalid_argument_with_its_error_detail_in_the_trailer(
    flight: CompiledProto,
    channel: grpc.Channel,
    identity: ModelInfo,
    image: np.ndarray,
    dim_names: tuple[str, ...],
    message: str,
    details: dict[str, str],
) -> None:
    error = _refusal(flight, channel, _command(identity.id), image, dim_names)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    detail = _detail(error)
    assert (detail.code, detail.type, detail.message) == (
        "INVALID_ARGUMENT",
        "InvalidTensorError",
        message,
    )
    assert dict(detail.details) == details
    # pyarrow's detail for ArrowInvalid: the Python traceback; no grpc-status-details-bin
    _assert_pyarrow_message(error, f"[INVALID_ARGUMENT] {message}", TRACEBACK)
    trailers = _trailers(error)
    assert trailers["x-arrow-status"] == "4"  # Arrow C++ StatusCode::Invalid
    assert "grpc-status-details-bin" not in trailers


def test_an_unknown_model_is_not_found_with_its_error_detail_in_the_trailer(
    flight: CompiledProto, channel: grpc.Channel
) -> None:
    missing = "0" * 64
    error = _refusal(flight, channel, _command(missing), np.zeros((1, 1, 8, 8), np.float32))
    assert error.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    message = (
        f"no model '{missing}' in the registry (looked for a model id, a unique prefix of one "
        "of at least 6 characters, and a bioimage.io id)"
    )
    detail = _detail(error)
    assert (detail.code, detail.type, detail.message) == (
        "NOT_FOUND",
        "ModelNotFoundError",
        message,
    )
    assert dict(detail.details) == {"model_id": missing}
    _assert_pyarrow_message(error, f"[NOT_FOUND] {message}", TRACEBACK)
    trailers = _trailers(error)
    assert trailers["x-arrow-status"] == "2"  # Arrow C++ StatusCode::KeyError
    assert "grpc-status-details-bin" not in trailers


def test_a_malformed_predict_command_is_invalid_argument(
    flight: CompiledProto, channel: grpc.Channel
) -> None:
    # field 1 (model_id), length-delimited, says 5 bytes and brings 2
    error = _refusal(flight, channel, b"\x0a\x05ab", np.zeros((1, 1, 8, 8), np.float32))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    message = (
        "cannot parse PredictCommand: Error parsing message with type "
        "'modelrunner.v1.PredictCommand': Wire format was corrupt"
    )
    detail = _detail(error)
    assert (detail.code, detail.type, detail.message) == (
        "INVALID_ARGUMENT",
        "InvalidArgumentError",
        message,
    )
    _assert_pyarrow_message(error, f"[INVALID_ARGUMENT] {message}", TRACEBACK)


# -- refused by pyarrow's C++ server before the runtime sees the call ----------------------------


def test_an_exchange_whose_first_message_has_no_descriptor_is_unknown_without_our_trailer(
    flight: CompiledProto, channel: grpc.Channel, identity: ModelInfo
) -> None:
    stub = flight.stub(channel, "FlightService")
    image = np.zeros((1, 1, 8, 8), np.float32)
    layout = SampleLayout.plan({"input": image})
    first, batch = exchange_messages(
        flight, _command(identity.id), layout.schema(), encode_sample(layout, {"input": image})
    )
    first.ClearField("flight_descriptor")
    with pytest.raises(grpc.RpcError) as info:
        list(stub["DoExchange"](iter([first, batch]), timeout=60))
    assert info.value.code() == grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
    assert info.value.details() == "Descriptor missing on first message"  # type: ignore[attr-defined]
    assert ERROR_TRAILER not in _trailers(info.value)


def test_an_exchange_whose_first_ipc_message_is_not_a_schema_is_unknown_without_our_trailer(
    flight: CompiledProto, channel: grpc.Channel, identity: ModelInfo
) -> None:
    stub = flight.stub(channel, "FlightService")
    image = np.zeros((1, 1, 8, 8), np.float32)
    layout = SampleLayout.plan({"input": image})
    first, batch = exchange_messages(
        flight, _command(identity.id), layout.schema(), encode_sample(layout, {"input": image})
    )
    batch.flight_descriptor.CopyFrom(first.flight_descriptor)
    with pytest.raises(grpc.RpcError) as info:
        list(stub["DoExchange"](iter([batch]), timeout=60))
    assert info.value.code() == grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
    assert info.value.details() == (  # type: ignore[attr-defined]
        "Expected IPC message of type schema but got record batch"
    )
    assert ERROR_TRAILER not in _trailers(info.value)


# -- codes pyarrow cannot send: UNKNOWN, the real code in the ErrorDetail --------------------------


def _google_rpc_status() -> Any:
    """google.rpc.Status (code 1, message 2, details 3), which gRPC libraries expect in
    grpc-status-details-bin, built here: the test environment has no googleapis protos."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(_any_file())
    status = descriptor_pb2.FileDescriptorProto(
        name="google/rpc/status.proto",
        package="google.rpc",
        dependency=["google/protobuf/any.proto"],
        syntax="proto3",
    )
    message = status.message_type.add(name="Status")
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    kinds = descriptor_pb2.FieldDescriptorProto
    message.field.add(name="code", number=1, type=kinds.TYPE_INT32, label=optional)
    message.field.add(name="message", number=2, type=kinds.TYPE_STRING, label=optional)
    message.field.add(
        name="details",
        number=3,
        type=kinds.TYPE_MESSAGE,
        type_name=".google.protobuf.Any",
        label=kinds.LABEL_REPEATED,
    )
    pool.AddSerializedFile(status.SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))


def _any_file() -> bytes:
    from google.protobuf import any_pb2

    proto = descriptor_pb2.FileDescriptorProto()
    any_pb2.DESCRIPTOR.CopyToProto(proto)
    return proto.SerializeToString()


def test_failed_precondition_arrives_as_unknown_with_the_real_code_in_the_error_detail(
    flight: CompiledProto, channel: grpc.Channel, identity: ModelInfo
) -> None:
    command = _command(identity.id, precision="float16")
    error = _refusal(flight, channel, command, np.zeros((1, 1, 8, 8), np.float32), DIMS)
    assert error.code() == grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
    message = (
        "float16 precision runs on the fast path with PyTorch or TorchScript weights only, and "
        "this call cannot take it: the onnx network has no reduced precision"
    )
    detail = _detail(error)
    assert (detail.code, detail.type, detail.message) == (
        "FAILED_PRECONDITION",
        "FailedPreconditionError",
        message,
    )
    assert dict(detail.details) == {"model": "tiny-onnx-identity", "precision": "float16"}
    # pyarrow's detail for its Flight error types: the Flight status name, "Failed" for UNKNOWN
    _assert_pyarrow_message(error, f"[FAILED_PRECONDITION] {message}", "Failed")
    trailers = _trailers(error)
    assert trailers["x-arrow-status-detail-bin"] == b"Failed"
    assert trailers["x-arrow-status"] == "5"  # Arrow C++ StatusCode::IOError (a Flight status)
    # grpc-status-details-bin holds pyarrow's extra_info: a google.rpc.Status, as gRPC libraries
    # expect there (grpc-go takes its code for the call's), with the real code and the detail
    assert _status_detail(error, grpc.StatusCode.FAILED_PRECONDITION) == detail


def test_a_call_without_a_token_is_unauthenticated_without_the_modelrunner_trailer(
    flight: CompiledProto, secured: Secured
) -> None:
    """Refused by the runtime's middleware, before any handler: pyarrow sends no trailer of
    ours there, only extra_info (grpc-status-details-bin)."""
    assert secured.server.runtime is not None
    with grpc.insecure_channel(f"127.0.0.1:{secured.server.runtime.server.port}") as channel:
        stub = flight.stub(channel, "FlightService")
        with pytest.raises(grpc.RpcError) as info:
            list(stub["DoAction"](flight.message("Action")(type="runtime_info"), timeout=30))
    error = info.value
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    message = (
        "this runtime requires a token: send the header 'authorization: Bearer <token>' (the "
        "Python client's token=)"
    )
    _assert_pyarrow_message(error, f"[UNAUTHENTICATED] {message}", "Unauthenticated")
    trailers = _trailers(error)
    assert ERROR_TRAILER not in trailers
    detail = _status_detail(error, grpc.StatusCode.UNAUTHENTICATED)
    assert (detail.code, detail.type, detail.message) == (
        "UNAUTHENTICATED",
        "UnauthenticatedError",
        message,
    )
