"""Who may call what on the control service: bearer tokens checked by a gRPC server interceptor.

Every call but the health checks and server reflection carries ``authorization: Bearer <token>``
when ``settings.auth`` is on. The interceptor finds the caller's :class:`Identity` (a token from
the token file, or one of the server's own in-memory tokens: the embedded runtime's and the one
the control service presents to runtimes), checks the role the method needs (:data:`METHOD_ROLES`)
and hands the identity to the handler through :func:`current_identity`. An unknown method needs
``admin``. Without ``settings.auth`` every caller is :data:`~modelrunner.auth.ANONYMOUS`.

Errors leave as ``UnauthenticatedError`` / ``PermissionDeniedError`` through the error
interceptor, which runs outside this one.
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
from modelrunner.entry_server.token_store import TokenStore
from modelrunner.settings import Settings

logger = logging.getLogger(__name__)

_SERVICE = "/modelrunner.v1.ControlService/"
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
}
"""The roles that may call each method (admin may call all)."""
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
"""Methods anyone may call: health checks (for load balancers and orchestrators) and
reflection (the schema, which the .proto files publish anyway)."""

_IDENTITY: contextvars.ContextVar[Identity] = contextvars.ContextVar(
    "modelrunner_identity", default=ANONYMOUS
)


def current_identity() -> Identity:
    """The caller of the control-service call running in this thread."""
    return _IDENTITY.get()


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

    def issue_internal(self, name: str, role: Role) -> str:
        """A token valid until this process ends, never written anywhere (the embedded
        runtime's credential, and the one the control service presents to runtimes)."""
        token, token_id = new_token()
        identity = Identity(token_id=token_id, name=name, role=role, workspace=DEFAULT_WORKSPACE)
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


class AuthInterceptor(grpc.ServerInterceptor):
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
        role = METHOD_ROLES.get(method, (Role.ADMIN,))
        codecs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, role), **codecs
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, method, role), **codecs
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, method, role), **codecs
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._streaming(handler.stream_stream, method, role), **codecs
            )
        return handler

    def _caller(
        self, context: grpc.ServicerContext, method: str, roles: tuple[Role, ...]
    ) -> Identity:
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == AUTHORIZATION_HEADER:
                token = token_from_header(value)
                break
        identity = self._auth.identify(token)
        if not any(identity.role.allows(r) for r in roles):
            identity.require(roles[0], method.rsplit("/", 1)[-1])
        return identity

    def _unary(
        self, behavior: Callable[..., Any], method: str, role: tuple[Role, ...]
    ) -> Callable[..., Any]:
        def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
            reset = _IDENTITY.set(self._caller(context, method, role))
            try:
                return behavior(request, context)
            finally:
                _IDENTITY.reset(reset)

        return wrapper

    def _streaming(
        self, behavior: Callable[..., Iterator[Any]], method: str, role: tuple[Role, ...]
    ) -> Callable[..., Iterator[Any]]:
        def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            identity = self._caller(context, method, role)
            # A generator runs piecewise in grpc's thread: set the identity for each piece.
            responses = behavior(request, context)
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
