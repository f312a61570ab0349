"""Unloads warm models nobody used for ``idle_unload_s`` (setting), so a copy loaded on a
second runtime to spread a busy model's traffic goes away when the rush is over
(docs/cluster.md). Off by default: a single runtime keeps what it loaded until it needs the
memory."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .pipelines import PipelinePool

logger = logging.getLogger(__name__)


class IdleUnloading:
    """A thread that looks every quarter of ``idle_s`` (at most every 30 s)."""

    def __init__(self, pool: PipelinePool, idle_s: float, on_change: Callable[[], None]) -> None:
        self._pool = pool
        self.idle_s = idle_s
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="modelrunner-idle-unloading", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(min(self.idle_s / 4, 30.0)):
            try:
                if self._pool.unload_idle(self.idle_s):
                    self._on_change()  # the control service routes by what is warm
            except Exception:
                logger.exception("unloading idle models failed")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
