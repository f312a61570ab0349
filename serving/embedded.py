"""``modelrunner serve``: the control service with one runtime in the same process (the runtime
alone, ``modelrunner runtime``, is :mod:`.runtime_process`)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from modelrunner.settings import Settings

from .graceful_shutdown import ShutdownSignals, stop_within
from .runtime_process import RunningRuntime, metrics_endpoint, start_runtime, uri_host

if TYPE_CHECKING:
    from modelrunner.entry_server.server import ControlServer
    from modelrunner.metrics import MetricsEndpoint

_WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")


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

    control = start_control_server(settings)
    metrics: MetricsEndpoint | None = None
    runtime: RunningRuntime | None = None
    try:
        if settings.metrics_port is not None:
            metrics = metrics_endpoint(settings)
            control.control.metrics_uri = metrics.uri
        if with_runtime:
            runtime = _embedded_runtime(settings, control)
            # Open Inference requests for it skip the Flight hop (entry_server.inference_plane)
            service = runtime.server.service
            control.inference.attach_local(service.runtime_id, service)
            # it registered before start_runtime returned; ready means a runtime can predict
            control.readiness.wait(settings.runtime_wait_s)
    except BaseException:
        RunningServer(control, runtime, metrics).stop()
        raise
    return RunningServer(control, runtime, metrics)


def _embedded_runtime(settings: Settings, control: ControlServer) -> RunningRuntime:
    """The runtime in the control service's process: it holds an in-memory credential and asks
    its control service about its callers in process."""
    plane = control.control
    token = plane.issue_runtime_token("embedded-runtime")
    return start_runtime(
        settings,
        _local_address(control.port, settings.host),
        runtime_token=token,
        caller_check=plane.check_caller,
        metrics_uri=plane.metrics_uri,
    )


def control_address_of(running: RunningServer) -> str:
    """The address a runtime registers at (loopback when the service listens on every
    interface)."""
    return _local_address(running.control.port, running.control.settings.host)


def _local_address(port: int, host: str) -> str:
    return f"{'127.0.0.1' if host in _WILDCARD_HOSTS else uri_host(host)}:{port}"


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
