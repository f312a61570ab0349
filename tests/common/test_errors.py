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
