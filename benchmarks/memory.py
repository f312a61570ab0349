"""Peak resident memory of a server process (and its children) while something runs.

A thread samples the RSS every few milliseconds; the peak minus the baseline taken just before is
what the request cost the server. Short peaks between two samples are missed, so the figure is a
lower bound of the true peak (at 5 ms and the bandwidths here, a copy of a few MiB).
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

import psutil


class PeakRss:
    """``with PeakRss(pid) as rss: ...`` then ``rss.baseline``, ``rss.peak``, ``rss.increase``."""

    def __init__(self, pid: int, *, interval: float = 0.005) -> None:
        self.interval = interval
        root = psutil.Process(pid)
        # The process tree is taken once: servers do not start processes per request, and
        # listing children at every sample would cost more than the sample.
        self._processes = [root, *root.children(recursive=True)]
        self.baseline = 0
        self.peak = 0
        self.last = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_loop, name="rss-sampler", daemon=True)

    def rss(self) -> int:
        total = 0
        for p in self._processes:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        return total

    @property
    def increase(self) -> int:
        return max(0, self.peak - self.baseline)

    def _sample_loop(self) -> None:
        while not self._stop.is_set():
            value = self.rss()
            self.last = value
            self.samples += 1
            if value > self.peak:
                self.peak = value
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self.baseline = self.peak = self.last = self.rss()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.last = self.rss()
        self.peak = max(self.peak, self.last)
