"""The Open Inference Protocol's plane: what the V2 servicer (:mod:`.open_inference`) calls,
transport free, as the control servicer calls :class:`.ControlPlane`. It answers readiness and
model metadata (from the control plane, as the caller may see them), holds the limits of V2 calls
and streams, and makes predictions for a caller: each request goes to the runtime the control
service routes the model to as the same ``PredictRequest``, and so the same runtime logic and
errors, as the Python client's ``predict``.

* The runtime embedded in this process (``modelrunner serve``) is called in process
  (:class:`LocalRuntime`, the runtime's data plane): it predicts on the request's arrays, views
  of the bytes protobuf hands out, with no Flight hop and no copy of its own. The caller's role
  and its right to the model were checked by the control service already (the interceptor, the
  routing), as the runtime would check them (``caller_auth``).
* Any other runtime is called through the runtime client (:mod:`modelrunner.runtime_client`),
  on sessions as the Python client keeps them, presenting the caller's own token, which the
  runtime checks as it checks every caller: forwarding adds no power a caller does not have.
  Each token gets its own runtime client (an open exchange is bound to the token that opened
  it); beyond :data:`MAX_CALLERS` tokens the least recently used ones that no call is using are
  closed. A call's cancellation reaches the runtime through its deadline only (a session's
  exchange outlives calls).

Routes are kept per caller's view (workspace) by the same policy as the Python client's
(:class:`~modelrunner.runtime_client.RouteCache`), for ``settings.auth_cache_s`` (the bound of
rights that follow a call, docs/security.md) where the client keeps them for
:data:`~modelrunner.runtime_client.ROUTE_TTL_S`: resolving a model costs a few index queries, as
much as moving a small frame. A model unpublished or taken out of a workspace is served to that
workspace's V2 callers for at most that long; a removed one not at all (its runtimes no longer
have it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from modelrunner import errors, types
from modelrunner.auth import ANONYMOUS, Identity, token_hash
from modelrunner.call_rights import CallRights
from modelrunner.entry_server.call_limits import InferenceCallLimits
from modelrunner.entry_server.control_plane import ControlPlane
from modelrunner.predict_request import PredictRequest
from modelrunner.runtime_client import Route, RouteCache, RuntimeClient, reachable_uri

MAX_CALLERS = 32
"""Tokens whose connections stay open at once."""
_MAX_INFOS = 256
"""Models whose tensors are kept by id."""
_LOCAL = "127.0.0.1:0"
"""A runtime announcing a wildcard host listens on loopback too: the control service's view."""


class PredictedOutputs(Protocol):
    @property
    def arrays(self) -> dict[str, np.ndarray]: ...


class LocalRuntime(Protocol):
    """A runtime in this process (its data plane, ``runtime_flight.service.RuntimeService``)."""

    def predict_whole(
        self, request: PredictRequest, *, cancelled: Callable[[], bool] = ...
    ) -> PredictedOutputs: ...


@dataclass(frozen=True)
class Target:
    """Where a request's model runs, and the model's tensors."""

    route: Route
    model: types.ModelInfo


@dataclass
class _Caller:
    client: RuntimeClient
    users: int = 0
    """Calls using the client now: it is closed only when none is."""


class InferencePlane:
    def __init__(self, control: ControlPlane) -> None:
        self._control = control
        self.settings = control.settings
        self.limits = InferenceCallLimits(control.settings)
        """How many V2 calls and streams may run at once (the servicer holds a slot per call)."""
        self._local: dict[str, LocalRuntime] = {}
        # the bound of rights that follow a call, not the client's ROUTE_TTL_S
        self._routes = RouteCache(ttl_s=control.settings.auth_cache_s)
        self._infos: dict[str, types.ModelInfo] = {}
        self._callers: OrderedDict[str, _Caller] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False

    def attach_local(self, runtime_id: str, runtime: LocalRuntime) -> None:
        """Call runtime ``runtime_id`` in process (the embedded runtime)."""
        self._local[runtime_id] = runtime

    # -- health and metadata -----------------------------------------------------------------

    def ready(self) -> bool:
        """Whether a runtime can predict (the health service's readiness)."""
        return self._control.available_runtimes() > 0

    def model(
        self, name: str, version: str = "", identity: Identity = ANONYMOUS
    ) -> types.ModelInfo:
        """The model's tensors, as the caller may see it (NOT_FOUND otherwise, and for a
        ``version`` it does not have)."""
        if not name:
            raise unnamed_model()
        model = self._control.model_info(name, identity)
        _check_version(name, version, model)
        return model

    def model_ready(self, name: str, version: str = "", identity: Identity = ANONYMOUS) -> bool:
        """Ready when the caller may use the model and a runtime can serve it; a model the
        caller may not see is as unready as one that does not exist."""
        if not self._control.available_runtimes():
            return False  # a probe answers now, without waiting
        try:
            self.model(name, version, identity)
            self._control.route(name, identity=identity)
        except (errors.NotFoundError, errors.UnavailableError):
            return False
        return True

    def stream_rights(self, token: str | None, method: str) -> CallRights:
        """The caller's right to go on streaming, asked again at most every ``auth_cache_s``: a
        revoked token (or a role changed) ends the stream with UNAUTHENTICATED
        (PERMISSION_DENIED)."""
        return CallRights(
            "", self._control.recheck(token, method), every_s=self.settings.auth_cache_s
        )

    # -- inference -----------------------------------------------------------------------------

    def target(self, request: PredictRequest, version: str, identity: Identity) -> Target:
        """Where the caller's model runs, and its tensors (NOT_FOUND for a model it may not see
        or a ``version`` it does not have)."""
        route = self.route(request, identity)
        model = self._by_id(route.model_id)
        _check_version(request.model_id, version, model)
        return Target(route, model)

    def route(self, request: PredictRequest, identity: Identity) -> Route:
        """Where the caller's model runs (NOT_FOUND for a model it may not see)."""
        key = (
            identity.workspace,
            identity.sees_all_workspaces(),
            request.model_id,
            request.weight_format,
            request.device,
        )
        return self._routes.get(
            key,
            lambda: self._control.route(
                request.model_id, request.weight_format, request.device, identity
            ),
        )

    def _by_id(self, model_id: str) -> types.ModelInfo:
        """A model's tensors by full id (a package's content never changes under its id)."""
        model = self._infos.get(model_id)
        if model is None:
            model = self._control.stored_model_info(model_id)
            if len(self._infos) >= _MAX_INFOS:
                self._infos.clear()
            self._infos[model_id] = model
        return model

    def predict(
        self,
        route: Route,
        request: PredictRequest,
        *,
        token: str | None = None,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> dict[str, np.ndarray]:
        """Predict the request's sample on the route's best runtime."""
        routed = request.with_model(route.model_id)
        try:
            local = self._local.get(route.runtime_id)
            if local is not None:
                return local.predict_whole(routed, cancelled=cancelled).arrays
            uri = reachable_uri(route.flight_uris[0], _LOCAL)
            with self._client_for(token) as client:
                return client.predict(uri, routed)
        except errors.UnavailableError:
            self._routes.forget(route)
            raise

    @contextmanager
    def _client_for(self, token: str | None) -> Iterator[RuntimeClient]:
        """The token's runtime client, in use for the block; the least recently used idle ones
        beyond :data:`MAX_CALLERS` are closed (keyed by the token's hash: no raw token kept as
        a key)."""
        key = token_hash(token) if token else ""
        idle: list[RuntimeClient] = []
        with self._lock:
            if self._closed:
                raise errors.UnavailableError("the control service is stopping")
            caller = self._callers.get(key)
            if caller is None:
                caller = _Caller(RuntimeClient(token=token, tls=self._control.runtime_tls))
                self._callers[key] = caller
            self._callers.move_to_end(key)
            caller.users += 1
            surplus = len(self._callers) - MAX_CALLERS
            for other_key in list(self._callers):
                if surplus <= 0:
                    break
                other = self._callers[other_key]
                if other.users == 0:
                    del self._callers[other_key]
                    idle.append(other.client)
                    surplus -= 1
        for client in idle:
            client.close()
        try:
            yield caller.client
        finally:
            with self._lock:
                caller.users -= 1
                orphaned = caller.users == 0 and self._callers.get(key) is not caller
            if orphaned:  # closed for the service's stop while in use
                caller.client.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = [c.client for c in self._callers.values() if c.users == 0]
            self._callers = OrderedDict()
        for client in idle:
            client.close()


def unnamed_model() -> errors.InvalidArgumentError:
    return errors.InvalidArgumentError(
        "name the model: its modelrunner id (or a unique prefix) or bioimage.io id"
    )


def _check_version(name: str, version: str, model: types.ModelInfo) -> None:
    if version and version != model.version:
        raise errors.ModelNotFoundError(
            f"model {name!r} has no version {version!r}"
            + (f"; it has {model.version!r}" if model.version else ""),
            details={"model_id": model.id, "version": version},
        )
