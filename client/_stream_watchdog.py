"""A frame stream's idle timeout: :class:`IdleWatchdog` cancels the stream's exchange when the
runtime sends nothing for too long while the caller waits for an answer."""

from __future__ import annotations

import threading
import time

import pyarrow.flight as flight


class IdleWatchdog:
    """One thread per stream that cancels the exchange when a read waits longer than
    ``timeout`` (a thread per read would cost more than reading a small frame). Arming it for
    each read wakes its thread only when it is parked (no read was waiting): while frames keep
    coming it sleeps on, and finds the newest deadline when its wait ends."""

    def __init__(self, timeout: float, reader: flight.FlightStreamReader) -> None:
        self.timeout, self.reader = timeout, reader
        self.fired = False
        self._deadline = 0.0
        self._reading = False
        self._parked = False
        self._stopped = False
        self._wake = threading.Condition()
        threading.Thread(target=self._run, name="modelrunner-stream-idle", daemon=True).start()

    def arm(self) -> None:
        with self._wake:
            self._deadline = time.monotonic() + self.timeout
            self._reading = True
            if self._parked:
                self._wake.notify()

    def disarm(self) -> None:
        with self._wake:
            self._reading = False

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()

    def _run(self) -> None:
        with self._wake:
            while not self._stopped:
                if not self._reading:
                    self._parked = True
                    self._wake.wait()
                    self._parked = False
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._wake.wait(left)
                    continue
                self.fired, self._stopped = True, True
        if self.fired:
            try:
                self.reader.cancel()
            except Exception:  # noqa: BLE001 - already finished: nothing to stop
                pass
