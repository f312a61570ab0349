"""Optional progress display: ``progress=True`` shows tqdm bars on a terminal or in a notebook and
plain lines anywhere else (a log file, a pipe, CI); a callable gets the events.

Bars are for people watching: in a log, tqdm's carriage returns and the cursor-up codes it uses
for stacked bars (``ESC [A``) turn into noise, so there each stage is a few plain lines instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from modelrunner.types import Progress, ProgressCallback

ProgressOption = bool | ProgressCallback

LINE_INTERVAL_S = 5.0
"""Plain lines: at most one per stage this often, besides its first and last."""


@contextmanager
def progress_callback(
    option: ProgressOption, description: str
) -> Iterator[ProgressCallback | None]:
    if option is False or option is None:
        yield None
        return
    if callable(option):
        yield option
        return
    display = _Bars(description) if _interactive(sys.stderr) else _Lines(description, sys.stderr)

    def show(event: Progress) -> None:
        # a stage with nothing to do (the server copies no files of an upload it unpacked)
        # is not worth a line: "copy: 0 B"
        if event.total == 0 and event.done == 0:
            return
        display.show(event)

    try:
        yield show
    finally:
        display.close()


def _interactive(stream: TextIO) -> bool:
    """A terminal, or a Jupyter kernel (whose streams are no terminals, but show widgets)."""
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return True
    return "ipykernel" in sys.modules


def _label(description: str, stage: str) -> str:
    return description if stage in ("", description) else f"{description}: {stage}"


class _Bars:
    """One tqdm bar at a time: a new stage closes the previous one, so bars never stack."""

    def __init__(self, description: str) -> None:
        self._description = description
        self._stage = ""
        self._bar: Any = None

    def show(self, event: Progress) -> None:
        from tqdm.auto import tqdm

        if self._bar is None or event.stage != self._stage:
            self.close()
            bytes_unit = event.unit == "bytes"
            self._stage = event.stage
            self._bar = tqdm(
                disable=False,  # explicit, so TQDM_DISABLE (set by servers) leaves ours alone
                desc=_label(self._description, event.stage),
                total=event.total or None,
                unit="B" if bytes_unit else event.unit,
                unit_scale=bytes_unit,
                unit_divisor=1024 if bytes_unit else 1000,
            )
        bar = self._bar
        if event.total and bar.total != event.total:
            bar.total = event.total
        if event.bytes_done and event.unit != "bytes":
            elapsed = bar.format_dict.get("elapsed") or 0.0
            if elapsed > 0:
                bar.set_postfix_str(f"{event.bytes_done / 1e6 / elapsed:.1f} MB/s", refresh=False)
        bar.update(event.done - bar.n)
        if event.total and event.done >= event.total:
            self.close()  # now, so its rate is that of its own stage

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class _Lines:
    """Plain lines for logs: a stage's start, then at most one line every ``LINE_INTERVAL_S``,
    then its end."""

    def __init__(self, description: str, stream: TextIO) -> None:
        self._description = description
        self._stream = stream
        self._last: dict[str, float] = {}
        self._started: dict[str, tuple[float, int]] = {}
        self._finished: set[str] = set()

    def show(self, event: Progress) -> None:
        now = time.monotonic()
        finished = bool(event.total) and event.done >= event.total
        first = event.stage not in self._last
        if event.stage in self._finished and not first:
            return
        if finished or first or now - self._last[event.stage] >= LINE_INTERVAL_S:
            self._last[event.stage] = now
            if finished:
                self._finished.add(event.stage)
            rate = self._rate(event, now)
            self._stream.write(
                f"{_label(self._description, event.stage)}: {_amount(event)}{rate}\n"
            )
            self._stream.flush()

    def _rate(self, event: Progress, now: float) -> str:
        """ ", 12.3 MB/s, 4m05s left" for events that carry bytes, from the stage's first event."""
        start, done = self._started.setdefault(event.stage, (now, event.done))
        if not event.bytes_done or now <= start:
            return ""
        text = f", {event.bytes_done / 1e6 / (now - start):.1f} MB/s"
        if event.total and event.done > done:
            left = (event.total - event.done) * (now - start) / (event.done - done)
            text += f", {int(left // 60)}m{int(left % 60):02d}s left"
        return text

    def close(self) -> None:
        pass


def _amount(event: Progress) -> str:
    def size(n: int) -> str:
        if event.unit != "bytes":
            return f"{n}"
        value = float(n)
        for unit in ("B", "KiB", "MiB"):
            if value < 1024:
                return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
            value /= 1024
        return f"{value:.1f} GiB"

    unit = "" if event.unit == "bytes" else f" {event.unit}"
    if not event.total:
        return f"{size(event.done)}{unit}"
    percent = 100 * event.done / event.total
    return f"{size(event.done)}/{size(event.total)}{unit} ({percent:.0f}%)"
