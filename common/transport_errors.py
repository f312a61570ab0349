"""The one place where transport errors become modelrunner errors, and back.

Control plane (gRPC): servers abort with the error's status code and attach a serialized
``ErrorDetail`` as trailing metadata ``modelrunner-error-bin``; :func:`from_rpc_error` rebuilds the
typed exception (falling back to the status code alone for other servers).

Data plane (Arrow Flight): :func:`to_flight_error` builds the exception a runtime raises, its
message prefixed with the status code name. pyarrow's server gives a call the status code of the
exception's type, and only its Flight error types carry ``extra_info`` (sent as
``grpc-status-details-bin``), so:

* UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, INTERNAL, UNAUTHENTICATED, PERMISSION_DENIED: the
  matching Flight error, ``extra_info`` a serialized ``RpcStatus`` (``google.rpc.Status``, which
  gRPC libraries parse from that trailer) holding the ``ErrorDetail``;
* INVALID_ARGUMENT and NOT_FOUND: ``ArrowInvalid`` and ``ArrowKeyError`` (the only types pyarrow
  gives these codes), the ``ErrorDetail`` in the ``modelrunner-error-bin`` trailer;
* FAILED_PRECONDITION, RESOURCE_EXHAUSTED and UNKNOWN, for which pyarrow has no type: UNKNOWN
  (``FlightServerError``), the ``RpcStatus`` with the real code in ``extra_info``, and the
  trailer.

Every Flight error also carries the trailer when the server passes its call context, so a client
in any language reads one trailer on both planes. :func:`from_flight_error` rebuilds the typed
exception from ``extra_info``, from the trailer (kept by the :class:`ErrorTrailers` client
middleware), or from the message alone.

Errors repeat what clients sent; :func:`bounded` cuts messages and details so that an error never
outgrows gRPC's header limits (a client would see only "Stream removed").

Clients (the Python client, the runtime client) translate what they catch in one context,
:func:`translated_errors`.
"""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.flight as flight
from google.protobuf import any_pb2

from modelrunner import errors
from modelrunner.converters import from_pb_error, to_pb_error
from modelrunner.v1 import models_pb2

ERROR_TRAILER_KEY = "modelrunner-error-bin"
MAX_MESSAGE_BYTES = 1024
"""Longest error message sent (UTF-8 bytes); longer ones are cut, ending in "…"."""
MAX_DETAIL_CHARS = errors.ECHO_LIMIT
MAX_DETAILS_BYTES = 2048
"""Details beyond this many bytes (UTF-8, keys and values) are left out."""


def bounded(exc: errors.ModelRunnerError) -> errors.ModelRunnerError:
    """``exc``, or a copy of it whose message and details are cut to the limits above."""
    message = _clip_bytes(exc.message, MAX_MESSAGE_BYTES)
    details: dict[str, str] = {}
    size = 0
    for key, value in exc.details.items():
        k, v = errors.clip(key, 64), errors.clip(value, MAX_DETAIL_CHARS)
        size += len(k.encode()) + len(v.encode())
        if size > MAX_DETAILS_BYTES:
            break
        details[k] = v
    if message == exc.message and details == exc.details:
        return exc
    cut = copy.copy(exc)
    cut.message, cut.details, cut.args = message, details, (message,)
    return cut


def _clip_bytes(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "…"


# -- gRPC -----------------------------------------------------------------------------------------


def error_trailer(exc: errors.ModelRunnerError) -> tuple[tuple[str, bytes]]:
    return ((ERROR_TRAILER_KEY, to_pb_error(bounded(exc)).SerializeToString()),)


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
    grpc.StatusCode.UNAUTHENTICATED: flight.FlightUnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: flight.FlightUnauthorizedError,
}


class _NotFound(pa.ArrowKeyError):  # type: ignore[misc]
    """NOT_FOUND on Flight; its text without the quotes ``KeyError`` puts around it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


_ARROW_CLASS_BY_CODE: dict[grpc.StatusCode, type[Exception]] = {
    grpc.StatusCode.INVALID_ARGUMENT: pa.ArrowInvalid,
    grpc.StatusCode.NOT_FOUND: _NotFound,
}
_CODE_BY_ARROW_CLASS: dict[type[Exception], type[errors.ModelRunnerError]] = {
    pa.ArrowInvalid: errors.InvalidArgumentError,
    pa.ArrowKeyError: errors.NotFoundError,
}


def to_flight_error(
    exc: errors.ModelRunnerError, context: flight.ServerCallContext | None = None
) -> Exception:
    """The exception a runtime raises for ``exc`` (see the module docstring). Without the call's
    ``context`` no trailer can be added: every error is then a Flight error with ``extra_info``
    (INVALID_ARGUMENT and NOT_FOUND then arrive as UNKNOWN)."""
    exc = bounded(exc)
    detail = to_pb_error(exc)
    text = f"[{exc.code.name}] {exc.message}"
    if context is not None:
        context.add_trailer(ERROR_TRAILER_KEY, detail.SerializeToString())
        arrow_class = _ARROW_CLASS_BY_CODE.get(exc.code)
        if arrow_class is not None:
            return arrow_class(text)
    cls = _FLIGHT_CLASS_BY_CODE.get(exc.code, flight.FlightServerError)
    return cls(text, rpc_status(exc, detail))


ERROR_DETAIL_TYPE_URL = "type.googleapis.com/modelrunner.v1.ErrorDetail"


def rpc_status(exc: errors.ModelRunnerError, detail: models_pb2.ErrorDetail) -> bytes:
    """A serialized google.rpc.Status for ``exc``: its real code (a Flight call's status may be
    UNKNOWN for want of a pyarrow type), its message, and the ErrorDetail."""
    status = models_pb2.RpcStatus(code=exc.code.value[0], message=exc.message)
    status.details.append(
        any_pb2.Any(type_url=ERROR_DETAIL_TYPE_URL, value=detail.SerializeToString())
    )
    return status.SerializeToString()


_trailers = threading.local()


class ErrorTrailers(flight.ClientMiddlewareFactory):  # type: ignore[misc]
    """Client middleware keeping the ``modelrunner-error-bin`` trailer of this thread's last
    call, for :func:`from_flight_error` (pyarrow hands trailers to middleware only)."""

    def start_call(self, info: flight.CallInfo) -> flight.ClientMiddleware:
        _trailers.detail = None
        return _TrailerReader()


class _TrailerReader(flight.ClientMiddleware):  # type: ignore[misc]
    def received_headers(self, headers: dict[str, Any]) -> None:
        values = headers.get(ERROR_TRAILER_KEY)
        if values:
            value = values[-1]
            _trailers.detail = value if isinstance(value, bytes) else str(value).encode()


def _parsed_detail(data: bytes) -> models_pb2.ErrorDetail | None:
    detail = models_pb2.ErrorDetail()
    try:
        detail.ParseFromString(data)
    except Exception:  # noqa: BLE001 - not ours: fall through to the class mapping
        return None
    return detail if detail.code else None


_PYARROW_SUFFIX = re.compile(r"\. Detail: (Python exception: |[A-Za-z]+$).*", re.DOTALL)
_CODE_PREFIX = re.compile(r"^\[[A-Z_]+\] ")


def _text(exc: BaseException) -> str:
    # str() of a KeyError is the repr of its text
    return exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)


def flight_message(exc: BaseException) -> str:
    """An error's message without what pyarrow adds (". Detail: ...", a traceback) and without
    the code prefix."""
    return _CODE_PREFIX.sub("", _PYARROW_SUFFIX.sub("", _text(exc), count=1))


def _detail_of_status(data: bytes) -> models_pb2.ErrorDetail | None:
    """The ErrorDetail inside a serialized RpcStatus (a runtime's ``extra_info``)."""
    status = models_pb2.RpcStatus()
    try:
        status.ParseFromString(data)
    except Exception:  # noqa: BLE001 - not a status: no detail of ours
        return None
    for any_detail in status.details:
        if any_detail.type_url == ERROR_DETAIL_TYPE_URL:
            return _parsed_detail(any_detail.value)
    return None


def from_flight_error(exc: BaseException) -> errors.ModelRunnerError:
    """The typed error for a failed Flight call."""
    detail = _detail_of_status(getattr(exc, "extra_info", b"") or b"")
    if detail is None:
        received = getattr(_trailers, "detail", None)
        _trailers.detail = None
        candidate = _parsed_detail(received) if received else None
        # the trailer is this thread's last call's: it must be this error's
        if candidate is not None and f"[{candidate.code}] {candidate.message}" in _text(exc):
            detail = candidate
    if detail is not None:
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
    for arrow_class, cls in _CODE_BY_ARROW_CLASS.items():
        if isinstance(exc, arrow_class):
            return cls(flight_message(exc))
    if isinstance(exc, OSError) and not isinstance(exc, flight.FlightError):
        return errors.UnavailableError(f"runtime unavailable: {message}")
    return errors.ModelRunnerError(message)


@contextmanager
def translated_errors() -> Iterator[None]:
    """Re-raise ``grpc.RpcError`` and Flight/Arrow errors as :class:`ModelRunnerError`: where a
    client turns the transports' exceptions into modelrunner's typed errors."""
    try:
        yield
    except errors.ModelRunnerError:
        raise
    except grpc.RpcError as e:
        raise from_rpc_error(e) from None
    except (flight.FlightError, pa.ArrowInvalid, pa.ArrowKeyError) as e:
        # a runtime's INVALID_ARGUMENT and NOT_FOUND arrive as ArrowInvalid and ArrowKeyError
        raise from_flight_error(e) from None
    except pa.ArrowException as e:
        raise errors.ModelRunnerError(str(e)) from None


def typed_error(error: BaseException) -> BaseException:
    """``error`` as :func:`translated_errors` would raise it (other exceptions as they are), for
    a thread that hands an error to another: translate it in the thread that caught it, where
    the call's error trailer is kept."""
    try:
        with translated_errors():
            raise error
    except errors.ModelRunnerError as typed:
        return typed
    except BaseException:  # noqa: BLE001 - not a transport error: handed on as it is
        return error
