"""Optional progress display: ``progress=True`` shows tqdm bars, a callable gets the events."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from modelrunner.types import Progress

ProgressCallback = Callable[[Progress], None]
ProgressOption = bool | ProgressCallback


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
    bars: dict[str, Any] = {}

    def show(event: Progress) -> None:
        from tqdm.auto import tqdm

        bar = bars.get(event.stage)
        if bar is None:
            bytes_unit = event.unit == "bytes"
            bar = bars[event.stage] = tqdm(
                disable=False,  # explicit, so TQDM_DISABLE (set by servers) leaves ours alone
                desc=f"{description}: {event.stage}",
                total=event.total or None,
                unit="B" if bytes_unit else event.unit,
                unit_scale=bytes_unit,
                unit_divisor=1024 if bytes_unit else 1000,
            )
        if event.total and bar.total != event.total:
            bar.total = event.total
        bar.update(event.done - bar.n)
        if event.total and event.done >= event.total:
            bar.close()  # now, so its rate is that of its own stage

    try:
        yield show
    finally:
        for bar in bars.values():
            bar.close()
