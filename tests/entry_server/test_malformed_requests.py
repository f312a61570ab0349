"""Hostile and careless requests to the control service: each is the client's mistake and must
come back as INVALID_ARGUMENT (never INTERNAL or UNKNOWN), with a message short enough for gRPC's
headers, and the server must go on serving (``start_server`` checks that after every test)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import grpc
import pyarrow.flight as flight
import pytest

from modelrunner import errors
from modelrunner.entry_server.runtimes.actions import run_model_test_on_runtime
from modelrunner.transport_errors import ERROR_TRAILER_KEY, from_rpc_error, to_flight_error
from modelrunner.v1 import control_pb2
from modelrunner.wire import MAX_MODEL_REF_CHARS
from tests.entry_server.conftest import Running
from tests.entry_server.helpers import (
    NUCLEI,
    add_model,
    expect_rpc_error,
    upload_requests,
    zip_folder,
)

SERVICE = control_pb2.DESCRIPTOR.services_by_name["ControlService"]
TRUNCATED = b"\x0a\x05ab"
"""Field 1, length-delimited, says 5 bytes and brings 2: no protobuf parser accepts it."""
HEADER_LIMIT = 8 * 1024
"""gRPC's default soft limit on a call's headers (the hard one is 16 KiB)."""


def _raw_call(running: Running, method_name: str, messages: list[bytes]) -> grpc.RpcError:
    """Call a method with raw bytes, as a client with a broken encoder would."""
    method = SERVICE.methods_by_name[method_name]
    path = f"/{SERVICE.full_name}/{method.name}"
    channel = running.channel
    with pytest.raises(grpc.RpcError) as info:
        if method.client_streaming and method.server_streaming:
            list(channel.stream_stream(path)(iter(messages), timeout=10))
        elif method.client_streaming:
            channel.stream_unary(path)(iter(messages), timeout=10)
        elif method.server_streaming:
            list(channel.unary_stream(path)(messages[0], timeout=10))
        else:
            channel.unary_unary(path)(messages[0], timeout=10)
    return info.value


@pytest.mark.parametrize("method", [m.name for m in SERVICE.methods])
def test_truncated_protobuf_on_every_method_is_invalid_argument(
    control: Running, method: str
) -> None:
    error = _raw_call(control, method, [TRUNCATED])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith(f"{method}: the request is not a valid protobuf message")
    assert type(from_rpc_error(error)).__name__ == "InvalidArgumentError"


def test_garbage_after_a_valid_upload_header_is_invalid_argument(control: Running) -> None:
    header = upload_requests(b"x" * 10, "p.zip")[0].SerializeToString()
    error = _raw_call(control, "UploadPackage", [header, b"\xff\xff\xff\xff"])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "UploadPackage: the request is not a valid protobuf message" in error.details()


def test_a_megabyte_model_id_is_invalid_argument(control: Running) -> None:
    ref = "a" * 1_000_000
    message = expect_rpc_error(
        lambda: control.stub.DescribeModel(control_pb2.DescribeModelRequest(model_id=ref)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidArgumentError",
        f"has 1000000 characters; at most {MAX_MODEL_REF_CHARS} are allowed",
    )
    assert len(message) < 200


@pytest.mark.parametrize(
    "call",
    [
        lambda stub, ref: stub.RemoveModel(control_pb2.RemoveModelRequest(model_id=ref)),
        lambda stub, ref: stub.GetModelRoute(control_pb2.GetModelRouteRequest(model_id=ref)),
        lambda stub, ref: stub.TestModel(control_pb2.TestModelRequest(model_id=ref)),
    ],
    ids=["RemoveModel", "GetModelRoute", "TestModel"],
)
def test_an_overlong_model_id_is_refused_by_every_method_taking_one(
    control: Running, call: object
) -> None:
    expect_rpc_error(
        lambda: call(control.stub, "b" * (MAX_MODEL_REF_CHARS + 1)),  # type: ignore[operator]
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidArgumentError",
        f"at most {MAX_MODEL_REF_CHARS} are allowed",
    )


def test_a_model_id_with_control_characters_is_invalid_argument(control: Running) -> None:
    expect_rpc_error(
        lambda: control.stub.DescribeModel(
            control_pb2.DescribeModelRequest(model_id="abc\x00%' OR 1=1")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidArgumentError",
        "contains control characters",
    )


def test_a_sql_like_pattern_as_model_id_is_just_not_found(control: Running) -> None:
    # the registry looks ids up with SQLite: a LIKE pattern must not match anything
    expect_rpc_error(
        lambda: control.stub.DescribeModel(control_pb2.DescribeModelRequest(model_id="%%%%%%%")),
        grpc.StatusCode.NOT_FOUND,
        "ModelNotFoundError",
    )


def test_long_non_ascii_values_echoed_in_errors_fit_the_headers(control: Running) -> None:
    # 100 KB of 4-byte characters in a path: whatever the server says, it must say it within
    # gRPC's header limits (past 16 KiB the client sees only "Stream removed")
    path = "/" + "\U0001f600" * 25_000
    with pytest.raises(grpc.RpcError) as info:
        add_model(control.stub, path=path)
    error = info.value
    assert error.code() in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
    ), error.details()
    trailer = dict(error.trailing_metadata() or ())[ERROR_TRAILER_KEY]
    assert len(trailer) + len(error.details().encode()) < HEADER_LIMIT
    assert "Stream removed" not in error.details()


def test_a_corrupt_zip_is_invalid_argument(control: Running, tmp_path: Path) -> None:
    archive = tmp_path / "corrupt.zip"
    archive.write_bytes(b"PK\x03\x04" + b"\x00garbage" * 100)
    expect_rpc_error(
        lambda: add_model(control.stub, path=str(archive)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidPackageError",
    )


def test_a_truncated_zip_is_invalid_argument(control: Running, tmp_path: Path) -> None:
    whole = zip_folder(NUCLEI, tmp_path / "whole.zip").read_bytes()
    archive = tmp_path / "truncated.zip"
    archive.write_bytes(whole[: len(whole) // 2])
    expect_rpc_error(
        lambda: add_model(control.stub, path=str(archive)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidPackageError",
    )


def test_a_zip_with_a_corrupt_member_is_invalid_argument(control: Running, tmp_path: Path) -> None:
    archive = zip_folder(NUCLEI, tmp_path / "flipped.zip")
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("weights.pt")
    # flip bytes inside the member's compressed data: its CRC no longer matches
    start = info.header_offset + 30 + len(info.filename) + 64
    data[start : start + 16] = bytes(b ^ 0xFF for b in data[start : start + 16])
    archive.write_bytes(bytes(data))
    expect_rpc_error(
        lambda: add_model(control.stub, path=str(archive)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidPackageError",
    )


def test_an_uploaded_corrupt_zip_is_invalid_argument(control: Running) -> None:
    data = b"PK\x05\x06" + b"\x00" * 18 + b"not a zip at all" * 64
    upload = control.stub.UploadPackage(iter(upload_requests(data, "corrupt.zip")))
    expect_rpc_error(
        lambda: add_model(control.stub, upload_id=upload.upload_id),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidPackageError",
    )


class _RefusingRuntime(flight.FlightServerBase):  # type: ignore[misc]
    def __init__(self, error: errors.ModelRunnerError) -> None:
        super().__init__("grpc://127.0.0.1:0")
        self.error = error

    def do_action(self, context, action):  # type: ignore[no-untyped-def]
        raise to_flight_error(self.error, context)


@pytest.mark.parametrize(
    "error",
    [
        errors.InvalidTensorError("bad", details={"tensor": "raw"}),
        errors.ModelNotFoundError("gone", details={"model_id": "m"}),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_runtime_refusal_reaches_the_control_service_typed(
    error: errors.ModelRunnerError,
) -> None:
    # the runtime's INVALID_ARGUMENT and NOT_FOUND travel as Arrow errors plus a trailer: the
    # control service must rebuild them, not fail with INTERNAL
    runtime = _RefusingRuntime(error)
    try:
        with pytest.raises(errors.ModelRunnerError) as info:
            run_model_test_on_runtime(
                f"grpc://127.0.0.1:{runtime.port}", model_id="m", timeout_s=10
            )
    finally:
        runtime.shutdown()
    assert type(info.value) is type(error)
    assert (info.value.message, info.value.details) == (error.message, error.details)
