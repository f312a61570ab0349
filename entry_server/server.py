"""Start and stop the control service: gRPC ``ControlService`` with standard health checking and
server reflection, so ``grpcurl`` and clients in any language work from the ``.proto`` files.
Its health statuses say whether a runtime can predict (readiness) and whether the process lives
(``liveness``): see ``entry_server/runtimes/readiness.py``.

``start_control_server(settings)`` returns a running :class:`ControlServer`. An embedded runtime
in the same process registers through ``server.control.register_runtime(...)`` (or over gRPC like
any other runtime) and reads packages from ``server.registry.use(model_id)``.

Nothing here imports bioimageio.spec: the service starts in about a second.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from types import TracebackType

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from modelrunner.entry_server.authentication import Authenticator
from modelrunner.entry_server.call_limits import threads_for_limited_calls
from modelrunner.entry_server.control_plane import ControlPlane
from modelrunner.entry_server.edge.auth_interceptor import AuthInterceptor
from modelrunner.entry_server.edge.call_metrics import CallMetricsInterceptor
from modelrunner.entry_server.edge.control_servicer import ControlServicer
from modelrunner.entry_server.edge.error_interceptor import ErrorInterceptor
from modelrunner.entry_server.edge.open_inference import V2_SERVICE_NAME, OpenInferenceServicer
from modelrunner.entry_server.edge.server_reflection import (
    SERVICE_NAMES as REFLECTION_SERVICE_NAMES,
)
from modelrunner.entry_server.edge.server_reflection import enable_server_reflection
from modelrunner.entry_server.inference_plane import InferencePlane
from modelrunner.entry_server.registry import ModelRegistry
from modelrunner.entry_server.runtimes.directory import RuntimeDirectory
from modelrunner.entry_server.runtimes.readiness import Readiness
from modelrunner.entry_server.state_metrics import control_state
from modelrunner.listen_failures import listen_failure
from modelrunner.metrics import add_state_source
from modelrunner.open_inference import grpc_predict_v2_pb2_grpc as v2_grpc
from modelrunner.settings import Settings
from modelrunner.tls import check_exposure, client_tls_for, server_tls_for
from modelrunner.v1 import control_pb2, control_pb2_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = control_pb2.DESCRIPTOR.services_by_name["ControlService"].full_name
_MAX_MESSAGE_BYTES = 64 * 1024**2
"""Upload and package chunks are about 1 MiB; model lists and descriptions can be larger."""
DEFAULT_MAX_WORKERS = 16


@dataclass
class ControlServer:
    """A running control service. Use as a context manager, or call :meth:`stop`."""

    settings: Settings
    server: grpc.Server
    port: int
    """The bound port (the chosen one when ``settings.port`` is 0)."""
    control: ControlPlane
    health: health.HealthServicer
    inference: InferencePlane
    """The Open Inference Protocol's plane (its limits and connections to runtimes)."""
    readiness: Readiness
    """SERVING once a runtime that can predict is registered (``readiness.wait()``)."""
    _stopped: bool = field(default=False, repr=False)
    _stopping: threading.Event | None = field(default=None, repr=False)
    _unpublish: Callable[[], None] = field(default=lambda: None, repr=False)
    """Removes its gauges from the process's metrics."""

    @property
    def registry(self) -> ModelRegistry:
        return self.control.registry

    @property
    def runtimes(self) -> RuntimeDirectory:
        return self.control.runtimes

    @property
    def address(self) -> str:
        """``host:port`` for clients (a wildcard host is replaced by localhost)."""
        host = self.settings.host
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = "localhost"
        return f"{host}:{self.port}"

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.server.wait_for_termination(timeout)

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let calls in flight finish for ``grace`` seconds (default
        ``settings.grace_period_s``), then close the registry."""
        if self._stopped:
            return
        self._stopped = True
        self.begin_shutdown(grace).wait()
        self._unpublish()
        self.readiness.stop()
        self.inference.close()
        self.registry.close()
        logger.info("control service on port %d stopped", self.port)

    def begin_shutdown(self, grace: float | None = None) -> threading.Event:
        """Every health status NOT_SERVING and new calls refused from now on; calls in flight
        are cancelled after ``grace`` seconds (default ``settings.grace_period_s``). Returns the
        event set when the last call has ended; :meth:`stop` waits for it."""
        if self._stopping is None:
            self.health.enter_graceful_shutdown()
            period = self.settings.grace_period_s if grace is None else grace
            self._stopping = self.server.stop(period)
        return self._stopping

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_control_server(
    settings: Settings,
    *,
    max_workers: int = DEFAULT_MAX_WORKERS,
) -> ControlServer:
    """Open the cache, bind ``settings.host:settings.port`` and start serving.

    Refuses (FailedPreconditionError) to listen beyond loopback without authentication and TLS
    unless ``settings.insecure``."""
    check_exposure(
        settings.host,
        plane="control service",
        auth=settings.auth,
        tls=settings.tls,
        insecure=settings.insecure,
    )
    server_tls = server_tls_for(settings)
    authenticator = Authenticator(settings)
    runtimes = RuntimeDirectory(settings)
    registry = ModelRegistry(settings, loaded_models=runtimes.loaded_model_ids)
    try:
        control = ControlPlane(
            settings,
            registry,
            runtimes,
            authenticator=authenticator,
            runtime_tls=client_tls_for(settings) if server_tls is not None else None,
        )
        server = grpc.server(
            # -- resource limits: uploads, validations and adds get threads of their own on top
            # of max_workers (call_limits), so they never starve health checks and heartbeats.
            futures.ThreadPoolExecutor(
                max_workers=max_workers + threads_for_limited_calls(settings),
                thread_name_prefix="control",
            ),
            # authentication first: a caller without a valid token is refused before its request
            # is parsed (the error interceptor parses requests, and maps every other error)
            # metrics innermost: it sees parsed requests and the error a call ends with
            interceptors=[
                AuthInterceptor(authenticator),
                ErrorInterceptor(),
                CallMetricsInterceptor(),
            ],
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                # grpc enables SO_REUSEPORT by default: a second server on a busy port would
                # start silently and share its calls. Failing to bind is what users expect.
                ("grpc.so_reuseport", 0),
            ],
        )
        control_pb2_grpc.add_ControlServiceServicer_to_server(ControlServicer(control), server)
        inference = InferencePlane(control)
        v2_grpc.add_GRPCInferenceServiceServicer_to_server(OpenInferenceServicer(inference), server)
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        # NOT_SERVING until a runtime that can predict registers (readiness); "liveness" at once
        readiness = Readiness(health_servicer, runtimes, ("", SERVICE_NAME, V2_SERVICE_NAME))
        enable_server_reflection(
            (
                SERVICE_NAME,
                health.SERVICE_NAME,
                *REFLECTION_SERVICE_NAMES,
                V2_SERVICE_NAME,
            ),
            server,
        )
        target = f"{settings.host}:{settings.port}"
        try:
            if server_tls is not None:
                port = server.add_secure_port(target, server_tls.grpc_credentials())
            else:
                port = server.add_insecure_port(target)
        except RuntimeError:
            port = 0  # gRPC says only "Failed to bind": listen_failure asks why
        if port == 0:
            raise listen_failure(settings.host, settings.port, "control")
        server.start()
    except BaseException:
        registry.close()
        raise
    logger.info(
        "control service listening on %s:%d (cache %s; %s, %s)",
        settings.host,
        port,
        settings.cache_dir,
        "TLS" if server_tls else "plaintext",
        "tokens required" if settings.auth else "no authentication",
    )
    return ControlServer(
        settings=settings,
        server=server,
        port=port,
        control=control,
        health=health_servicer,
        inference=inference,
        readiness=readiness,
        _unpublish=add_state_source(control_state(registry, runtimes)),
    )
