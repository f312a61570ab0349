"""Calls from the control service to a runtime's Arrow Flight actions (see ``runtime.proto``).

This is a transport edge: protobuf bodies go in and out here, ``types`` leave. Flight errors are
mapped with :func:`modelrunner.transport_errors.from_flight_error`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.flight as flight

from modelrunner import errors, types
from modelrunner.auth import AUTHORIZATION_HEADER, bearer
from modelrunner.converters import from_pb_report
from modelrunner.tls import ClientTls
from modelrunner.transport_errors import ErrorTrailers, from_flight_error
from modelrunner.v1 import control_pb2, runtime_pb2

TEST_MODEL_ACTION = "test_model"
UNLOAD_MODEL_ACTION = "unload_model"


@dataclass(frozen=True)
class RuntimeCaller:
    """How the control service calls runtimes: its own token (authentication on) and the TLS
    roots and client certificate it uses (TLS on)."""

    token: str | None = None
    tls: ClientTls | None = None

    def connect(self, flight_uri: str) -> flight.FlightClient:
        kwargs = self.tls.flight_kwargs() if self.tls is not None else {}
        # ErrorTrailers: the runtime's INVALID_ARGUMENT and NOT_FOUND carry their typed error in
        # a trailer (see modelrunner.transport_errors)
        return flight.FlightClient(flight_uri, middleware=[ErrorTrailers()], **kwargs)

    def options(self, timeout_s: float) -> flight.FlightCallOptions:
        headers = (
            [(AUTHORIZATION_HEADER.encode(), bearer(self.token).encode())] if self.token else []
        )
        return flight.FlightCallOptions(timeout=timeout_s, headers=headers)


NO_CREDENTIALS = RuntimeCaller()


def run_model_test_on_runtime(
    flight_uri: str,
    *,
    model_id: str,
    weight_format: str = "",
    device: str = "",
    timeout_s: float,
    caller: RuntimeCaller = NO_CREDENTIALS,
) -> types.ValidationReport:
    """Run bioimageio.core's model test on the runtime at ``flight_uri``; returns its report."""
    request = control_pb2.TestModelRequest(
        model_id=model_id, weight_format=weight_format, device=device
    )
    body = _do_action(flight_uri, TEST_MODEL_ACTION, request.SerializeToString(), timeout_s, caller)
    response = control_pb2.TestModelResponse()
    try:
        response.ParseFromString(body)
    except Exception as exc:
        raise errors.InternalError(
            f"runtime at {flight_uri} answered {TEST_MODEL_ACTION} with an unreadable body: {exc}"
        ) from exc
    return from_pb_report(response.report)


def remove_model_on_runtime(
    flight_uri: str, *, model_id: str, timeout_s: float, caller: RuntimeCaller = NO_CREDENTIALS
) -> tuple[int, int]:
    """Tell the runtime the model (a full id) is removed: it unloads it even while in use, ends
    the exchanges open on it and waits for its predictions in flight. Returns how many pipelines
    it unloaded and how many predictions it waited for."""
    request = runtime_pb2.UnloadModelRequest(model_id=model_id, removed=True)
    body = _do_action(
        flight_uri, UNLOAD_MODEL_ACTION, request.SerializeToString(), timeout_s, caller
    )
    response = runtime_pb2.UnloadModelResponse()
    response.ParseFromString(body)
    return response.unloaded, response.calls_in_flight


def _do_action(
    flight_uri: str, action: str, body: bytes, timeout_s: float, caller: RuntimeCaller
) -> bytes:
    try:
        client = caller.connect(flight_uri)
    except (pa.ArrowException, ValueError) as exc:
        raise errors.UnavailableError(
            f"runtime address {flight_uri!r} is unusable: {exc}", details={"flight_uri": flight_uri}
        ) from exc
    try:
        results = list(
            client.do_action(flight.Action(action, body), options=caller.options(timeout_s))
        )
    except (flight.FlightError, pa.ArrowInvalid, pa.ArrowKeyError, OSError) as exc:
        raise from_flight_error(exc) from exc
    finally:
        client.close()
    if not results:
        raise errors.InternalError(f"runtime at {flight_uri} answered {action} with no result")
    return results[0].body.to_pybytes()
