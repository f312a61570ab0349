"""Start the processes: the control service with an embedded runtime (``modelrunner serve``), or
a runtime alone that registers with a control service (``modelrunner runtime``)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from modelrunner.settings import Settings

if TYPE_CHECKING:
    from modelrunner.entry_server.server import ControlServer
    from modelrunner.runtime_flight.registration import Registration
    from modelrunner.runtime_flight.server import RuntimeFlightServer

logger = logging.getLogger(__name__)

_WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")


@dataclass
class RunningRuntime:
    server: RuntimeFlightServer
    registration: Registration
    flight_uri: str

    def stop(self) -> None:
        self.registration.stop()
        self.server.shutdown()
        self.server.service.close()


@dataclass
class RunningServer:
    """A started ``modelrunner serve``: ``address`` is what clients connect to."""

    control: ControlServer
    runtime: RunningRuntime | None = None
    _stopped: bool = field(default=False, repr=False)

    @property
    def address(self) -> str:
        return self.control.address

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.runtime is not None:
            self.runtime.stop()
        self.control.stop()


def start_runtime(settings: Settings, control_address: str) -> RunningRuntime:
    """Start a Flight runtime on ``settings.flight_host:flight_port`` and register it."""
    from modelrunner.runtime_flight.packages import PackageLocator
    from modelrunner.runtime_flight.registration import Registration
    from modelrunner.runtime_flight.server import RuntimeFlightServer
    from modelrunner.runtime_flight.service import RuntimeService

    # bioimageio.core draws a tqdm bar per tiled prediction; a server's output is its log
    os.environ.setdefault("TQDM_DISABLE", "1")
    host = settings.effective_flight_host
    locator_ref: list[PackageLocator] = []
    registration_ref: list[Registration] = []
    service = RuntimeService(settings, lambda model_id: locator_ref[0].package_dir(model_id))
    server = RuntimeFlightServer(f"grpc://{host}:{settings.flight_port}", service)
    try:
        advertised = settings.advertise_host or host
        flight_uri = f"grpc://{_uri_host(advertised)}:{server.port}"
        service.set_identity(
            runtime_id=settings.runtime_id or f"{socket.gethostname()}:{server.port}",
            flight_uri=flight_uri,
        )
        registration = Registration(
            control_address,
            service.info,
            cache_dir=settings.cache_dir,
            interval_s=settings.heartbeat_interval_s,
        )
        registration_ref.append(registration)
        locator = PackageLocator(
            local_cache_dir=settings.cache_dir / "runtime",
            control_channel=lambda: registration_ref[0].channel,
            max_unpacked_bytes=settings.max_unpacked_bytes,
            max_files=settings.max_package_files,
        )
        locator_ref.append(locator)
        service.set_resolver(locator.resolve)
        service.set_on_change(registration.poke)
        registration.start()
        locator.shared_cache_dir = registration.shared_cache_dir
    except BaseException:
        server.shutdown()
        service.close()
        raise
    logger.info(
        "runtime %s listening on %s (devices: %s)",
        service.runtime_id,
        flight_uri,
        ", ".join(d.name for d in service.info().devices),
    )
    return RunningRuntime(server, registration, flight_uri)


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@contextmanager
def start_embedded(settings: Settings, *, with_runtime: bool = True) -> Iterator[RunningServer]:
    """The control service plus one runtime in this process; stopped on exit."""
    from modelrunner.entry_server.server import start_control_server

    with ExitStack() as stack:
        control = start_control_server(settings)
        running = RunningServer(control)
        stack.callback(running.stop)
        if with_runtime:
            running.runtime = start_runtime(settings, _local_address(control.port, settings.host))
        yield running


def _local_address(port: int, host: str) -> str:
    return f"{'127.0.0.1' if host in _WILDCARD_HOSTS else _uri_host(host)}:{port}"


def _wait_for_signal() -> None:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    while not stop.wait(1.0):
        pass


def serve_forever(settings: Settings, *, with_runtime: bool = True) -> None:
    with start_embedded(settings, with_runtime=with_runtime) as running:
        print(_banner(settings, running), flush=True)
        _wait_for_signal()


def run_runtime_forever(settings: Settings) -> None:
    assert settings.control_address
    runtime = start_runtime(settings, settings.control_address)
    try:
        print(
            f"modelrunner runtime {runtime.server.service.runtime_id} serving at "
            f"{runtime.flight_uri}, registered with {settings.control_address}",
            flush=True,
        )
        _wait_for_signal()
    finally:
        runtime.stop()


def _banner(settings: Settings, running: RunningServer) -> str:
    lines = [
        f"modelrunner control service at {running.address} (cache {Path(settings.cache_dir)})",
    ]
    if running.runtime is not None:
        devices = ", ".join(d.name for d in running.runtime.server.service.info().devices)
        lines.append(f"runtime at {running.runtime.flight_uri} (devices: {devices})")
    lines.append("press Ctrl+C to stop")
    return "\n".join(lines)
