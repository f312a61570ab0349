"""The one place where transport errors become modelrunner errors, and back.

Control plane (gRPC): servers abort with the error's status code and attach a serialized
``ErrorDetail`` as trailing metadata ``modelrunner-error-bin``; :func:`from_rpc_error` rebuilds the
typed exception (falling back to the status code alone for other servers).

Data plane (Arrow Flight): :func:`to_flight_error` builds the Flight error to raise, its message
prefixed with the status code name and its ``extra_info`` a serialized ``ErrorDetail``;
:func:`from_flight_error` rebuilds the typed exception.
"""

from __future__ import annotations

import grpc
import pyarrow.flight as flight

from modelrunner import errors
from modelrunner.converters import from_pb_error, to_pb_error
from modelrunner.v1 import models_pb2

ERROR_TRAILER_KEY = "modelrunner-error-bin"


# -- gRPC -----------------------------------------------------------------------------------------


def error_trailer(exc: errors.ModelRunnerError) -> tuple[tuple[str, bytes]]:
    return ((ERROR_TRAILER_KEY, to_pb_error(exc).SerializeToString()),)


def from_rpc_error(exc: grpc.RpcError) -> errors.ModelRunnerError:
    """The typed error for a failed gRPC call (``exc`` is also a ``grpc.Call``)."""
    call: grpc.Call = exc  # type: ignore[assignment]
    try:
        trailers = call.trailing_metadata() or ()
    except Exception:  # noqa: BLE001 - some RpcErrors (e.g. from a closed channel) have none
        trailers = ()
    for key, value in trailers:
        if key == ERROR_TRAILER_KEY and isinstance(value, bytes):
            detail = models_pb2.ErrorDetail()
            detail.ParseFromString(value)
            return from_pb_error(detail)
    code = call.code() if hasattr(call, "code") else grpc.StatusCode.UNKNOWN
    details = call.details() if hasattr(call, "details") else str(exc)
    cls = errors.error_class_for(code)
    if code == grpc.StatusCode.UNAVAILABLE:
        return cls(f"control service unavailable: {details}")
    return cls(details or code.name)


# -- Arrow Flight -------------------------------------------------------------------------------

_FLIGHT_CLASS_BY_CODE: dict[grpc.StatusCode, type[flight.FlightError]] = {
    grpc.StatusCode.UNAVAILABLE: flight.FlightUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: flight.FlightTimedOutError,
    grpc.StatusCode.CANCELLED: flight.FlightCancelledError,
    grpc.StatusCode.INTERNAL: flight.FlightInternalError,
}


def to_flight_error(exc: errors.ModelRunnerError) -> flight.FlightError:
    """The Flight error a runtime raises for ``exc``."""
    cls = _FLIGHT_CLASS_BY_CODE.get(exc.code, flight.FlightServerError)
    return cls(f"[{exc.code.name}] {exc.message}", to_pb_error(exc).SerializeToString())


def from_flight_error(exc: BaseException) -> errors.ModelRunnerError:
    """The typed error for a failed Flight call."""
    extra = getattr(exc, "extra_info", b"") or b""
    if extra:
        detail = models_pb2.ErrorDetail()
        try:
            detail.ParseFromString(extra)
        except Exception:  # noqa: BLE001 - not ours: fall through to the class mapping
            detail = None  # type: ignore[assignment]
        if detail is not None and detail.code:
            return from_pb_error(detail)
    message = str(exc)
    if isinstance(exc, flight.FlightUnavailableError):
        return errors.UnavailableError(f"runtime unavailable: {message}")
    if isinstance(exc, flight.FlightTimedOutError):
        return errors.DeadlineExceededError(message)
    if isinstance(exc, flight.FlightCancelledError):
        return errors.CancelledError(message)
    if isinstance(exc, flight.FlightInternalError):
        return errors.InternalError(message)
    if isinstance(exc, OSError) and not isinstance(exc, flight.FlightError):
        return errors.UnavailableError(f"runtime unavailable: {message}")
    return errors.ModelRunnerError(message)
