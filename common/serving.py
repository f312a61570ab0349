"""Start the processes: the control service with an embedded runtime (``modelrunner serve``), or
a runtime alone that registers with a control service (``modelrunner runtime``)."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from modelrunner import errors, types
from modelrunner.graceful_shutdown import ShutdownSignals, stop_within
from modelrunner.listen_failures import listen_failure
from modelrunner.settings import Settings
from modelrunner.tls import check_exposure, client_tls_for, server_tls_for
from modelrunner.tls_hints import runtime_trust_error, untrusted_certificate

if TYPE_CHECKING:
    from modelrunner.entry_server.server import ControlServer
    from modelrunner.metrics import MetricsEndpoint
    from modelrunner.runtime_flight.caller_auth import CallerCheck
    from modelrunner.runtime_flight.idle_unloading import IdleUnloading
    from modelrunner.runtime_flight.registration import Registration
    from modelrunner.runtime_flight.server import RuntimeFlightServer

logger = logging.getLogger(__name__)

_WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")


@dataclass
class RunningRuntime:
    server: RuntimeFlightServer
    registration: Registration
    flight_uri: str
    metrics_uri: str = ""
    metrics: MetricsEndpoint | None = None
    """Its own metrics endpoint (a runtime process); None when it shares its control
    service's or publishes none."""
    unpublish: Callable[[], None] = field(default=lambda: None, repr=False)
    idle_unloading: IdleUnloading | None = None

    def stop(self, *, leave: bool = True) -> None:
        """Drain and stop: the control service is told this runtime leaves (``leave``), streams
        answer the frames they hold and end with ServerShuttingDownError, Flight refuses new
        calls and waits for those under way; then the models are unloaded. The process bounds
        the wait (``graceful_shutdown.stop_within``)."""
        if leave:
            self.registration.leave()  # routed to no more, first
        self.server.begin_drain()
        self.registration.stop()
        if self.idle_unloading is not None:
            self.idle_unloading.stop()
        self.server.shutdown()
        self.server.service.close()
        self.unpublish()
        if self.metrics is not None:
            self.metrics.close()


@dataclass
class RunningServer:
    """A started ``modelrunner serve``: ``address`` is what clients connect to."""

    control: ControlServer
    runtime: RunningRuntime | None = None
    metrics: MetricsEndpoint | None = None
    """The process's metrics endpoint (``settings.metrics_port``), both planes on it."""
    _stopped: bool = field(default=False, repr=False)

    @property
    def address(self) -> str:
        return self.control.address

    def stop(self) -> None:
        """Health NOT_SERVING and no new calls on the control service at once; the embedded
        runtime drains; the control service's calls under way get ``grace_period_s``."""
        if self._stopped:
            return
        self._stopped = True
        self.control.begin_shutdown()
        if self.runtime is not None:
            # its control service is going too: no need to say it leaves
            self.runtime.stop(leave=False)
        self.control.stop()
        if self.metrics is not None:
            self.metrics.close()


def start_runtime(
    settings: Settings,
    control_address: str,
    *,
    runtime_token: str | None = None,
    caller_check: CallerCheck | None = None,
    metrics_uri: str | None = None,
) -> RunningRuntime:
    """Start a Flight runtime on ``settings.flight_host:flight_port`` and register it.

    ``metrics_uri``: where this process's metrics are published already (an embedded runtime);
    None: its own endpoint when ``settings.metrics_port`` is set.

    With ``settings.auth`` the runtime registers with ``runtime_token`` (default
    ``settings.runtime_token``) and checks its callers' tokens with ``caller_check`` (default:
    by asking the control service). With ``settings.tls_cert_file`` it speaks TLS."""
    import pyarrow as pa

    from modelrunner.metrics import add_state_source
    from modelrunner.runtime_flight.caller_auth import CallerChecks, RemoteCallerCheck
    from modelrunner.runtime_flight.exchange_metrics import runtime_state
    from modelrunner.runtime_flight.idle_unloading import IdleUnloading
    from modelrunner.runtime_flight.packages import PackageLocator
    from modelrunner.runtime_flight.registration import Registration
    from modelrunner.runtime_flight.server import RuntimeFlightServer
    from modelrunner.runtime_flight.service import RuntimeService

    # bioimageio.core draws a tqdm bar per tiled prediction; a server's output is its log
    os.environ.setdefault("TQDM_DISABLE", "1")
    host = settings.effective_flight_host
    check_exposure(
        host, plane="runtime", auth=settings.auth, tls=settings.tls, insecure=settings.insecure
    )
    server_tls = server_tls_for(settings)
    client_tls = client_tls_for(settings) if server_tls is not None else None
    if settings.auth and runtime_token is None:
        if settings.runtime_token is None:
            raise errors.InvalidArgumentError(
                "authentication is on: the runtime needs its credential, a token with the "
                "runtime role (`modelrunner token create NAME --role runtime`), in "
                "MODELRUNNER_RUNTIME_TOKEN"
            )
        runtime_token = settings.runtime_token.get_secret_value()
    registration_ref: list[Registration] = []
    if settings.auth and caller_check is None:
        assert runtime_token is not None
        caller_check = RemoteCallerCheck(
            lambda: registration_ref[0].channel if registration_ref else None,
            runtime_token,
            cache_s=settings.auth_cache_s,
        )
    locator_ref: list[PackageLocator] = []
    service = RuntimeService(settings, lambda model_id: locator_ref[0].package_dir(model_id))
    scheme = "grpc+tls" if server_tls is not None else "grpc"
    try:
        server = RuntimeFlightServer(
            f"{scheme}://{host}:{settings.flight_port}",
            service,
            caller_checks=CallerChecks(
                caller_check if settings.auth else None, lambda: service.runtime_id
            ),
            **(server_tls.flight_kwargs() if server_tls is not None else {}),
        )
    except pa.ArrowException:
        service.close()
        # pyarrow says only "Server did not start properly"; the usual cause is a port in use
        # (a second runtime on a host whose first took the default 8815)
        raise listen_failure(host, settings.flight_port, "runtime") from None
    cleanup = ExitStack()
    cleanup.callback(service.close)
    cleanup.callback(server.shutdown)
    try:
        advertised = settings.advertise_host or host
        flight_uri = f"{scheme}://{_uri_host(advertised)}:{server.port}"
        service.set_identity(
            runtime_id=settings.runtime_id or f"{socket.gethostname()}:{server.port}",
            flight_uri=flight_uri,
        )
        endpoint = None
        if metrics_uri is None and settings.metrics_port is not None:
            endpoint = _serve_metrics(settings)
            cleanup.callback(endpoint.close)
        published = metrics_uri if endpoint is None else endpoint.uri
        unpublish = add_state_source(
            runtime_state(
                lambda: service.runtime_id, lambda: server.queue_depth, service.pool.loaded
            )
        )
        cleanup.callback(unpublish)

        def info() -> types.RuntimeInfo:
            # the queue depth routes a busy model's next clients elsewhere (docs/cluster.md)
            return service.info().model_copy(
                update={"queue_depth": server.queue_depth, "metrics_uri": published or ""}
            )

        registration = Registration(
            control_address,
            info,
            cache_dir=settings.cache_dir,
            interval_s=settings.heartbeat_interval_s,
            token=runtime_token,
            tls=client_tls,
        )
        registration_ref.append(registration)
        locator = PackageLocator(
            local_cache_dir=settings.cache_dir / "runtime",
            control_channel=lambda: registration_ref[0].channel,
            max_unpacked_bytes=settings.max_unpacked_bytes,
            max_files=settings.max_package_files,
        )
        locator_ref.append(locator)
        service.set_resolver(locator.resolve, locator.forget)
        service.set_on_change(registration.poke)
        try:
            registration.start()
        except errors.UnavailableError as e:
            if not untrusted_certificate(e.message):
                raise
            raise runtime_trust_error(
                settings.tls_cert_file, settings.tls_ca_file, e.message
            ) from None
        locator.shared_cache_dir = registration.shared_cache_dir
        idle = (
            IdleUnloading(service.pool, settings.idle_unload_s, registration.poke)
            if settings.idle_unload_s
            else None
        )
    except BaseException:
        cleanup.close()
        raise
    cleanup.pop_all()
    logger.info(
        "runtime %s listening on %s (devices: %s)",
        service.runtime_id,
        flight_uri,
        ", ".join(d.name for d in service.info().devices),
    )
    return RunningRuntime(
        server,
        registration,
        flight_uri,
        metrics_uri=published or "",
        metrics=endpoint,
        unpublish=unpublish,
        idle_unloading=idle,
    )


def _serve_metrics(settings: Settings) -> MetricsEndpoint:
    from modelrunner.metrics import serve_metrics

    assert settings.metrics_port is not None
    return serve_metrics(
        settings.metrics_host, settings.metrics_port, advertise_host=settings.advertise_host
    )


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@contextmanager
def start_embedded(settings: Settings, *, with_runtime: bool = True) -> Iterator[RunningServer]:
    """The control service plus one runtime in this process, ready (a runtime can predict)
    when this yields; stopped on exit."""
    running = start_serving(settings, with_runtime=with_runtime)
    try:
        yield running
    finally:
        running.stop()


def start_serving(settings: Settings, *, with_runtime: bool = True) -> RunningServer:
    """Start what ``start_embedded`` starts; the caller stops it (``RunningServer.stop``)."""
    from modelrunner.entry_server.server import start_control_server

    with ExitStack() as stack:
        control = start_control_server(settings)
        running = RunningServer(control)
        stack.callback(running.stop)
        if settings.metrics_port is not None:
            running.metrics = _serve_metrics(settings)
            control.control.metrics_uri = running.metrics.uri
        if with_runtime:
            plane = control.control
            # The embedded runtime holds an in-memory credential and asks its control service
            # about its callers in process.
            token = plane.issue_runtime_token("embedded-runtime")
            running.runtime = start_runtime(
                settings,
                _local_address(control.port, settings.host),
                runtime_token=token,
                caller_check=plane.check_caller,
                metrics_uri=control.control.metrics_uri,
            )
            # Open Inference requests for it skip the Flight hop (entry_server.inference_plane)
            service = running.runtime.server.service
            control.inference.attach_local(service.runtime_id, service)
            # it registered before start_runtime returned; ready means a runtime can predict
            control.readiness.wait(settings.runtime_wait_s)
        stack.pop_all()
    return running


def control_address_of(running: RunningServer) -> str:
    """The address a runtime registers at (loopback when the service listens on every
    interface)."""
    return _local_address(running.control.port, running.control.settings.host)


def _local_address(port: int, host: str) -> str:
    return f"{'127.0.0.1' if host in _WILDCARD_HOSTS else _uri_host(host)}:{port}"


def serve_forever(settings: Settings, *, with_runtime: bool = True) -> None:
    """``modelrunner serve``: start, say "ready" on stderr once a runtime can predict, serve
    until SIGTERM or SIGINT, drain (``graceful_shutdown``)."""
    signals = ShutdownSignals()
    running = start_serving(settings, with_runtime=with_runtime)
    try:
        print(_banner(settings, running), flush=True)
        announce_ready(running, signals.requested)
        signals.wait()
    finally:
        stop_within(running.stop, settings.grace_period_s)


def run_runtime_forever(settings: Settings) -> None:
    assert settings.control_address
    signals = ShutdownSignals()
    runtime = start_runtime(settings, settings.control_address)
    try:
        print(
            f"modelrunner runtime {runtime.server.service.runtime_id} serving at "
            f"{runtime.flight_uri}, registered with {settings.control_address}"
            + (f"; metrics at {runtime.metrics_uri}" if runtime.metrics_uri else ""),
            flush=True,
        )
        signals.wait()
    finally:
        stop_within(runtime.stop, settings.grace_period_s)


def announce_ready(running: RunningServer, stop: threading.Event) -> None:
    """Write one line, ``modelrunner ready: control service HOST:PORT[, runtime URI]``, to
    stderr once a runtime can predict: at once with the embedded runtime, else when the first
    runtime registers. Scripts and tests wait for it instead of polling."""

    def wait() -> None:
        while not stop.is_set():
            if running.control.readiness.wait(0.5):
                runtime = f", runtime {running.runtime.flight_uri}" if running.runtime else ""
                print(
                    f"modelrunner ready: control service {running.address}{runtime}",
                    file=sys.stderr,
                    flush=True,
                )
                return

    if running.control.readiness.ready:
        wait()
    else:
        print(
            f"modelrunner waiting for a runtime to register at {running.address}",
            file=sys.stderr,
            flush=True,
        )
        threading.Thread(target=wait, name="modelrunner-ready", daemon=True).start()


def _banner(settings: Settings, running: RunningServer) -> str:
    lines = [
        f"modelrunner control service at {running.address} (cache {Path(settings.cache_dir)})",
    ]
    if running.runtime is not None:
        devices = ", ".join(d.name for d in running.runtime.server.service.info().devices)
        lines.append(f"runtime at {running.runtime.flight_uri} (devices: {devices})")
    if running.metrics is not None:
        lines.append(f"Prometheus metrics at {running.metrics.uri} (`modelrunner status`)")
    if settings.auth:
        lines.append(
            f"tokens required (from {settings.effective_tokens_file}; "
            "`modelrunner token create NAME --role write`)"
        )
    else:
        lines.append("no authentication: anyone who can reach these ports may use them")
    lines.append("press Ctrl+C to stop")
    return "\n".join(lines)
