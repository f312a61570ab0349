"""``progress=True``: bars on a terminal, plain lines in a log (no carriage returns, no cursor
codes), one label per stage."""

from __future__ import annotations

import io

import numpy as np
import pytest

from modelrunner.client import ModelInfo, ModelRunnerClient
from modelrunner.client._progress import _Lines, progress_callback
from modelrunner.types import Progress


def test_a_log_gets_plain_lines(
    client: ModelRunnerClient, identity: ModelInfo, capsys: pytest.CaptureFixture[str]
) -> None:
    client.predict(identity.id, np.zeros((96, 96), np.float32), blocksize=1, progress=True)
    _, err = capsys.readouterr()
    assert "\r" not in err and "\x1b[" not in err
    lines = err.splitlines()
    assert lines, "no progress shown"
    assert all(line.startswith("predict: ") for line in lines), lines
    assert not any(line.startswith("predict: predict") for line in lines)
    assert lines[-1].endswith("(100%)")


def test_plain_lines_are_throttled_per_stage() -> None:
    stream = io.StringIO()
    lines = _Lines("add model", stream)
    for done in range(0, 1001, 10):
        lines.show(Progress(stage="copy", done=done, total=1000, unit="bytes"))
    lines.show(Progress(stage="validate", done=1, total=3, unit="files"))
    assert stream.getvalue().splitlines() == [
        "add model: copy: 0 B/1000 B (0%)",
        "add model: copy: 1000 B/1000 B (100%)",
        "add model: validate: 1/3 files (33%)",
    ]


def test_a_callable_gets_the_events_untouched() -> None:
    seen: list[Progress] = []
    with progress_callback(seen.append, "predict") as report:
        assert report is not None
        report(Progress(stage="predict", done=1, total=2, unit="blocks"))
    assert seen == [Progress(stage="predict", done=1, total=2, unit="blocks")]


def test_a_stage_with_nothing_to_do_shows_no_line(capsys: pytest.CaptureFixture[str]) -> None:
    """The server copies no files of an upload it unpacked: no "add model: copy: 0 B"."""
    with progress_callback(True, "add model") as report:
        assert report is not None
        report(Progress(stage="copy", done=0, total=0, unit="bytes"))
        report(Progress(stage="hash", done=10, total=10, unit="bytes"))
    assert capsys.readouterr().err.splitlines() == ["add model: hash: 10 B/10 B (100%)"]
