"""Predictions the control service makes for a caller: the Open Inference Protocol endpoint
(:mod:`.open_inference`) hands each request here, and it goes on over Arrow Flight to the runtime
the control service routes the model to, exactly as the Python client's ``predict`` would send
it (same command, same sessions, same errors).

The caller's own token travels on to the runtime, which checks it as it checks every caller:
forwarding adds no power a caller does not have. Each token gets its own Flight connections and
predict sessions (an open exchange is bound to the token that opened it); the least recently used
are closed beyond :data:`MAX_CALLERS`.

The input arrays are views of the request's protobuf bytes and go to Flight without a copy; the
outputs arrive as views of the received buffers.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from modelrunner import errors
from modelrunner.auth import ANONYMOUS, Identity
from modelrunner.client._flight import RuntimeConnections, exchange_predict, reachable_uri
from modelrunner.client._sessions import fits_session
from modelrunner.entry_server.control_plane import ControlPlane
from modelrunner.v1 import runtime_pb2
from modelrunner.wire import DEFAULT_BATCH_BYTES

MAX_CALLERS = 32
"""Tokens whose connections stay open at once."""
_LOCAL = "127.0.0.1:0"
"""A runtime announcing a wildcard host listens on loopback too: the control service's view."""

NAN_POLICIES = {"reject": runtime_pb2.NAN_POLICY_REJECT, "allow": runtime_pb2.NAN_POLICY_ALLOW}


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


@dataclass(frozen=True)
class Prediction:
    model_id: str
    """The full model id the route resolved."""
    outputs: dict[str, np.ndarray]


@dataclass
class RuntimeForwarding:
    control: ControlPlane
    _callers: OrderedDict[str, RuntimeConnections] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def predict(
        self,
        model_ref: str,
        arrays: Mapping[str, np.ndarray],
        dim_names: Mapping[str, tuple[str, ...]],
        options: PredictOptions,
        *,
        identity: Identity = ANONYMOUS,
        token: str | None = None,
    ) -> Prediction:
        """Route ``model_ref`` for the caller and predict one sample on the best runtime."""
        if options.nan_policy not in NAN_POLICIES:
            raise errors.InvalidArgumentError(
                f"nan_policy must be one of {sorted(NAN_POLICIES)}, got {options.nan_policy!r}",
                details={"parameter": "nan_policy"},
            )
        if options.blocksize is not None and options.blocksize < 0:
            raise errors.InvalidArgumentError(
                f"blocksize must be >= 0, got {options.blocksize}",
                details={"parameter": "blocksize"},
            )
        route = self.control.route(model_ref, options.weight_format, options.device, identity)
        uri = reachable_uri(route.flight_uris[0], _LOCAL)
        command = runtime_pb2.PredictCommand(
            model_id=route.model_id,
            weight_format=options.weight_format,
            device=options.device,
            nan_policy=NAN_POLICIES[options.nan_policy],
            reference_path=options.reference_path,
            precision=options.precision,
        )
        if options.blocksize is not None:
            command.blocksize = options.blocksize
        connections = self._connections(token)
        client = connections.get(uri)
        try:
            if fits_session(arrays):
                command.session = True
                outputs = connections.sessions.predict(
                    client,
                    uri,
                    command,
                    arrays,
                    dim_names,
                    timeout=options.timeout_s,
                    batch_bytes=DEFAULT_BATCH_BYTES,
                )
            else:
                outputs = exchange_predict(
                    client,
                    command,
                    arrays,
                    dim_names,
                    timeout=options.timeout_s,
                    batch_bytes=DEFAULT_BATCH_BYTES,
                    progress=None,
                )
        except errors.UnavailableError:
            connections.drop(uri)  # the runtime went away: reconnect next time
            raise
        return Prediction(model_id=route.model_id, outputs=outputs)

    def _connections(self, token: str | None) -> RuntimeConnections:
        key = token or ""
        evicted = None
        with self._lock:
            if self._closed:
                raise errors.UnavailableError("the control service is stopping")
            connections = self._callers.get(key)
            if connections is None:
                connections = RuntimeConnections(token=token, tls=self.control.runtime_tls)
                self._callers[key] = connections
                if len(self._callers) > MAX_CALLERS:
                    _, evicted = self._callers.popitem(last=False)
            else:
                self._callers.move_to_end(key)
        if evicted is not None:
            evicted.close()
        return connections

    def close(self) -> None:
        with self._lock:
            self._closed = True
            callers, self._callers = list(self._callers.values()), OrderedDict()
        for connections in callers:
            connections.close()
