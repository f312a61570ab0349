"""Normal events leave no alarming line in the server's log: a path the server does not read
(the client learns it once per server and uploads from then on), a session its client closed or
left between frames."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from modelrunner.client import ModelInfo, ModelRunnerClient
from modelrunner.serving import RunningServer

REFUSALS = "modelrunner.entry_server.edge.error_interceptor"
RUNTIME = "modelrunner.runtime_flight.server"


def test_a_server_that_reads_no_paths_is_asked_once(
    server: RunningServer,
    example_model: Callable[[str], Path],
    tiny: Callable[[str], Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The shared server has no path_source_roots: the first local path is refused (logged at
    debug level only) and uploaded; the same client uploads the next at once."""
    caplog.set_level(logging.DEBUG, logger=REFUSALS)
    with ModelRunnerClient(server.address, timeout=120) as client:
        client.add_model(example_model("nuclei"))
        client.validate(tiny("onnx"))
        client.add_model(tiny("onnx"))
    refused = [r for r in caplog.records if r.name == REFUSALS and "reads no paths" in r.message]
    assert len(refused) == 1 and refused[0].levelno == logging.DEBUG


def test_a_session_left_between_frames_is_no_cancelled_prediction(
    server: RunningServer, identity: ModelInfo, caplog: pytest.LogCaptureFixture
) -> None:
    """A client process that predicts and exits without closing its client: its session ends
    while waiting for a frame, which is how sessions end."""
    caplog.set_level(logging.DEBUG, logger=RUNTIME)
    script = (
        "import numpy as np; from modelrunner.client import ModelRunnerClient; "
        f"c = ModelRunnerClient({server.address!r}); "
        f"c.predict({identity.id!r}, np.zeros((16, 16), np.float32)); "
        "import os; os._exit(0)"  # no close(), no interpreter shutdown: the connection drops
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    ended = "session of model " + identity.id[:12]

    def logged() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == RUNTIME and ended in r.message]

    deadline = time.monotonic() + 10
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.05)
    (record,) = logged()
    assert record.levelno == logging.DEBUG and "ended by its client" in record.message
