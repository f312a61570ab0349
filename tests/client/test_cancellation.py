"""Cancelling a tiled prediction stops the work on the server: ``close()`` from another thread
(fast path, bioimageio.core's path, a session), an asyncio task cancelled, a client process
killed, and Ctrl-C in ``modelrunner predict`` with a server and with its embedded runner.

The model is the tiny halo model on an image of thousands of small tiles (``blocksize=2``:
48x48 tiles), which takes seconds; each test cancels after the first tile and asserts that the
runtime ends the call (its count of exchanges in progress drops back) and counts it cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelrunner.client import (
    AsyncModelRunnerClient,
    CancelledError,
    ModelInfo,
    ModelRunnerClient,
    Progress,
)
from modelrunner.runtime_flight.server import RuntimeFlightServer
from modelrunner.serving import RunningServer

Tiny = Callable[[str], Path]
SIDE = 3072
"""3072x3072 float32 (36 MiB) in 48x48 tiles: about 3,000 tiles, seconds of work."""
BLOCKSIZE = 2
STOPPED_WITHIN_S = 3.0
"""Generous: the runtime asks every 50 ms and a tile takes about a millisecond here."""
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def halo(client: ModelRunnerClient, tiny: Tiny) -> ModelInfo:
    info = client.add_model(tiny("halo"))
    client.load(info.id)
    return info


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).random((SIDE, SIDE), np.float32)


@pytest.fixture
def runtime(server: RunningServer) -> Iterator[RuntimeFlightServer]:
    assert server.runtime is not None
    yield server.runtime.server


def _wait_until(condition: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "condition not met in time"
        time.sleep(0.01)
    return time.monotonic() - start


class _Baseline:
    """The runtime's exchanges before the test (idle sessions of other tests' clients count
    too, and may close meanwhile): the cancelled call must bring the count back to at most
    that, and add one to the cancelled count."""

    def __init__(self, runtime: RuntimeFlightServer) -> None:
        self.runtime = runtime
        self.active = runtime.active_exchanges
        self.opened = runtime.exchanges_opened
        self.cancelled = runtime.exchanges_cancelled

    def started(self) -> bool:
        return self.runtime.exchanges_opened > self.opened

    def assert_stopped(self) -> float:
        waited = _wait_until(lambda: self.runtime.active_exchanges <= self.active, 30)
        assert self.runtime.exchanges_cancelled == self.cancelled + 1
        return waited


class _Predict(threading.Thread):
    """``client.predict`` in a thread, recording its progress and how it ended."""

    def __init__(self, client: ModelRunnerClient, model: str, image: np.ndarray, **kw: Any):
        super().__init__(daemon=True)
        self.client, self.model, self.image, self.kw = client, model, image, kw
        self.tiles = (0, 0)
        self.first_tile = threading.Event()
        self.error: BaseException | None = None

    def progress(self, event: Progress) -> None:
        if event.stage == "predict":
            self.tiles = (event.done, event.total)
            self.first_tile.set()

    def run(self) -> None:
        try:
            if self.kw.pop("with_progress", True):
                self.kw["progress"] = self.progress
            self.client.predict(self.model, self.image, blocksize=BLOCKSIZE, **self.kw)
        except BaseException as e:  # noqa: BLE001 - asserted by the test
            self.error = e


@pytest.mark.parametrize(
    "options",
    [{}, {"reference_path": True}],
    ids=["fast path", "bioimageio.core"],
)
def test_closing_the_client_cancels_a_tiled_prediction(
    server: RunningServer,
    runtime: RuntimeFlightServer,
    halo: ModelInfo,
    image: np.ndarray,
    options: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="modelrunner.runtime_flight.server")
    baseline = _Baseline(runtime)
    own = ModelRunnerClient(server.address, timeout=60)
    call = _Predict(own, halo.id, image, **options)
    call.start()
    assert call.first_tile.wait(30), call.error
    own.close()
    call.join(STOPPED_WITHIN_S)
    assert not call.is_alive()
    assert isinstance(call.error, CancelledError)
    assert call.error.message == "the prediction was cancelled: the client was closed"
    assert baseline.assert_stopped() < STOPPED_WITHIN_S
    done, total = call.tiles
    assert total > 1000 and done < total // 2
    said = [r.getMessage() for r in caplog.records if "cancelled" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"prediction of model {halo.id[:12]} cancelled")
    with pytest.raises(CancelledError, match="the client was closed"):
        own.predict(halo.id, image[:64, :64])


def test_closing_the_client_cancels_a_prediction_on_a_session(
    server: RunningServer, runtime: RuntimeFlightServer, halo: ModelInfo, image: np.ndarray
) -> None:
    """Without progress a sample under 64 MiB goes on a session, an exchange that outlives
    calls: the call must still be cancelled, not just left to finish."""
    baseline = _Baseline(runtime)
    own = ModelRunnerClient(server.address, timeout=60)
    call = _Predict(own, halo.id, image, with_progress=False)
    call.start()
    _wait_until(baseline.started, 30)
    time.sleep(0.5)  # received, and tiling
    own.close()
    call.join(STOPPED_WITHIN_S)
    assert isinstance(call.error, CancelledError)
    assert baseline.assert_stopped() < STOPPED_WITHIN_S


def test_cancelling_an_async_predict_stops_it_on_the_server(
    server: RunningServer, runtime: RuntimeFlightServer, halo: ModelInfo, image: np.ndarray
) -> None:
    baseline = _Baseline(runtime)
    first_tile = threading.Event()

    def progress(event: Progress) -> None:
        if event.stage == "predict":
            first_tile.set()

    async def main() -> None:
        async with AsyncModelRunnerClient(server.address, timeout=60) as client:
            task = asyncio.ensure_future(
                client.predict(halo.id, image, blocksize=BLOCKSIZE, progress=progress)
            )
            await asyncio.get_running_loop().run_in_executor(None, first_tile.wait, 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert baseline.assert_stopped() < STOPPED_WITHIN_S

    asyncio.run(main())


_KILLED_CLIENT = """
import sys
import numpy as np
from modelrunner.client import ModelRunnerClient
client = ModelRunnerClient(sys.argv[1], timeout=60)
client.predict(sys.argv[2], np.load(sys.argv[3]), blocksize=int(sys.argv[4]))
"""


@pytest.fixture(scope="module")
def image_file(image: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cancel") / "image.npy"
    np.save(path, image)
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELRUNNER_")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def test_a_killed_client_process_stops_the_work(
    server: RunningServer, runtime: RuntimeFlightServer, halo: ModelInfo, image_file: Path
) -> None:
    baseline = _Baseline(runtime)
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CLIENT, server.address, halo.id, str(image_file), "2"],
        env=_env(),
    )
    try:
        _wait_until(baseline.started, 60)
        time.sleep(0.5)
    finally:
        process.kill()
        process.wait()
    assert baseline.assert_stopped() < STOPPED_WITHIN_S


class _Stderr(threading.Thread):
    """A process's stderr, read as it comes."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.text = ""

    def run(self) -> None:
        assert self.process.stderr is not None
        for chunk in iter(lambda: self.process.stderr.read(1), ""):  # type: ignore[union-attr]
            self.text += chunk


def _interrupt(process: subprocess.Popen[str], stderr: _Stderr) -> float:
    """SIGINT to the process's group, as Ctrl-C in a terminal sends it (the embedded runner's
    worker processes get it too), then the seconds until the process exits."""
    start = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    process.wait(60)
    stderr.join(10)
    return time.monotonic() - start


def _assert_cancelled_cleanly(process: subprocess.Popen[str], text: str, output: Path) -> None:
    assert process.returncode == 130, text
    assert "Traceback" not in text, text
    assert [line.strip() for line in text.splitlines()].count("cancelled") == 1, text
    assert not output.exists()


def test_ctrl_c_in_modelrunner_predict_stops_the_server_work(
    server: RunningServer,
    runtime: RuntimeFlightServer,
    halo: ModelInfo,
    image_file: Path,
    tmp_path: Path,
) -> None:
    baseline = _Baseline(runtime)
    output = tmp_path / "out.tif"
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "modelrunner.app.cli", "predict", halo.id, str(image_file)),
            *("-o", str(output), "--blocksize", "2", "--server", server.address),
        ],
        env=_env(),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    stderr = _Stderr(process)
    stderr.start()
    try:
        _wait_until(baseline.started, 60)
        time.sleep(1.0)  # received and tiling
    finally:
        exited = _interrupt(process, stderr)
    _assert_cancelled_cleanly(process, stderr.text, output)
    assert baseline.assert_stopped() < STOPPED_WITHIN_S
    assert exited < STOPPED_WITHIN_S


# ``modelrunner predict`` with logging on, so that the test sees when the embedded runner has
# loaded the model (and the prediction runs)
_LOGGING_CLI = (
    "import logging, sys; logging.basicConfig(level=logging.INFO); "
    "from modelrunner.app.cli import main; sys.exit(main(sys.argv[1:]))"
)


def test_ctrl_c_stops_modelrunner_predicts_embedded_runner(
    tiny: Tiny, image_file: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out.tif"
    # --embedded: the command starts its own runner whatever answers at the default address
    env = _env(MODELRUNNER_CACHE_DIR=str(tmp_path / "cache"))
    process = subprocess.Popen(
        [
            *(sys.executable, "-c", _LOGGING_CLI, "predict", str(tiny("halo")), str(image_file)),
            *("-o", str(output), "--blocksize", "2", "--embedded"),
        ],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )
    stderr = _Stderr(process)
    stderr.start()
    try:
        _wait_until(lambda: "modelrunner.runtime_flight.pipelines:loaded" in stderr.text, 120)
        time.sleep(1.0)  # tiling
    finally:
        exited = _interrupt(process, stderr)
    _assert_cancelled_cleanly(process, stderr.text, output)
    assert stderr.text.count("cancelled by the client") == 1, stderr.text
    # the work stopped at once (the log line above); the embedded servers stop, and the
    # interpreter takes about 2 s to exit after torch and bioimageio.core, cancelled or not
    assert exited < STOPPED_WITHIN_S + 5
