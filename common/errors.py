"""The one exception hierarchy of modelrunner, shared by the control service, the runtime and
the client.

Every error knows its gRPC status code. The control service maps them in one interceptor, the
runtime raises the matching Flight error through :func:`modelrunner.runtime_flight.exchange_calls.flight_errors`,
and the client turns both back into these types, so callers never see ``grpc.RpcError`` or
``pyarrow.flight.FlightError``::

    ModelRunnerError                    UNKNOWN
    ├── NotFoundError                   NOT_FOUND
    │   ├── ModelNotFoundError
    │   └── SourceNotFoundError
    ├── InvalidArgumentError            INVALID_ARGUMENT
    │   ├── InvalidSourceError
    │   ├── InvalidPackageError         (unsafe or malformed zip, not a model description)
    │   └── InvalidTensorError          (missing/unknown tensor, rank, dtype, size, NaN)
    ├── FailedPreconditionError         FAILED_PRECONDITION
    │   ├── ModelInUseError
    │   ├── CorruptModelError
    │   ├── DeviceNotAvailableError
    │   └── DestinationError            (the client's: an output image it must not overwrite)
    ├── UnauthenticatedError            UNAUTHENTICATED (no token, or one not known)
    ├── PermissionDeniedError           PERMISSION_DENIED (the token's role or workspace)
    ├── ResourceExhaustedError          RESOURCE_EXHAUSTED
    ├── UnavailableError                UNAVAILABLE (retrying may help)
    │   └── ServerShuttingDownError     (the server is draining: try again after its restart)
    ├── DeadlineExceededError           DEADLINE_EXCEEDED
    ├── CancelledError                  CANCELLED
    ├── InternalError                   INTERNAL
    └── FrameError                      the failed frame's own code (the client's: one failed
                                        frame of a stream; carries .frame and .cause)

``DestinationError`` and ``FrameError`` are raised by the client and never cross the wire (no
server sends them), so they are not among the classes a status is mapped back to.

Validation and test outcomes are reports (data), never exceptions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import grpc


class ModelRunnerError(Exception):
    """Base of every modelrunner error. ``details`` carries context such as tensor and axis."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, details: Mapping[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, str] = {k: str(v) for k, v in (details or {}).items()}

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class NotFoundError(ModelRunnerError):
    code = grpc.StatusCode.NOT_FOUND


class ModelNotFoundError(NotFoundError):
    """No model with this id (or prefix, or bioimage.io id) in the registry."""


class SourceNotFoundError(NotFoundError):
    """The path, URL or bioimage.io id to add a model from does not exist."""


class InvalidArgumentError(ModelRunnerError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidSourceError(InvalidArgumentError):
    """The model source cannot be understood (e.g. neither a path, a URL nor an id)."""


class InvalidPackageError(InvalidArgumentError):
    """The package is unsafe (path traversal, absolute paths, links) or not a valid model."""


class InvalidTensorError(InvalidArgumentError):
    """An input tensor does not fit the model: names the tensor, axis, expectation and value."""


class FailedPreconditionError(ModelRunnerError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ModelInUseError(FailedPreconditionError):
    """The model is in use (loaded or being served) and cannot be removed or evicted now."""


class CorruptModelError(FailedPreconditionError):
    """A cache entry's content does not match its hash."""


class DeviceNotAvailableError(FailedPreconditionError):
    """The requested device cannot run the model's weights in this runtime. A device the runtime
    does not have at all (``cuda:7``, ``tpu``) is the client's mistake: InvalidArgumentError."""


class UnauthenticatedError(ModelRunnerError):
    """The call carries no token, or one the server does not know (or that was revoked)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(ModelRunnerError):
    """The caller is known but may not do this: its role is too low, the model is in another
    workspace, or a path lies outside the server's allowed roots."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(ModelRunnerError):
    """A size limit was hit: upload size, unpacked size, cache budget, memory budget."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(ModelRunnerError):
    """A server, runtime or remote source cannot be reached right now; retrying may help.

    When it ends a frame stream (``predict_stream``), ``frames_answered`` is the number of frames
    whose answers (outputs or frame errors) the stream yielded before it: send the frames from
    that index on again, on a new stream. Elsewhere it is None."""

    code = grpc.StatusCode.UNAVAILABLE
    frames_answered: int | None = None


class ServerShuttingDownError(UnavailableError):
    """The server or runtime is shutting down (SIGTERM, Ctrl+C): it answered the work already
    under way and ended the call; a restarted or another runtime takes the next one."""


class DeadlineExceededError(ModelRunnerError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class CancelledError(ModelRunnerError):
    code = grpc.StatusCode.CANCELLED


class InternalError(ModelRunnerError):
    """A bug or an unexpected failure on the server; the message says what failed."""

    code = grpc.StatusCode.INTERNAL


class DestinationError(FailedPreconditionError):
    """The destination holds something this run must not overwrite."""


class FrameError(ModelRunnerError):
    """One frame of a stream failed; ``frame`` is its 0-based index, ``cause`` the error.

    The stream goes on: with ``on_error="raise"`` calling ``next()`` again gives the next frame's
    result; with ``on_error="yield"`` the error is yielded in the failed frame's place.
    """

    def __init__(self, frame: int, cause: ModelRunnerError) -> None:
        super().__init__(f"frame {frame} failed: {cause.message}", details=cause.details)
        self.frame = frame
        self.cause = cause
        self.code = cause.code  # type: ignore[misc]


_ALL_ERRORS: tuple[type[ModelRunnerError], ...] = (
    ModelRunnerError,
    NotFoundError,
    ModelNotFoundError,
    SourceNotFoundError,
    InvalidArgumentError,
    InvalidSourceError,
    InvalidPackageError,
    InvalidTensorError,
    FailedPreconditionError,
    ModelInUseError,
    CorruptModelError,
    DeviceNotAvailableError,
    UnauthenticatedError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
    ServerShuttingDownError,
    DeadlineExceededError,
    CancelledError,
    InternalError,
)
ERRORS_BY_NAME: dict[str, type[ModelRunnerError]] = {e.__name__: e for e in _ALL_ERRORS}
_ERRORS_BY_CODE: dict[grpc.StatusCode, type[ModelRunnerError]] = {
    ModelRunnerError.code: ModelRunnerError,
    NotFoundError.code: NotFoundError,
    InvalidArgumentError.code: InvalidArgumentError,
    FailedPreconditionError.code: FailedPreconditionError,
    UnauthenticatedError.code: UnauthenticatedError,
    PermissionDeniedError.code: PermissionDeniedError,
    ResourceExhaustedError.code: ResourceExhaustedError,
    UnavailableError.code: UnavailableError,
    DeadlineExceededError.code: DeadlineExceededError,
    CancelledError.code: CancelledError,
    InternalError.code: InternalError,
}


ECHO_LIMIT = 200
"""Most characters of a client's value that an error message or detail repeats."""


def clip(value: object, limit: int = ECHO_LIMIT) -> str:
    """``str(value)``, cut to ``limit`` characters (ending in "…") when longer: error messages
    and details repeat what a client sent, and a long value must not make the error itself
    too large to deliver (gRPC refuses headers over 16 KiB)."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_class_for(code: grpc.StatusCode, type_name: str = "") -> type[ModelRunnerError]:
    """The exception class for a type name sent by a server, else the one for its status code."""
    if type_name in ERRORS_BY_NAME:
        return ERRORS_BY_NAME[type_name]
    return _ERRORS_BY_CODE.get(code, ModelRunnerError)
