"""Readiness that means ready: the gRPC health statuses follow the runtimes that can predict.

Health service names (``grpc.health.v1.Health/Check``, Kubernetes' ``grpc:`` probe ``service:``):

* ``""`` (the server) and ``modelrunner.v1.ControlService``, ``inference.GRPCInferenceService``:
  SERVING while at least one registered runtime can predict, NOT_SERVING before the first one
  registers (``modelrunner serve`` starting its embedded runtime) and after the last is gone
  (stopped, or silent for three heartbeats). A readiness probe.
* ``liveness`` (:data:`LIVENESS_SERVICE`): SERVING while the process serves at all, starting or
  not; NOT_SERVING only once it shuts down. A liveness probe: "starting" is not "dead".

The Open Inference Protocol's ServerReady answers from the same count.
"""

from __future__ import annotations

import logging
import threading

from grpc_health.v1 import health, health_pb2

from modelrunner.entry_server.runtimes.directory import RuntimeDirectory

logger = logging.getLogger(__name__)

LIVENESS_SERVICE = "liveness"
"""The health service name that reports the process alive, ready or not."""
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Readiness:
    """Sets the readiness names of ``servicer`` from ``runtimes``'s count of available runtimes.

    Runtimes dropped for missing heartbeats are noticed by a thread that looks every
    ``check_interval_s`` (the directory drops them only when asked)."""

    def __init__(
        self,
        servicer: health.HealthServicer,
        runtimes: RuntimeDirectory,
        names: tuple[str, ...],
        *,
        check_interval_s: float = 1.0,
    ) -> None:
        self._servicer = servicer
        self._names = names
        self._runtimes = runtimes
        self._interval = check_interval_s
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._last: bool | None = None
        servicer.set(LIVENESS_SERVICE, _SERVING)
        runtimes.add_listener(self._on_count)
        self._thread = threading.Thread(
            target=self._watch, name="modelrunner-readiness", daemon=True
        )
        self._thread.start()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until a runtime that can predict is registered; False after ``timeout``."""
        return self._ready.wait(timeout)

    def _on_count(self, available: int) -> None:
        ready = available > 0
        if ready == self._last:
            return
        starting, self._last = self._last is None, ready
        for name in self._names:
            self._servicer.set(name, _SERVING if ready else _NOT_SERVING)
        if ready:
            self._ready.set()
            logger.info("ready: %d runtime(s) can predict", available)
        elif starting:
            logger.info("not ready until a runtime registers")
        else:
            self._ready.clear()
            logger.warning("not ready: no runtime can predict")

    def _watch(self) -> None:
        while not self._stopped.wait(self._interval):
            self._runtimes.available_count()  # drops silent runtimes, which calls _on_count

    def stop(self) -> None:
        self._stopped.set()
