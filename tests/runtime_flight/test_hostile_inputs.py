"""Hostile and careless inputs to the runtime, through the Python client and through a Flight
client written by hand (raw gRPC, as a client in another language sees the runtime). Each test
is named for what it attacks; every client mistake must arrive as the typed error and the exact
status code of its kind (never INTERNAL or UNKNOWN), and no input may give a wrong result
without an error."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from modelrunner import errors
from modelrunner.client import (
    DeadlineExceededError,
    FrameError,
    InvalidArgumentError,
    InvalidTensorError,
    ModelInfo,
    ModelNotFoundError,
    ModelRunnerClient,
)
from modelrunner.client._stream import FrameStream
from modelrunner.runtime_flight.input_mapping import check_finite
from modelrunner.runtime_flight.server import RuntimeFlightServer
from modelrunner.transport_errors import (
    ERROR_TRAILER_KEY,
    MAX_MESSAGE_BYTES,
    ErrorTrailers,
    from_flight_error,
)
from modelrunner.v1 import models_pb2, runtime_pb2
from modelrunner.wire import (
    DIM_NAMES_KEY,
    MAX_MODEL_REF_CHARS,
    SHAPE_KEY,
    SampleLayout,
    encode_sample,
)
from tests.reference import core_prediction
from tests.runtime_flight.raw_flight import (
    RawFlight,
    action,
    command_descriptor,
    flight_data,
    ipc_messages,
)
from tests.zoo import NUCLEI

TRUNCATED = b"\x0a\x05ab"
"""Field 1, length-delimited, says 5 bytes and brings 2: no protobuf parser accepts it."""
HEADER_LIMIT = 8 * 1024


@pytest.fixture
def raw(runtime: RuntimeFlightServer) -> Iterator[RawFlight]:
    with RawFlight(runtime.port) as client:
        yield client


def _command(model_id: str, **fields: object) -> bytes:
    return runtime_pb2.PredictCommand(model_id=model_id, **fields).SerializeToString()  # type: ignore[arg-type]


def _raw_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def _trailer_detail(error: grpc.RpcError) -> models_pb2.ErrorDetail:
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    detail = models_pb2.ErrorDetail()
    detail.ParseFromString(trailers[ERROR_TRAILER_KEY])
    return detail


def _exchange(model_id: str, arrays: dict[str, np.ndarray], **fields: object) -> list[bytes]:
    """A prediction's FlightData messages, valid, as a raw client would send them."""
    layout = SampleLayout.plan(arrays)
    (schema, *batches) = ipc_messages(layout.schema(), encode_sample(layout, arrays))
    first = flight_data(
        descriptor=command_descriptor(_command(model_id, **fields)), header=schema[0]
    )
    return [first] + [flight_data(header=h, body=b) for h, b in batches]


def _frames(n: int, side: int = 16) -> Iterator[np.ndarray]:
    for i in range(n):
        yield np.full((1, 1, side, side), i, np.float32)


# -- wrong results: batches, non-finite values, float16 -----------------------------------------


@pytest.mark.parametrize("side", [256, 512])
def test_a_batch_of_two_to_a_model_of_fixed_batch_one_equals_two_single_predictions(
    client: ModelRunnerClient, nuclei: ModelInfo, side: int
) -> None:
    image = np.load(NUCLEI / "test_input.npy").astype(np.float32)[..., :side, :side]
    two = np.concatenate([image, np.ascontiguousarray(image[..., ::-1, :])])
    both = client.predict(nuclei.id, two)["probability"]
    singles = [client.predict(nuclei.id, two[i : i + 1])["probability"] for i in range(2)]
    assert both.shape == (2, 1, side, side)
    np.testing.assert_array_equal(both, np.concatenate(singles))


def test_a_stream_of_batched_frames_to_a_fixed_batch_model_is_split_too(
    client: ModelRunnerClient, nuclei: ModelInfo
) -> None:
    image = np.load(NUCLEI / "test_input.npy").astype(np.float32)[..., :128, :128]
    two = np.concatenate([image, image * 2])
    outputs = list(client.predict_stream(nuclei.id, [two, two]))
    single = client.predict(nuclei.id, two[1:])["probability"]
    for out in outputs:
        np.testing.assert_array_equal(out["probability"][1:], single)


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan], ids=["inf", "-inf", "nan"])
def test_one_non_finite_pixel_is_refused_by_default(
    client: ModelRunnerClient, nuclei: ModelInfo, value: float
) -> None:
    image = np.load(NUCLEI / "test_input.npy").astype(np.float32)
    image[0, 0, 3, 3] = value
    with pytest.raises(InvalidTensorError) as info:
        client.predict(nuclei.id, image)
    kind = "NaN" if np.isnan(value) else "infinite"
    assert str(info.value) == (
        f"input 'raw' contains 1 {kind} value(s); send nan_policy=allow to pass them to the model"
    )
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_non_finite_pixels_pass_when_the_client_allows_them(
    client: ModelRunnerClient, identity: ModelInfo
) -> None:
    frame = np.zeros((1, 1, 16, 16), np.float32)
    frame[0, 0, 0, :3] = [np.inf, -np.inf, np.nan]
    out = client.predict(identity.id, frame, nan_policy="allow")["output"]
    np.testing.assert_array_equal(out, frame)


def test_an_infinite_frame_fails_alone_in_a_stream(
    client: ModelRunnerClient, identity: ModelInfo
) -> None:
    frames = list(_frames(3))
    frames[1][0, 0, 5, 5] = np.inf
    results = list(client.predict_stream(identity.id, frames, on_error="yield"))
    assert isinstance(results[1], FrameError)
    assert "contains 1 infinite value(s)" in str(results[1])
    np.testing.assert_array_equal(results[2]["output"], frames[2])  # type: ignore[index]


def test_float16_input_equals_bioimageio_core_on_the_same_values_in_float32(
    client: ModelRunnerClient, nuclei: ModelInfo
) -> None:
    half = np.load(NUCLEI / "test_input.npy").astype(np.float16)
    expected = core_prediction(NUCLEI, {"raw": half.astype(np.float32)}, "torchscript")
    reference = client.predict(nuclei.id, half, weight_format="torchscript", reference_path=True)
    served = client.predict(nuclei.id, half, weight_format="torchscript")
    assert not np.isnan(served["probability"]).any()
    np.testing.assert_array_equal(reference["probability"], expected["probability"])
    np.testing.assert_allclose(served["probability"], expected["probability"], atol=1e-5)


def test_the_finiteness_check_is_exact_when_finite_values_overflow_the_sum() -> None:
    huge = np.full((64, 64), 3e38, np.float32)  # the float32 sum overflows to inf
    check_finite("x", huge)  # no error: every value is finite
    huge[1, 1] = np.inf
    with pytest.raises(InvalidTensorError, match="1 infinite"):
        check_finite("x", huge)


# -- sizes ----------------------------------------------------------------------------------------


def test_a_zero_size_axis_is_named_as_such(client: ModelRunnerClient, identity: ModelInfo) -> None:
    with pytest.raises(InvalidTensorError) as info:
        client.predict(identity.id, {"input": np.zeros((1, 1, 0, 16), np.float32)})
    assert str(info.value) == (
        "input 'input' has zero size on axis 2 (shape (1, 1, 0, 16)): there is nothing to predict"
    )
    with pytest.raises(InvalidTensorError, match=r"^the input has zero size on axis 3"):
        client.predict(identity.id, np.zeros((1, 1, 16, 0), np.float32))


def test_a_declared_4_tib_tensor_is_refused_before_any_allocation(
    raw: RawFlight, identity: ModelInfo
) -> None:
    # a chunked schema announces the full shape in its metadata: 1 x 1 x 1e6 x 1e6 float32
    shape = [1, 1, 1_000_000, 1_000_000]
    field = pa.field(
        "input",
        pa.fixed_shape_tensor(pa.float32(), [1, 1_000_000]),
        nullable=False,
        metadata={SHAPE_KEY: json.dumps(shape).encode(), DIM_NAMES_KEY: b"[]"},
    )
    (schema,) = ipc_messages(pa.schema([field]))
    first = flight_data(descriptor=command_descriptor(_command(identity.id)), header=schema[0])
    started = time.monotonic()
    error = _raw_error(lambda: raw.do_exchange([first]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    detail = _trailer_detail(error)
    assert detail.type == "InvalidTensorError"
    assert "the announced sample takes 4000000000000 bytes" in detail.message
    assert "limit of 17179869184 bytes (setting max_sample_bytes)" in detail.message
    assert time.monotonic() - started < 5


def test_a_sample_over_the_runtime_limit_is_refused_through_the_client(
    client: ModelRunnerClient, identity: ModelInfo, runtime: RuntimeFlightServer
) -> None:
    settings = runtime.service.settings
    before = settings.max_sample_bytes
    settings.max_sample_bytes = 1024
    try:
        with pytest.raises(InvalidTensorError, match=r"more than this runtime's limit of 1024"):
            client.predict(identity.id, np.zeros((1, 1, 32, 32), np.float32))
    finally:
        settings.max_sample_bytes = before


# -- devices --------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cuda:7", "tpu"])
def test_an_unknown_device_is_invalid_argument(
    client: ModelRunnerClient, identity: ModelInfo, device: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        client.predict(identity.id, next(_frames(1)), device=device)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert device in str(info.value)


@pytest.mark.parametrize("device", ["cuda:7", "tpu"])
def test_an_unknown_device_sent_to_the_runtime_is_invalid_argument_for_a_raw_client(
    raw: RawFlight, identity: ModelInfo, device: str
) -> None:
    messages = _exchange(identity.id, {"input": next(_frames(1))}, device=device)
    error = _raw_error(lambda: raw.do_exchange(messages))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert device in _trailer_detail(error).message


# -- malformed commands, actions and streams ------------------------------------------------------


def test_an_unknown_model_is_not_found_for_a_raw_client(raw: RawFlight) -> None:
    body = runtime_pb2.LoadModelRequest(model_id="0" * 64).SerializeToString()
    error = _raw_error(lambda: raw.do_action(action("load_model", body)))
    assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
    assert _trailer_detail(error).type == "ModelNotFoundError"


def test_an_unknown_model_is_the_typed_error_through_the_client(
    client: ModelRunnerClient, runtime: RuntimeFlightServer
) -> None:
    with flight.connect(f"grpc://127.0.0.1:{runtime.port}", middleware=[_trailers()]) as fc:
        body = runtime_pb2.LoadModelRequest(model_id="0" * 64).SerializeToString()
        with pytest.raises(pa.ArrowKeyError) as info:
            list(fc.do_action(flight.Action("load_model", body)))
    error = from_flight_error(info.value)
    assert type(error) is ModelNotFoundError
    assert error.details == {"model_id": "0" * 64}


def _trailers() -> flight.ClientMiddlewareFactory:
    return ErrorTrailers()


def test_a_truncated_action_body_is_invalid_argument(raw: RawFlight) -> None:
    error = _raw_error(lambda: raw.do_action(action("load_model", TRUNCATED)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert _trailer_detail(error).message.startswith("cannot parse LoadModelRequest")


def test_an_unknown_action_is_invalid_argument(raw: RawFlight) -> None:
    error = _raw_error(lambda: raw.do_action(action("x" * 100_000)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert len(error.details().encode()) < HEADER_LIMIT


def test_a_megabyte_model_id_in_a_load_action_is_invalid_argument(raw: RawFlight) -> None:
    body = runtime_pb2.LoadModelRequest(model_id="m" * 1_000_000).SerializeToString()
    error = _raw_error(lambda: raw.do_action(action("load_model", body)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert f"at most {MAX_MODEL_REF_CHARS} are allowed" in _trailer_detail(error).message


def test_a_megabyte_model_id_in_a_prediction_is_invalid_argument(
    raw: RawFlight, runtime: RuntimeFlightServer
) -> None:
    messages = _exchange("m" * 1_000_000, {"input": next(_frames(1))})
    error = _raw_error(lambda: raw.do_exchange(messages))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    with flight.connect(f"grpc://127.0.0.1:{runtime.port}", middleware=[_trailers()]) as fc:
        descriptor = flight.FlightDescriptor.for_command(_command("m" * 1_000_000))
        writer, reader = fc.do_exchange(descriptor)
        with pytest.raises(pa.ArrowInvalid) as info:
            reader.read_chunk()
        with contextlib.suppress(pa.ArrowException):
            writer.close()
    typed = from_flight_error(info.value)
    assert type(typed) is errors.InvalidArgumentError
    assert f"at most {MAX_MODEL_REF_CHARS} are allowed" in typed.message


def test_a_malformed_command_descriptor_is_invalid_argument(raw: RawFlight) -> None:
    first = flight_data(descriptor=command_descriptor(TRUNCATED))
    error = _raw_error(lambda: raw.do_exchange([first]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert _trailer_detail(error).message.startswith("cannot parse PredictCommand")


def test_a_path_descriptor_is_invalid_argument(raw: RawFlight) -> None:
    path_descriptor = b"\x08\x01" + b"\x1a\x01x"  # type PATH, path ["x"]
    error = _raw_error(lambda: raw.do_exchange([flight_data(descriptor=path_descriptor)]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "needs a CMD descriptor" in _trailer_detail(error).message


def test_a_garbage_first_message_is_refused_by_pyarrow_before_the_runtime_sees_it(
    raw: RawFlight, identity: ModelInfo
) -> None:
    # A known limit: pyarrow's C++ server parses the exchange's first message before it calls
    # the Python handler, and answers UNKNOWN itself. This test shows when that changes.
    first = flight_data(
        descriptor=command_descriptor(_command(identity.id)), header=b"\x10\x00garbage!" * 8
    )
    error = _raw_error(lambda: raw.do_exchange([first]))
    assert error.code() == grpc.StatusCode.UNKNOWN, error.details()
    assert error.details() == "Invalid flatbuffers message."


@pytest.mark.parametrize("stream", [False, True], ids=["single", "stream"])
def test_a_truncated_record_batch_body_is_invalid_argument(
    raw: RawFlight, identity: ModelInfo, stream: bool
) -> None:
    arrays = {"input": next(_frames(1, side=64))}
    messages = _exchange(identity.id, arrays, stream=stream)
    layout = SampleLayout.plan(arrays)
    header, body = ipc_messages(layout.schema(), encode_sample(layout, arrays))[1]
    messages[1] = flight_data(header=header, body=body[: len(body) // 3])
    error = _raw_error(lambda: raw.do_exchange(messages))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert _trailer_detail(error).type == "InvalidArgumentError"


def test_a_garbage_record_batch_header_is_invalid_argument(
    raw: RawFlight, identity: ModelInfo
) -> None:
    messages = _exchange(identity.id, {"input": next(_frames(1))})
    messages[1] = flight_data(header=b"\xff" * 40, body=b"\x00" * 64)
    error = _raw_error(lambda: raw.do_exchange(messages))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()


def test_a_column_that_is_not_a_tensor_is_invalid_argument(
    runtime: RuntimeFlightServer, identity: ModelInfo
) -> None:
    with flight.connect(f"grpc://127.0.0.1:{runtime.port}", middleware=[_trailers()]) as fc:
        writer, reader = fc.do_exchange(flight.FlightDescriptor.for_command(_command(identity.id)))
        table = pa.table({"input": pa.array([1, 2, 3])})
        # the runtime may refuse the schema before the batch is written: either call raises
        with pytest.raises(pa.ArrowInvalid) as info:
            writer.begin(table.schema)
            writer.write_table(table)
            writer.done_writing()
            reader.read_chunk()
        with contextlib.suppress(pa.ArrowException):
            writer.close()
    typed = from_flight_error(info.value)
    assert type(typed) is InvalidTensorError
    assert "every column must be an arrow.fixed_shape_tensor" in typed.message


def test_a_wrong_rank_input_is_invalid_argument_for_a_raw_client(
    raw: RawFlight, identity: ModelInfo
) -> None:
    messages = _exchange(identity.id, {"input": np.zeros((2, 2, 2, 8, 8), np.float32)})
    error = _raw_error(lambda: raw.do_exchange(messages))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    detail = _trailer_detail(error)
    assert detail.type == "InvalidTensorError"
    assert detail.details["tensor"] == "input"


def test_a_long_non_ascii_input_name_is_echoed_cut(
    client: ModelRunnerClient, identity: ModelInfo
) -> None:
    name = "\U0001f600" * 25_000
    with pytest.raises(InvalidTensorError) as info:
        client.predict(identity.id, {name: next(_frames(1))})
    assert len(info.value.message.encode()) <= MAX_MESSAGE_BYTES
    assert info.value.message.startswith("unknown input '")
    assert all(len(v) <= 200 for v in info.value.details.values())


# -- a frozen runtime -----------------------------------------------------------------------------


class _FrozenRuntime(flight.FlightServerBase):  # type: ignore[misc]
    """Accepts the exchange, then never answers (until the client gives up)."""

    def __init__(self) -> None:
        super().__init__("grpc://127.0.0.1:0")
        self.entered = threading.Event()

    def do_exchange(self, context, descriptor, reader, writer):  # type: ignore[no-untyped-def]
        self.entered.set()
        deadline = time.monotonic() + 20
        while not context.is_cancelled() and time.monotonic() < deadline:
            time.sleep(0.05)


def test_a_frozen_runtime_ends_a_stream_with_deadline_exceeded_within_seconds() -> None:
    server = _FrozenRuntime()
    try:
        with flight.connect(f"grpc://127.0.0.1:{server.port}") as fc:
            command = runtime_pb2.PredictCommand(model_id="m", stream=True)
            started = time.monotonic()
            stream = FrameStream(
                fc,
                command,
                _frames(2),
                max_in_flight=2,
                timeout=None,
                batch_bytes=1 << 20,
                on_error="raise",
                idle_timeout=1.0,
            )
            with stream, pytest.raises(DeadlineExceededError) as info:
                next(stream)
            assert 0.9 < time.monotonic() - started < 4
            assert server.entered.is_set()
        assert str(info.value) == (
            "the runtime sent nothing for 1 s (idle_timeout); the stream was cancelled"
        )
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        server.shutdown()


def test_an_idle_timeout_must_be_positive() -> None:
    with pytest.raises(InvalidArgumentError, match="idle_timeout must be positive"):
        FrameStream(
            None,  # type: ignore[arg-type]
            runtime_pb2.PredictCommand(model_id="m"),
            [],
            max_in_flight=1,
            timeout=None,
            batch_bytes=1,
            on_error="raise",
            idle_timeout=0,
        )


def test_a_busy_stream_is_not_cut_by_its_idle_timeout(
    client: ModelRunnerClient, identity: ModelInfo
) -> None:
    # the idle timeout bounds each wait for an answer, not the stream
    outputs = list(client.predict_stream(identity.id, _frames(200), idle_timeout=0.5))
    assert len(outputs) == 200


def test_the_runtime_still_serves_after_every_attack(
    client: ModelRunnerClient, identity: ModelInfo
) -> None:
    frame = next(_frames(1))
    np.testing.assert_array_equal(client.predict(identity.id, frame)["output"], frame)
