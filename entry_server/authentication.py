"""Who may call what on the control service: the tokens it accepts (:class:`Authenticator`) and
the roles each method needs (:data:`METHOD_ROLES`). The control plane owns the authenticator;
the gRPC edge's interceptor (:mod:`.edge.auth_interceptor`) asks it about every call.

Every call but the health checks and server reflection carries ``authorization: Bearer <token>``
when ``settings.auth`` is on. The caller's :class:`Identity` comes from a token of the token file,
or one of the server's own in-memory tokens: the embedded runtime's and the one the control
service presents to runtimes. An unknown method needs ``admin``. Without ``settings.auth`` every
caller is :data:`~modelrunner.auth.ANONYMOUS`.
"""

from __future__ import annotations

import logging
import threading

from modelrunner import errors
from modelrunner.auth import (
    ANONYMOUS,
    DEFAULT_WORKSPACE,
    Identity,
    Role,
    new_token,
    token_hash,
)
from modelrunner.call_rights import Recheck
from modelrunner.entry_server.token_store import TokenStore
from modelrunner.settings import Settings

logger = logging.getLogger(__name__)

_SERVICE = "/modelrunner.v1.ControlService/"
V2_SERVICE_PREFIX = "/inference.GRPCInferenceService/"
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
    f"{V2_SERVICE_PREFIX}ServerMetadata": (Role.READ,),
    f"{V2_SERVICE_PREFIX}ModelReady": (Role.READ,),
    f"{V2_SERVICE_PREFIX}ModelMetadata": (Role.READ,),
    f"{V2_SERVICE_PREFIX}ModelInfer": (Role.READ,),
    f"{V2_SERVICE_PREFIX}ModelStreamInfer": (Role.READ,),
}
"""The roles that may call each method (admin may call all)."""


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
