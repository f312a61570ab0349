"""Predictions the control service makes for a caller: the Open Inference Protocol endpoint
(:mod:`.open_inference`) hands each request here, and it goes to the runtime the control service
routes the model to with the same command, and so the same runtime logic and errors, as the
Python client's ``predict``.

* The runtime embedded in this process (``modelrunner serve``) is called in process
  (:class:`LocalRuntime`): its service predicts on the request's arrays, views of the bytes
  protobuf hands out, with no Flight hop and no copy of its own. The caller's role and its
  right to the model were checked by the control service already (the interceptor, the
  routing), as the runtime would check them (``caller_auth``).
* Any other runtime is called over Arrow Flight, on sessions as the Python client keeps them,
  presenting the caller's own token, which the runtime checks as it checks every caller:
  forwarding adds no power a caller does not have. Each token gets its own Flight connections
  and sessions (an open exchange is bound to the token that opened it); beyond
  :data:`MAX_CALLERS` tokens the least recently used ones that no call is using are closed.
  A call's cancellation reaches the runtime through its deadline only (a session's exchange
  outlives calls).

Routes are kept per caller's view (workspace) for ``settings.auth_cache_s`` (the bound of
rights that follow a call, docs/security.md), as the Python client keeps them for longer:
resolving a model costs a few index queries, as much as moving a small frame. A model
unpublished or taken out of a workspace is served to that workspace's V2 callers for at most
that long; a removed one not at all (its runtimes no longer have it).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from modelrunner import errors
from modelrunner.auth import Identity, token_hash
from modelrunner.client._flight import (
    RuntimeConnections,
    exchange_predict,
    predict_command,
    reachable_uri,
)
from modelrunner.client._sessions import fits_session
from modelrunner.entry_server.control_plane import ControlPlane, Route
from modelrunner.v1 import runtime_pb2
from modelrunner.wire import DEFAULT_BATCH_BYTES

MAX_CALLERS = 32
"""Tokens whose connections stay open at once."""
MAX_ROUTES = 1024
_LOCAL = "127.0.0.1:0"
"""A runtime announcing a wildcard host listens on loopback too: the control service's view."""


@dataclass(frozen=True)
class PredictOptions:
    """How to compute one sample: the settings of ``PredictCommand`` a V2 request may set."""

    weight_format: str = ""
    device: str = ""
    blocksize: int | None = None
    nan_policy: str = "reject"
    reference_path: bool = False
    precision: str = ""
    timeout_s: float | None = None


class PredictedOutputs(Protocol):
    @property
    def arrays(self) -> dict[str, np.ndarray]: ...


class LocalRuntime(Protocol):
    """A runtime in this process (``runtime_flight.service.RuntimeService``)."""

    def predict_whole(
        self,
        command: runtime_pb2.PredictCommand,
        arrays: dict[str, np.ndarray],
        dims: Mapping[str, tuple[str, ...]],
        *,
        cancelled: Callable[[], bool] = ...,
    ) -> PredictedOutputs: ...


_RouteKey = tuple[str, bool, str, str, str]


@dataclass
class _Caller:
    connections: RuntimeConnections
    users: int = 0
    """Calls using the connections now: they are closed only when none is."""


@dataclass
class RuntimeForwarding:
    control: ControlPlane
    _local: dict[str, LocalRuntime] = field(default_factory=dict)
    _routes: OrderedDict[_RouteKey, tuple[float, Route]] = field(default_factory=OrderedDict)
    _callers: OrderedDict[str, _Caller] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def attach_local(self, runtime_id: str, runtime: LocalRuntime) -> None:
        """Call runtime ``runtime_id`` in process (the embedded runtime)."""
        self._local[runtime_id] = runtime

    def route(self, model_ref: str, options: PredictOptions, identity: Identity) -> Route:
        """Where the caller's ``model_ref`` runs (NOT_FOUND for a model it may not see)."""
        key = (
            identity.workspace,
            identity.sees_all_workspaces(),
            model_ref,
            options.weight_format,
            options.device,
        )
        now = time.monotonic()
        with self._lock:
            kept = self._routes.get(key)
        if kept is not None and now - kept[0] < self.control.settings.auth_cache_s:
            return kept[1]
        route = self.control.route(model_ref, options.weight_format, options.device, identity)
        with self._lock:
            self._routes[key] = (now, route)
            self._routes.move_to_end(key)
            while len(self._routes) > MAX_ROUTES:
                self._routes.popitem(last=False)
        return route

    def _forget_route(self, route: Route) -> None:
        with self._lock:
            for key in [k for k, (_, r) in self._routes.items() if r == route]:
                del self._routes[key]

    def predict(
        self,
        route: Route,
        arrays: Mapping[str, np.ndarray],
        dim_names: Mapping[str, tuple[str, ...]],
        options: PredictOptions,
        *,
        token: str | None = None,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> dict[str, np.ndarray]:
        """Predict one sample on the route's best runtime."""
        command = predict_command(
            route.model_id,
            options.weight_format,
            options.device,
            nan_policy=options.nan_policy,
            blocksize=options.blocksize,
            reference_path=options.reference_path,
            precision=options.precision,
        )
        try:
            local = self._local.get(route.runtime_id)
            if local is not None:
                return local.predict_whole(
                    command, dict(arrays), dim_names, cancelled=cancelled
                ).arrays
            return self._over_flight(route, command, arrays, dim_names, options, token)
        except errors.UnavailableError:
            self._forget_route(route)
            raise

    def _over_flight(
        self,
        route: Route,
        command: runtime_pb2.PredictCommand,
        arrays: Mapping[str, np.ndarray],
        dim_names: Mapping[str, tuple[str, ...]],
        options: PredictOptions,
        token: str | None,
    ) -> dict[str, np.ndarray]:
        uri = reachable_uri(route.flight_uris[0], _LOCAL)
        with self._connections(token) as connections:
            client = connections.get(uri)
            try:
                if fits_session(arrays):
                    command.session = True
                    return connections.sessions.predict(
                        client,
                        uri,
                        command,
                        arrays,
                        dim_names,
                        timeout=options.timeout_s,
                        batch_bytes=DEFAULT_BATCH_BYTES,
                    )
                return exchange_predict(
                    client,
                    command,
                    arrays,
                    dim_names,
                    timeout=options.timeout_s,
                    batch_bytes=DEFAULT_BATCH_BYTES,
                    progress=None,
                    calls=connections.calls,
                )
            except errors.UnavailableError:
                connections.drop(uri)  # the runtime went away: reconnect next time
                raise

    @contextmanager
    def _connections(self, token: str | None) -> Iterator[RuntimeConnections]:
        """The token's connections, in use for the block; the least recently used idle ones
        beyond :data:`MAX_CALLERS` are closed (keyed by the token's hash: no raw token kept
        as a key)."""
        key = token_hash(token) if token else ""
        idle: list[RuntimeConnections] = []
        with self._lock:
            if self._closed:
                raise errors.UnavailableError("the control service is stopping")
            caller = self._callers.get(key)
            if caller is None:
                caller = _Caller(RuntimeConnections(token=token, tls=self.control.runtime_tls))
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
                    idle.append(other.connections)
                    surplus -= 1
        for connections in idle:
            connections.close()
        try:
            yield caller.connections
        finally:
            with self._lock:
                caller.users -= 1
                orphaned = caller.users == 0 and self._callers.get(key) is not caller
            if orphaned:  # closed for the service's stop while in use
                caller.connections.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = [c.connections for c in self._callers.values() if c.users == 0]
            self._callers = OrderedDict()
        for connections in idle:
            connections.close()
