"""Who may call what on the control service: bearer tokens checked by a gRPC server interceptor.

Every call but the health checks and server reflection carries ``authorization: Bearer <token>``
when ``settings.auth`` is on. The interceptor finds the caller's :class:`Identity` (a token from
the token file, or one of the server's own in-memory tokens: the embedded runtime's and the one
the control service presents to runtimes), checks the role the method needs (:data:`METHOD_ROLES`)
and hands the identity to the handler through :func:`current_identity`. An unknown method needs
``admin``. Without ``settings.auth`` every caller is :data:`~modelrunner.auth.ANONYMOUS`.

A refused call ends with ``UnauthenticatedError`` / ``PermissionDeniedError`` (status, message
and the ``modelrunner-error-bin`` trailer, as every error) before its request is read.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from modelrunner import errors
from modelrunner.auth import (
    ANONYMOUS,
    AUTHORIZATION_HEADER,
    DEFAULT_WORKSPACE,
    Identity,
    Role,
    new_token,
    token_from_header,
    token_hash,
)
from modelrunner.call_rights import Recheck
from modelrunner.entry_server.edge.error_interceptor import abort
from modelrunner.entry_server.edge.handler_wrapping import rewrapped
from modelrunner.entry_server.token_store import TokenStore
from modelrunner.settings import Settings

logger = logging.getLogger(__name__)

_SERVICE = "/modelrunner.v1.ControlService/"
_V2_SERVICE = "/inference.GRPCInferenceService/"
METHOD_ROLES: dict[str, tuple[Role, ...]] = {
    f"{_SERVICE}AddModel": (Role.WRITE,),
    f"{_SERVICE}UploadPackage": (Role.WRITE,),
    f"{_SERVICE}RemoveModel": (Role.WRITE,),
    f"{_SERVICE}ListModels": (Role.READ,),
    f"{_SERVICE}DescribeModel": (Role.READ,),
    f"{_SERVICE}ValidateModel": (Role.READ,),
    f"{_SERVICE}GetServerInfo": (Role.READ,),
    f"{_SERVICE}TestModel": (Role.READ,),
    # runtimes resolve model ids (prefixes, bioimage.io ids) through routes
    f"{_SERVICE}GetModelRoute": (Role.READ, Role.RUNTIME),
    f"{_SERVICE}PublishModel": (Role.ADMIN,),
    f"{_SERVICE}RegisterRuntime": (Role.RUNTIME,),
    f"{_SERVICE}FetchModelPackage": (Role.RUNTIME,),
    f"{_SERVICE}CheckCaller": (Role.RUNTIME,),
    # the Open Inference Protocol: predictions and model metadata, like Flight and DescribeModel
    f"{_V2_SERVICE}ServerMetadata": (Role.READ,),
    f"{_V2_SERVICE}ModelReady": (Role.READ,),
    f"{_V2_SERVICE}ModelMetadata": (Role.READ,),
    f"{_V2_SERVICE}ModelInfer": (Role.READ,),
    f"{_V2_SERVICE}ModelStreamInfer": (Role.READ,),
}
"""The roles that may call each method (admin may call all)."""
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
    # the Open Inference Protocol's liveness and readiness: its health checks
    f"{_V2_SERVICE}ServerLive",
    f"{_V2_SERVICE}ServerReady",
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


class Authenticator:
    """Tokens the control service accepts: the token file's and its own in-memory ones."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth
        self.store = TokenStore(settings.effective_tokens_file)
        self._internal: dict[str, Identity] = {}
        self._lock = threading.Lock()
        if self.enabled and not self.store.records():
            logger.warning(
                "authentication is on but %s holds no token: create one with "
                "`modelrunner token create NAME --role admin`",
                self.store.path,
            )

    def issue_internal(self, name: str, role: Role, *, audience: str = "") -> str:
        """A token valid until this process ends, never written anywhere (the embedded
        runtime's credential, and the ``control`` tokens the control service presents to
        runtimes, one per runtime: ``audience``)."""
        token, token_id = new_token()
        identity = Identity(
            token_id=token_id,
            name=name,
            role=role,
            workspace=DEFAULT_WORKSPACE,
            audience=audience,
        )
        with self._lock:
            self._internal[token_hash(token)] = identity
        return token

    def identify(self, token: str | None) -> Identity:
        """The caller holding ``token``; ANONYMOUS when authentication is off."""
        if not self.enabled:
            return ANONYMOUS
        if not token:
            raise errors.UnauthenticatedError(
                "this server requires a token: pass token= to the client, set "
                "MODELRUNNER_TOKEN, or send the metadata 'authorization: Bearer <token>'"
            )
        with self._lock:
            internal = self._internal.get(token_hash(token))
        identity = internal or self.store.authenticate(token)
        if identity is None:
            raise errors.UnauthenticatedError("the token is not known to this server (revoked?)")
        return identity

    def recheck(self, token: str | None, method: str) -> Recheck | None:
        """For a call that stays open (an Open Inference stream): whether ``token`` may still
        call ``method`` (revoked, or its role changed since the call opened); None when
        authentication is off."""
        if not self.enabled:
            return None
        roles = METHOD_ROLES.get(method, (Role.ADMIN,))
        what = method.rsplit("/", 1)[-1]
        return lambda: self.identify(token).require(roles, what)


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
