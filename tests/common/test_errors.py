"""Every error travels over gRPC and Flight and comes back as the same type."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pyarrow.flight as flight
import pytest

from modelrunner import errors
from modelrunner.transport_errors import (
    error_trailer,
    from_flight_error,
    from_rpc_error,
    to_flight_error,
)

ALL = [e for e in errors.ERRORS_BY_NAME.values()]


class _RaisingFlight(flight.FlightServerBase):
    def __init__(self) -> None:
        super().__init__("grpc://127.0.0.1:0")
        self.error: errors.ModelRunnerError | None = None

    def do_action(self, context, action):  # type: ignore[no-untyped-def]
        assert self.error is not None
        raise to_flight_error(self.error)


@pytest.fixture(scope="module")
def flight_server() -> Iterator[_RaisingFlight]:
    server = _RaisingFlight()
    yield server
    server.shutdown()


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_flight_round_trip(
    flight_server: _RaisingFlight, cls: type[errors.ModelRunnerError]
) -> None:
    flight_server.error = cls("input 'raw' axis 'y': expected >= 64, got 3", details={"axis": "y"})
    with (
        flight.connect(f"grpc://127.0.0.1:{flight_server.port}") as client,
        pytest.raises(flight.FlightError) as caught,
    ):
        list(client.do_action(flight.Action("x", b"")))
    back = from_flight_error(caught.value)
    assert type(back) is cls
    assert back.message == "input 'raw' axis 'y': expected >= 64, got 3"
    assert back.details == {"axis": "y"}
    assert f"[{cls.code.name}]" in str(caught.value)


def _grpc_server(error: errors.ModelRunnerError) -> tuple[grpc.Server, int]:
    def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.set_trailing_metadata(error_trailer(error))
        context.abort(error.code, error.message)
        raise AssertionError("unreachable")

    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "t.T", {"M": grpc.unary_unary_rpc_method_handler(handler)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_grpc_round_trip(cls: type[errors.ModelRunnerError]) -> None:
    server, port = _grpc_server(cls("model abc not found", details={"model_id": "abc"}))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/t.T/M")
            with pytest.raises(grpc.RpcError) as caught:
                call(b"")
        assert caught.value.code() == cls.code  # type: ignore[attr-defined]
        back = from_rpc_error(caught.value)
        assert type(back) is cls
        assert back.message == "model abc not found"
        assert back.details == {"model_id": "abc"}
    finally:
        server.stop(None)


def test_grpc_error_without_trailer_maps_by_status_code() -> None:
    class Fake(grpc.RpcError, grpc.Call):  # type: ignore[misc]
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.NOT_FOUND

        def details(self) -> str:
            return "nope"

        def trailing_metadata(self):  # type: ignore[no-untyped-def]
            return ()

        def initial_metadata(self):  # type: ignore[no-untyped-def]
            return ()

        def time_remaining(self):  # type: ignore[no-untyped-def]
            return None

        def cancel(self):  # type: ignore[no-untyped-def]
            return False

        def is_active(self):  # type: ignore[no-untyped-def]
            return False

        def add_callback(self, callback):  # type: ignore[no-untyped-def]
            return False

    back = from_rpc_error(Fake())
    assert type(back) is errors.NotFoundError and back.message == "nope"


class _ContextRaisingFlight(flight.FlightServerBase):
    """Raises as the runtime does: with the call's context, so the error gets its own code."""

    def __init__(self) -> None:
        super().__init__("grpc://127.0.0.1:0")
        self.error: errors.ModelRunnerError | None = None

    def do_action(self, context, action):  # type: ignore[no-untyped-def]
        assert self.error is not None
        raise to_flight_error(self.error, context)


_PYARROW_HAS_NO_TYPE_FOR = {
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNKNOWN,
}
"""Codes no pyarrow exception type gives a call: those errors arrive as UNKNOWN (their real
code in the trailer)."""


@pytest.fixture(scope="module")
def context_flight_server() -> Iterator[_ContextRaisingFlight]:
    server = _ContextRaisingFlight()
    yield server
    server.shutdown()


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_flight_errors_keep_their_type_and_get_their_status_code(
    context_flight_server: _ContextRaisingFlight, cls: type[errors.ModelRunnerError]
) -> None:
    from modelrunner.transport_errors import ERROR_TRAILER_KEY, ErrorTrailers

    context_flight_server.error = cls("input 'raw': got 3", details={"axis": "y"})
    address = f"127.0.0.1:{context_flight_server.port}"
    with (
        flight.connect(f"grpc://{address}", middleware=[ErrorTrailers()]) as client,
        pytest.raises(Exception) as caught,
    ):
        list(client.do_action(flight.Action("x", b"")))
    back = from_flight_error(caught.value)
    assert type(back) is cls
    assert (back.message, back.details) == ("input 'raw': got 3", {"axis": "y"})

    # what a client in any other language sees: the status code and the trailer
    channel = grpc.insecure_channel(address)
    call = channel.unary_stream("/arrow.flight.protocol.FlightService/DoAction")
    with pytest.raises(grpc.RpcError) as raw:
        list(call(b"\x0a\x01x", timeout=10))
    channel.close()
    expected = grpc.StatusCode.UNKNOWN if cls.code in _PYARROW_HAS_NO_TYPE_FOR else cls.code
    assert raw.value.code() == expected
    assert raw.value.details().startswith(f"[{cls.code.name}] input 'raw': got 3")
    trailer = dict(raw.value.trailing_metadata())[ERROR_TRAILER_KEY]
    assert from_rpc_error_trailer(trailer) == (cls.__name__, cls.code.name)


def from_rpc_error_trailer(data: bytes) -> tuple[str, str]:
    from modelrunner.v1 import models_pb2

    detail = models_pb2.ErrorDetail()
    detail.ParseFromString(data)
    return detail.type, detail.code


def test_long_errors_are_cut_to_fit_the_headers() -> None:
    from modelrunner.transport_errors import MAX_MESSAGE_BYTES, bounded

    error = errors.InvalidTensorError("\U0001f600" * 10_000, details={"got": "x" * 10_000})
    cut = bounded(error)
    assert type(cut) is errors.InvalidTensorError
    assert len(cut.message.encode()) <= MAX_MESSAGE_BYTES
    assert cut.message.endswith("…")
    assert len(cut.details["got"]) == 200
    assert error.message == "\U0001f600" * 10_000  # the original is left alone
