"""Signals and the bound on a graceful shutdown of ``modelrunner serve`` and ``modelrunner runtime``.

The first SIGTERM or SIGINT asks for a drain (the servers refuse new calls at once and let the
work under way finish, ``Settings.grace_period_s``); a second one ends the process at once. Work
that still runs when the grace period (plus a short margin for unloading) is over is cut off:
the process exits, so an orchestrator never has to kill it. Nothing half-written stays in the
cache either way: packages are staged under ``tmp/`` and renamed into place, uploads are written
to a partial file and renamed, and a start removes what a cut-off left in ``tmp/``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

logger = logging.getLogger(__name__)

STOP_MARGIN_S = 3.0
"""Time beyond the grace period for unloading models and closing the cache."""
EXIT_CUT_OFF = 1
"""Exit status when the grace period ran out with work still running."""


class ShutdownSignals:
    """Installs SIGINT and SIGTERM handlers: the first sets :attr:`requested`, the next ends the
    process at once (status 128 + the signal's number, as a shell reports it). Installed before
    the servers start, so a signal during the start stops them cleanly."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested.is_set():
            # a second signal: the person or orchestrator wants it gone now
            sys.stderr.write(f"received {name} again: exiting now\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        logger.info("received %s: shutting down (again to exit at once)", name)
        self.requested.set()

    def wait(self) -> None:
        # a timed wait: the main thread runs signal handlers only between waits
        while not self.requested.wait(0.5):
            pass


def stop_within(stop: Callable[[], None], grace_s: float) -> None:
    """Run ``stop`` (the drain) on a thread and wait for it up to ``grace_s`` plus
    :data:`STOP_MARGIN_S`; past that, exit the process (:data:`EXIT_CUT_OFF`). The main thread
    keeps handling signals meanwhile, so a second one exits at once."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            stop()
        except BaseException as e:  # noqa: BLE001 - re-raised on the main thread
            failure.append(e)

    thread = threading.Thread(target=run, name="modelrunner-shutdown", daemon=True)
    thread.start()
    thread.join(grace_s + STOP_MARGIN_S)
    if thread.is_alive():
        logger.warning(
            "work still running %.1f s after the shutdown began (grace_period_s=%g): cut off",
            grace_s + STOP_MARGIN_S,
            grace_s,
        )
        logging.shutdown()
        os._exit(EXIT_CUT_OFF)
    if failure:
        raise failure[0]
