"""A Flight runtime that registers with its control service: ``modelrunner runtime``, each Ray
runtime actor, and the runtime ``modelrunner serve`` embeds.

:func:`start_runtime` builds the parts in order, each handed to the next one's constructor: the
channel to the control service; the package locator and the runtime service on it; the Flight
server around the service (which names the runtime: its port is known now); metrics; and last
the registration, which announces the runtime and keeps it announced."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from modelrunner import errors, types
from modelrunner.channels import control_channel
from modelrunner.listen_failures import listen_failure
from modelrunner.settings import Settings
from modelrunner.tls import ServerTls, check_exposure, client_tls_for, server_tls_for
from modelrunner.tls_hints import runtime_trust_error, untrusted_certificate

from .graceful_shutdown import ShutdownSignals, stop_within

if TYPE_CHECKING:
    from modelrunner.metrics import MetricsEndpoint
    from modelrunner.runtime_flight.caller_auth import CallerCheck, CallerChecks
    from modelrunner.runtime_flight.idle_unloading import IdleUnloading
    from modelrunner.runtime_flight.packages import PackageLocator
    from modelrunner.runtime_flight.registration import Registration
    from modelrunner.runtime_flight.server import RuntimeFlightServer
    from modelrunner.runtime_flight.service import RuntimeService

logger = logging.getLogger(__name__)


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
    from modelrunner.metrics import add_state_source
    from modelrunner.runtime_flight.exchange_metrics import runtime_state
    from modelrunner.runtime_flight.idle_unloading import IdleUnloading
    from modelrunner.runtime_flight.registration import Registration
    from modelrunner.runtime_flight.service import RuntimeService

    # bioimageio.core draws a tqdm bar per tiled prediction; a server's output is its log
    os.environ.setdefault("TQDM_DISABLE", "1")
    host = settings.effective_flight_host
    check_exposure(
        host, plane="runtime", auth=settings.auth, tls=settings.tls, insecure=settings.insecure
    )
    server_tls = server_tls_for(settings)
    token = _runtime_token(settings, runtime_token)
    with ExitStack() as cleanup:
        channel = control_channel(
            control_address,
            token=token,
            tls=client_tls_for(settings) if server_tls is not None else None,
        )
        cleanup.callback(channel.close)
        locator = _package_locator(settings, channel)
        beat_now = threading.Event()
        service = RuntimeService(
            settings,
            locator.package_dir,
            resolve=locator.resolve,
            forget=locator.forget,
            on_change=beat_now.set,
        )
        cleanup.callback(service.close)
        checks = _caller_checks(settings, caller_check, channel, token, service)
        server = _listen(settings, host, service, checks, server_tls)
        cleanup.callback(server.shutdown)
        flight_uri = _name(settings, host, service, server, tls=server_tls is not None)
        endpoint = None
        if metrics_uri is None and settings.metrics_port is not None:
            endpoint = metrics_endpoint(settings)
            cleanup.callback(endpoint.close)
        published = metrics_uri if endpoint is None else endpoint.uri
        unpublish = add_state_source(
            runtime_state(
                lambda: service.runtime_id, lambda: server.queue_depth, service.pool.loaded
            )
        )
        cleanup.callback(unpublish)
        registration = Registration(
            control_address,
            _info(service, server, published or ""),
            channel=channel,
            cache_dir=settings.cache_dir,
            interval_s=settings.heartbeat_interval_s,
            wake=beat_now,
        )
        _register(registration, settings)
        # the control service names its cache on registration: read directly on its host
        locator.shared_cache_dir = registration.shared_cache_dir
        idle = (
            IdleUnloading(service.pool, settings.idle_unload_s, registration.poke)
            if settings.idle_unload_s
            else None
        )
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


def _runtime_token(settings: Settings, given: str | None) -> str | None:
    """The credential the runtime registers with: ``given``, else the settings' (required with
    authentication on); None without authentication."""
    if not settings.auth or given is not None:
        return given
    if settings.runtime_token is None:
        raise errors.InvalidArgumentError(
            "authentication is on: the runtime needs its credential, a token with the "
            "runtime role (`modelrunner token create NAME --role runtime`), in "
            "MODELRUNNER_RUNTIME_TOKEN"
        )
    return settings.runtime_token.get_secret_value()


def _package_locator(settings: Settings, channel: grpc.Channel) -> PackageLocator:
    from modelrunner.runtime_flight.packages import PackageLocator

    return PackageLocator(
        local_cache_dir=settings.cache_dir / "runtime",
        control_channel=lambda: channel,
        max_unpacked_bytes=settings.max_unpacked_bytes,
        max_files=settings.max_package_files,
    )


def _caller_checks(
    settings: Settings,
    given: CallerCheck | None,
    channel: grpc.Channel,
    token: str | None,
    service: RuntimeService,
) -> CallerChecks:
    """Who may call: with authentication, ``given`` or else asking the control service over
    ``channel``; a token the control service issued for another runtime is refused."""
    from modelrunner.runtime_flight.caller_auth import CallerChecks, RemoteCallerCheck

    check = None
    if settings.auth:
        assert token is not None
        check = given or RemoteCallerCheck(lambda: channel, token, cache_s=settings.auth_cache_s)
    return CallerChecks(check, lambda: service.runtime_id)


def _listen(
    settings: Settings,
    host: str,
    service: RuntimeService,
    checks: CallerChecks,
    server_tls: ServerTls | None,
) -> RuntimeFlightServer:
    import pyarrow as pa

    from modelrunner.runtime_flight.server import RuntimeFlightServer

    scheme = "grpc+tls" if server_tls is not None else "grpc"
    try:
        return RuntimeFlightServer(
            f"{scheme}://{host}:{settings.flight_port}",
            service,
            caller_checks=checks,
            **(server_tls.flight_kwargs() if server_tls is not None else {}),
        )
    except pa.ArrowException:
        # pyarrow says only "Server did not start properly"; the usual cause is a port in use
        # (a second runtime on a host whose first took the default 8815)
        raise listen_failure(host, settings.flight_port, "runtime") from None


def _name(
    settings: Settings,
    host: str,
    service: RuntimeService,
    server: RuntimeFlightServer,
    *,
    tls: bool,
) -> str:
    """Name the runtime and return its Flight URI, as clients reach it."""
    scheme = "grpc+tls" if tls else "grpc"
    flight_uri = f"{scheme}://{uri_host(settings.advertise_host or host)}:{server.port}"
    service.set_identity(
        runtime_id=settings.runtime_id or f"{socket.gethostname()}:{server.port}",
        flight_uri=flight_uri,
    )
    return flight_uri


def _info(
    service: RuntimeService, server: RuntimeFlightServer, metrics_uri: str
) -> Callable[[], types.RuntimeInfo]:
    """What each registration says: the service's state, with the queue depth that routes a
    busy model's next clients elsewhere (docs/cluster.md)."""

    def info() -> types.RuntimeInfo:
        return service.info().model_copy(
            update={"queue_depth": server.queue_depth, "metrics_uri": metrics_uri}
        )

    return info


def _register(registration: Registration, settings: Settings) -> None:
    try:
        registration.start()
    except errors.UnavailableError as e:
        if not untrusted_certificate(e.message):
            raise
        raise runtime_trust_error(settings.tls_cert_file, settings.tls_ca_file, e.message) from None


def metrics_endpoint(settings: Settings) -> MetricsEndpoint:
    """This process's Prometheus endpoint on ``settings.metrics_port``."""
    from modelrunner.metrics import serve_metrics

    assert settings.metrics_port is not None
    return serve_metrics(
        settings.metrics_host, settings.metrics_port, advertise_host=settings.advertise_host
    )


def uri_host(host: str) -> str:
    """``host`` as it stands in a URI (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def run_runtime_forever(settings: Settings) -> None:
    """``modelrunner runtime``: start, serve until SIGTERM or SIGINT, drain."""
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
