"""Progress reporting for long work (downloads, unpacking, hashing) as ``types.Progress`` events."""

from __future__ import annotations

from modelrunner import types
from modelrunner.types import ProgressCallback
from modelrunner.units import MiB

"""Receives progress events. It may raise (e.g. ``CancelledError``) to stop the work."""


def no_progress(_: types.Progress) -> None:
    """A callback that ignores every event."""


class StageProgress:
    """Counts the progress of one stage and reports it every ``step`` units and at the end.

    Reporting every chunk would flood a gRPC stream with thousands of events for a large file.
    """

    def __init__(
        self,
        callback: ProgressCallback,
        stage: str,
        *,
        total: int = 0,
        unit: str = "bytes",
        step: int = 8 * MiB,
    ) -> None:
        self._callback = callback
        self.stage = stage
        self.total = total
        self.unit = unit
        self.done = 0
        self._step = step
        self._reported = -1

    def start(self) -> None:
        self._report()

    def advance(self, amount: int) -> None:
        self.done += amount
        if self.done - max(self._reported, 0) >= self._step:
            self._report()

    def finish(self) -> None:
        if self._reported != self.done:
            self._report()

    def _report(self) -> None:
        self._reported = self.done
        self._callback(
            types.Progress(stage=self.stage, done=self.done, total=self.total, unit=self.unit)
        )
