"""The one place where exceptions of the control service become gRPC statuses.

``ModelRunnerError``: its status code and message, with the serialized ``ErrorDetail`` as trailing
metadata (``modelrunner-error-bin``), so clients rebuild the typed exception. Anything else is a
bug: INTERNAL with a message naming the method and the exception; the traceback is logged here.
Unary and streaming handlers alike.

Requests are parsed here, not by gRPC: a request gRPC cannot parse would otherwise fail before
any handler runs, as INTERNAL ("Exception deserializing request"). Malformed protobuf is the
client's mistake: INVALID_ARGUMENT, for unary and streamed requests alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from modelrunner import errors
from modelrunner.entry_server.edge.handler_wrapping import Behavior, rewrapped
from modelrunner.transport_errors import bounded, error_trailer

logger = logging.getLogger(__name__)


class ErrorInterceptor(grpc.ServerInterceptor):
    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        parse = handler.request_deserializer

        def wrap(behavior: Behavior, request_streaming: bool, response_streaming: bool) -> Behavior:
            parsing = _parsing_each if request_streaming else _parsing_one
            mapping = _streaming if response_streaming else _unary
            return mapping(parsing(behavior, parse, method), method)

        # no deserializer: gRPC hands the behaviour the request's bytes, which it parses
        return rewrapped(handler, wrap, request_deserializer=None)


Parse = Callable[[bytes], Any] | None


def _parsed(parse: Parse, data: Any, method: str) -> Any:
    if parse is None:
        return data
    try:
        return parse(data)
    except (DecodeError, ValueError, TypeError) as e:
        name = method.rsplit("/", 1)[-1]
        raise errors.InvalidArgumentError(
            f"{name}: the request is not a valid protobuf message: {errors.clip(e)}",
            details={"method": method},
        ) from None


def _parsing_one(behavior: Behavior, parse: Parse, method: str) -> Behavior:
    def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
        return behavior(_parsed(parse, request, method), context)

    return wrapper


def _parsing_each(behavior: Behavior, parse: Parse, method: str) -> Behavior:
    def wrapper(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        return behavior((_parsed(parse, r, method) for r in requests), context)

    return wrapper


def _unary(behavior: Behavior, method: str) -> Behavior:
    def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        except Exception as exc:  # noqa: BLE001 - every failure must become a status
            abort(context, exc, method)

    return wrapper


def _streaming(
    behavior: Behavior, method: str
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behavior(request, context)
        except Exception as exc:  # noqa: BLE001 - every failure must become a status
            abort(context, exc, method)

    return wrapper


def abort(context: grpc.ServicerContext, exc: Exception, method: str) -> NoReturn:
    """End the call with the status for ``exc`` (``context.abort`` raises)."""
    if isinstance(exc, errors.ModelRunnerError):
        # a path refused by path_source_roots is how a client learns to upload (it does so
        # at once): no line in the server's log for it
        routine = exc.details.get("setting") == "path_source_roots"
        logger.log(
            logging.DEBUG if routine else logging.INFO,
            "%s: %s: %s",
            method,
            type(exc).__name__,
            exc.message,
        )
        error = exc
    elif context.code() is not None:
        # Already aborted (context.abort raises a bare Exception): let grpc finish the call.
        raise exc
    elif not context.is_active():
        # The client cancelled or its deadline passed; what broke is the missing peer, no bug.
        logger.info("%s ended early (%s: %s)", method, type(exc).__name__, exc)
        error = errors.CancelledError(f"{method} was cancelled by the client")
    else:
        logger.error("%s failed unexpectedly", method, exc_info=exc)
        error = errors.InternalError(f"{method} failed: {type(exc).__name__}: {errors.clip(exc)}")
    # bounded: errors repeat what clients sent, and gRPC refuses headers over 16 KiB
    error = bounded(error)
    context.set_trailing_metadata(error_trailer(error))
    context.abort(error.code, error.message)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises
