"""The gRPC edge's authentication: an interceptor that identifies every call's caller with the
plane's :class:`~modelrunner.entry_server.authentication.Authenticator`, checks the role the
method needs (``METHOD_ROLES``) and hands the identity to the handler through
:func:`current_identity`.

A refused call ends with ``UnauthenticatedError`` / ``PermissionDeniedError`` (status, message
and the ``modelrunner-error-bin`` trailer, as every error) before its request is read.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from modelrunner import errors
from modelrunner.auth import AUTHORIZATION_HEADER, Identity, Role, token_from_header
from modelrunner.entry_server.authentication import METHOD_ROLES, V2_SERVICE_PREFIX, Authenticator
from modelrunner.entry_server.edge.error_interceptor import abort
from modelrunner.entry_server.edge.handler_wrapping import rewrapped

OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
    # the Open Inference Protocol's liveness and readiness: its health checks
    f"{V2_SERVICE_PREFIX}ServerLive",
    f"{V2_SERVICE_PREFIX}ServerReady",
)
"""Methods anyone may call: health checks (for load balancers and orchestrators) and
reflection (the schema, which the .proto files publish anyway)."""

_IDENTITY: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "modelrunner_identity", default=None
)


def current_identity() -> Identity:
    """The caller of the control-service call running in this thread (ANONYMOUS, an admin,
    only when authentication is off). Outside a call it fails rather than fall back to
    anyone: a thread a handler starts must be handed the identity."""
    identity = _IDENTITY.get()
    if identity is None:
        raise errors.InternalError("no caller identity: this code runs outside a call")
    return identity


class AuthInterceptor(grpc.ServerInterceptor):
    """The outermost interceptor: the caller is identified from the call's metadata before
    anything reads its request, so a caller without a valid token is refused
    (UNAUTHENTICATED / PERMISSION_DENIED) without its body being parsed or a stream read."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        try:
            identity = self._caller(handler_call_details)
        except errors.ModelRunnerError as exc:
            return _refusing(handler, exc, method)
        return rewrapped(
            handler,
            lambda behavior, _, response_streaming: (_streaming_as if response_streaming else _as)(
                identity, behavior
            ),
        )

    def _caller(self, details: grpc.HandlerCallDetails) -> Identity:
        token = None
        for key, value in details.invocation_metadata or ():
            if key == AUTHORIZATION_HEADER:
                token = token_from_header(value)
                break
        identity = self._auth.identify(token)
        roles = METHOD_ROLES.get(details.method, (Role.ADMIN,))
        identity.require(roles, details.method.rsplit("/", 1)[-1])
        return identity


def _as(identity: Identity, behavior: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
        reset = _IDENTITY.set(identity)
        try:
            return behavior(request, context)
        finally:
            _IDENTITY.reset(reset)

    return wrapper


def _streaming_as(
    identity: Identity, behavior: Callable[..., Iterator[Any]]
) -> Callable[..., Iterator[Any]]:
    def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        # A generator runs piecewise in grpc's thread: set the identity for each piece.
        reset = _IDENTITY.set(identity)
        try:
            responses = behavior(request, context)
        finally:
            _IDENTITY.reset(reset)
        while True:
            reset = _IDENTITY.set(identity)
            try:
                response = next(responses)
            except StopIteration:
                return
            finally:
                _IDENTITY.reset(reset)
            yield response

    return wrapper


def _refusing(
    handler: grpc.RpcMethodHandler, error: errors.ModelRunnerError, method: str
) -> grpc.RpcMethodHandler:
    """A handler of the same kind that ends the call with ``error``, reading no request (its
    body arrives as raw bytes, never parsed; a request stream is never read)."""

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        abort(context, error, method)

    return rewrapped(handler, lambda *_: refuse, request_deserializer=None)
