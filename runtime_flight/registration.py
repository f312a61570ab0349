"""A runtime announces itself to the control service and repeats it as a heartbeat.

A runtime that starts registers before it serves (so it is routed to at once, also after a
restart: the control service replaces the entry of the process that had its address); one that
shuts down says so (:meth:`Registration.leave`), so it is routed to no more while it drains."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import grpc

from modelrunner import converters, types
from modelrunner.transport_errors import from_rpc_error
from modelrunner.v1 import control_pb2, control_pb2_grpc

logger = logging.getLogger(__name__)


class Registration:
    """Keeps a runtime registered: one call now (so failures show at start), then a thread."""

    def __init__(
        self,
        control_address: str,
        info: Callable[[], types.RuntimeInfo],
        *,
        channel: grpc.Channel,
        cache_dir: Path | None,
        interval_s: float,
        wake: threading.Event | None = None,
    ) -> None:
        """``channel``: to the control service at ``control_address``, presenting the runtime's
        credential (``modelrunner.channels.control_channel``); the registration closes it when
        it stops. ``wake``: set to send the next heartbeat at once (:meth:`poke`)."""
        self.control_address = control_address
        self._info = info
        self._cache_dir = cache_dir
        self.interval_s = interval_s
        self.channel = channel
        self._stub = control_pb2_grpc.ControlServiceStub(self.channel)
        self._stop = threading.Event()
        self._wake = wake if wake is not None else threading.Event()
        self._thread: threading.Thread | None = None
        self.shared_cache_dir: Path | None = None

    def register_once(self, timeout: float = 10.0, *, leaving: bool = False) -> None:
        info = self._info()
        if leaving:
            info = info.model_copy(
                update={"available": False, "unavailable_reason": "shutting down"}
            )
        request = control_pb2.RegisterRuntimeRequest(
            runtime=converters.to_pb_runtime(info),
            cache_dir=str(self._cache_dir or ""),
        )
        try:
            response = self._stub.RegisterRuntime(request, timeout=timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        if response.heartbeat_interval_s > 0:
            self.interval_s = response.heartbeat_interval_s
        shared = Path(response.shared_cache_dir) if response.shared_cache_dir else None
        # The control service's cache is only usable when it is on this host's disk.
        self.shared_cache_dir = (
            shared if shared is not None and (shared / "models").is_dir() else None
        )

    def start(self) -> None:
        self.register_once()
        self._thread = threading.Thread(
            target=self._beat, name="modelrunner-heartbeat", daemon=True
        )
        self._thread.start()

    def poke(self) -> None:
        """Send the next heartbeat now (the runtime loaded or unloaded a model: routing and the
        cache's eviction should know at once)."""
        self._wake.set()

    def _beat(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.register_once()
            except Exception as e:  # noqa: BLE001 - keep beating: the control service may come back
                logger.warning("heartbeat to %s failed: %s", self.control_address, e)

    def leave(self, timeout: float = 2.0) -> None:
        """Stop the heartbeats and tell the control service this runtime takes no new calls
        (it shuts down); a control service that does not answer in ``timeout`` drops the
        runtime after three missed heartbeats instead."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)  # its last heartbeat must not land after this one
        try:
            self.register_once(timeout, leaving=True)
        except Exception as e:  # noqa: BLE001 - shutting down either way
            logger.info("could not tell %s this runtime leaves: %s", self.control_address, e)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.channel.close()
