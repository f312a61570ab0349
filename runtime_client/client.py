"""The one way to call runtimes: :class:`RuntimeClient`, which the Python client and the control
service (its model tests, unloads and forwarded Open Inference requests) both use."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from modelrunner import errors, types
from modelrunner.auth import AUTHORIZATION_HEADER, bearer
from modelrunner.predict_command import command_bytes
from modelrunner.predict_request import PredictRequest
from modelrunner.tls import ClientTls
from modelrunner.transport_errors import ErrorTrailers
from modelrunner.types import ProgressCallback
from modelrunner.wire import DEFAULT_BATCH_BYTES

from . import actions
from .cancellation import CallRegistry
from .exchanges import exchange_predict
from .sessions import SessionPool, fits_session

logger = logging.getLogger(__name__)

CLOSE_WAIT_S = 5.0
"""How long ``close()`` waits for cancelled calls to let go of their connections."""


class _BearerHeader(flight.ClientMiddleware):  # type: ignore[misc]
    def __init__(self, value: str) -> None:
        super().__init__()
        self._headers = {AUTHORIZATION_HEADER: value}

    def sending_headers(self) -> dict[str, str]:
        return self._headers


class _BearerHeaderFactory(flight.ClientMiddlewareFactory):  # type: ignore[misc]
    """Presents the caller's token on every Flight call."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._value = bearer(token)

    def start_call(self, info: flight.CallInfo) -> _BearerHeader:
        return _BearerHeader(self._value)


class RuntimeClient:
    """Calls to runtimes over Arrow Flight for one caller: one connection per runtime URI,
    created on first use and shared by all calls (``keep_connections=False``: one per call,
    closed after it), the predict sessions open on them, the caller's ``token`` on every call,
    ``grpc+tls`` runtimes verified against ``tls``'s roots (None: the system's). ``calls`` are
    the predictions in progress, which :meth:`close` cancels."""

    def __init__(
        self,
        *,
        token: str | None = None,
        tls: ClientTls | None = None,
        keep_connections: bool = True,
    ) -> None:
        self._connect_kwargs: dict[str, object] = dict(tls.flight_kwargs()) if tls else {}
        # ErrorTrailers: a runtime's INVALID_ARGUMENT and NOT_FOUND carry their typed error in
        # a trailer, which pyarrow shows to middleware only
        middleware: list[flight.ClientMiddlewareFactory] = [ErrorTrailers()]
        if token:
            middleware.append(_BearerHeaderFactory(token))
        self._connect_kwargs["middleware"] = middleware
        self._keep = keep_connections
        self._clients: dict[str, flight.FlightClient] = {}
        self._lock = threading.Lock()
        self.calls = CallRegistry()
        self.sessions = SessionPool(self.calls)

    # -- connections -------------------------------------------------------------------------

    def connection(self, uri: str) -> flight.FlightClient:
        """The Flight client of ``uri`` (UnavailableError when the address is unusable)."""
        with self._lock:
            client = self._clients.get(uri)
            if client is None:
                client = self._connect(uri)
                if self._keep:
                    self._clients[uri] = client
            return client

    def _connect(self, uri: str) -> flight.FlightClient:
        try:
            return flight.connect(uri, **self._connect_kwargs)
        except (pa.ArrowException, ValueError) as exc:
            raise errors.UnavailableError(
                f"runtime address {uri!r} is unusable: {exc}", details={"flight_uri": uri}
            ) from None

    @contextmanager
    def _using(self, uri: str) -> Iterator[flight.FlightClient]:
        """A connection for one call: the kept one, or (not keeping) one closed after it. A
        runtime that turns out to be gone loses its kept connection and sessions."""
        client = self.connection(uri)
        try:
            yield client
        except errors.UnavailableError:
            self.drop(uri)
            raise
        finally:
            if not self._keep:
                client.close()

    def drop(self, uri: str) -> None:
        """Close the sessions and the connection to ``uri`` (its runtime went away)."""
        self.sessions.drop(uri)
        with self._lock:
            client = self._clients.pop(uri, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        """Cancel the calls in progress (their callers get CancelledError and the runtimes stop
        working on them), then close the sessions and connections."""
        self.calls.cancel_all()
        if not self.calls.wait_idle(CLOSE_WAIT_S):
            logger.warning("calls still in progress %g s after they were cancelled", CLOSE_WAIT_S)
        self.sessions.close()
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.close()

    # -- predictions -------------------------------------------------------------------------

    def predict(
        self,
        uri: str,
        request: PredictRequest,
        *,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        progress: ProgressCallback | None = None,
    ) -> dict[str, np.ndarray]:
        """The request's outputs from the runtime at ``uri`` (views of the received buffers).
        Samples of up to 64 MiB without ``progress`` go on a session kept open for the next
        call of the same command and input layout; the others on an exchange of their own. The
        request's ``timeout_s`` bounds the call."""
        self.calls.raise_if_cancelled("the prediction")
        arrays, dims = request.inputs, request.dim_names
        client = self.connection(uri)
        try:
            if progress is None and fits_session(arrays):
                return self.sessions.predict(
                    client,
                    uri,
                    command_bytes(request, kind="session"),
                    arrays,
                    dims,
                    timeout=request.timeout_s,
                    batch_bytes=batch_bytes,
                )
            return exchange_predict(
                client,
                command_bytes(request, report_progress=progress is not None),
                arrays,
                dims,
                timeout=request.timeout_s,
                batch_bytes=batch_bytes,
                progress=progress,
                calls=self.calls,
            )
        except errors.UnavailableError:
            self.drop(uri)
            raise
        finally:
            if not self._keep:
                client.close()

    # -- actions -----------------------------------------------------------------------------

    def load(
        self,
        uri: str,
        model_id: str,
        weight_format: str = "",
        device: str = "",
        *,
        timeout: float | None,
    ) -> types.LoadInfo:
        with self._using(uri) as client:
            return actions.load_model(client, model_id, weight_format, device, timeout=timeout)

    def unload(
        self,
        uri: str,
        model_id: str,
        weight_format: str = "",
        device: str = "",
        *,
        timeout: float | None,
    ) -> int:
        """How many of the model's pipelines the runtime unloaded (ModelInUseError when one
        serves a request)."""
        with self._using(uri) as client:
            return actions.unload_model(client, model_id, weight_format, device, timeout=timeout)

    def remove(self, uri: str, model_id: str, *, timeout: float | None) -> tuple[int, int]:
        """The model (a full id) was removed from the server: the runtime unloads it even while
        in use and ends its open exchanges. Returns the pipelines it unloaded and the
        predictions in flight it waited for (the control service's call)."""
        with self._using(uri) as client:
            return actions.remove_model(client, model_id, timeout=timeout)

    def test(
        self,
        uri: str,
        model_id: str,
        weight_format: str = "",
        device: str = "",
        *,
        timeout: float | None,
    ) -> types.ValidationReport:
        """bioimageio.core's model test on the runtime; the outcome is a report."""
        with self._using(uri) as client:
            return actions.test_model(client, model_id, weight_format, device, timeout=timeout)

    def info(self, uri: str, *, timeout: float | None) -> types.RuntimeInfo:
        with self._using(uri) as client:
            return actions.runtime_info(client, timeout=timeout)
