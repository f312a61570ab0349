"""Start, stop and restart ``modelrunner`` as a user would (subprocesses, signals; issue 14):
readiness that means ready, a graceful drain on SIGTERM, restarts that clients ride through.

Each process start imports the runtime's frameworks (3-8 s), so the tests share few of them:
three starts of ``serve`` on one warm cache, and one ``serve --no-runtime`` whose runtime is
killed and started again.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from modelrunner import errors
from modelrunner.client import ModelRunnerClient
from modelrunner.serving import start_embedded
from modelrunner.settings import Settings

FRAME = np.arange(36, dtype="float32").reshape(6, 6)
GRACE_S = 4.0
STARTUP_S = 120.0


@dataclass
class Process:
    """A ``modelrunner`` subprocess whose stderr goes to a file (read for its ready line)."""

    popen: subprocess.Popen[bytes]
    stderr: Path

    def wait_for_line(self, prefix: str, timeout: float = STARTUP_S) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.stderr.read_text(errors="replace").splitlines():
                if line.startswith(prefix):
                    return line
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {prefix!r} line; stderr:\n{self.stderr.read_text()[-3000:]}")

    def signal(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)

    def exit_code(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    started: list[Process] = []

    def start(*args: str, cache: Path, heartbeat_s: float = 1.0) -> Process:
        env = {
            **os.environ,
            "MODELRUNNER_CACHE_DIR": str(cache),
            "MODELRUNNER_GRACE_PERIOD_S": str(GRACE_S),
            "MODELRUNNER_HEARTBEAT_INTERVAL_S": str(heartbeat_s),
            "MODELRUNNER_PATH_SOURCE_ROOTS": "[]",
            "MODELRUNNER_DESCRIPTION_WORKERS": "0",
        }
        stderr = tmp_path / f"stderr-{len(started)}.txt"
        with stderr.open("wb") as err:
            popen = subprocess.Popen(
                [sys.executable, "-m", "modelrunner.app.cli", *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )
        process = Process(popen, stderr)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def _serve(launch: Callable[..., Process], cache: Path) -> tuple[Process, str]:
    process = launch("serve", "--port", "0", "--flight-port", "0", cache=cache)
    line = process.wait_for_line("modelrunner ready: ")
    # "modelrunner ready: control service HOST:PORT, runtime grpc://HOST:PORT"
    address = line.split("control service ", 1)[1].split(",", 1)[0]
    return process, address


def _slow_frames(count: int, pause_s: float) -> Iterator[np.ndarray]:
    for _ in range(count):
        time.sleep(pause_s)
        yield FRAME


def test_every_start_predicts_at_once_and_every_stop_drains(
    launch: Callable[..., Process], tmp_path: Path, tiny: Callable[[str], Path]
) -> None:
    cache = tmp_path / "cache"
    # the model goes into the cache (a control service in process starts in a second)
    settings = Settings(cache_dir=cache, port=0, description_workers=0)
    with (
        start_embedded(settings, with_runtime=False) as cold,
        ModelRunnerClient(cold.address, timeout=60, retry_s=0) as client,
    ):
        model_id = client.add_model(tiny("onnx"), upload=True).id

    # warm starts: right after "ready" (and SERVING) the model predicts, no retries needed
    for start in range(3):
        process, address = _serve(launch, cache)
        with ModelRunnerClient(address, timeout=60, retry_s=0) as client:
            assert client.health() == "SERVING"
            assert client.add_model(tiny("onnx"), upload=True).id == model_id
            np.testing.assert_array_equal(
                client.predict(model_id, FRAME)["output"].reshape(6, 6), FRAME
            )
            if start == 1:
                _a_second_signal_exits_at_once(process, client, model_id)
            elif start == 2:
                _sigterm_ends_a_stream_with_the_typed_error(process, client, model_id)
        if start == 0:
            # idle (the client closed its session): it exits at once
            began = time.monotonic()
            process.signal(signal.SIGTERM)
            assert process.exit_code(GRACE_S + 5) == 0
            assert time.monotonic() - began < GRACE_S


def _sigterm_ends_a_stream_with_the_typed_error(
    process: Process, client: ModelRunnerClient, model_id: str
) -> None:
    """A 400-frame stream at SIGTERM: the frames sent are answered, then the stream ends with
    ServerShuttingDownError naming how many, and the process exits within the grace period."""
    answered: list[np.ndarray] = []
    caught: list[BaseException] = []
    began = [0.0]

    def consume() -> None:
        try:
            with client.predict_stream(model_id, _slow_frames(400, 0.02)) as stream:
                for outputs in stream:
                    answered.append(outputs["output"])
                    if len(answered) == 20:
                        began[0] = time.monotonic()
                        process.signal(signal.SIGTERM)
        except BaseException as e:  # noqa: BLE001 - asserted below
            caught.append(e)

    thread = threading.Thread(target=consume)
    thread.start()
    thread.join(60)
    assert process.exit_code(GRACE_S + 5) == 0
    exited_after = time.monotonic() - began[0]
    assert exited_after < GRACE_S + 3, exited_after
    assert len(caught) == 1 and isinstance(caught[0], errors.ServerShuttingDownError), caught
    assert caught[0].frames_answered == len(answered)
    assert 20 <= len(answered) < 400
    for outputs in answered:
        np.testing.assert_array_equal(outputs.reshape(6, 6), FRAME)


def _a_second_signal_exits_at_once(
    process: Process, client: ModelRunnerClient, model_id: str
) -> None:
    """The drain waits for the open session (the client keeps it a few seconds); a second
    SIGTERM does not."""
    client.predict(model_id, FRAME)
    process.signal(signal.SIGTERM)
    time.sleep(0.5)
    began = time.monotonic()
    process.signal(signal.SIGTERM)
    assert process.exit_code(5) == 128 + signal.SIGTERM
    assert time.monotonic() - began < 2.0


def test_clients_ride_through_a_runtime_restart(
    launch: Callable[..., Process], tmp_path: Path, tiny: Callable[[str], Path]
) -> None:
    """``serve --no-runtime`` is not ready until a runtime registers, and not ready again when
    it is killed; idempotent calls ride through its restart; a stream it was serving ends with
    UnavailableError naming the frames answered."""
    cache = tmp_path / "cache"
    control_port, flight_port = _free_port(), _free_port()
    address = f"127.0.0.1:{control_port}"
    heartbeat_s = 0.5
    control = launch(
        "serve", "--no-runtime", "--port", str(control_port), cache=cache, heartbeat_s=heartbeat_s
    )
    control.wait_for_line("modelrunner waiting for a runtime")

    def start_runtime() -> Process:
        return launch(
            "runtime",
            "--control",
            address,
            "--flight-port",
            str(flight_port),
            cache=cache,
            heartbeat_s=heartbeat_s,
        )

    with ModelRunnerClient(address, timeout=60, retry_s=30) as client:
        assert client.health("liveness") == "SERVING"
        assert client.health() == "NOT_SERVING"
        runtime = start_runtime()
        control.wait_for_line("modelrunner ready: ")
        assert client.health() == "SERVING"
        model_id = client.add_model(tiny("onnx"), upload=True).id
        client.load(model_id)

        # the runtime dies mid-stream
        answered = 0
        with (
            pytest.raises(errors.UnavailableError) as lost,
            client.predict_stream(model_id, _slow_frames(400, 0.02)) as stream,
        ):
            for _ in stream:
                answered += 1
                if answered == 10:
                    runtime.kill()
        assert lost.value.frames_answered == answered >= 10

        # three missed heartbeats later the server is not ready
        deadline = time.monotonic() + 10
        while client.health() == "SERVING" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.health() == "NOT_SERVING"
        assert client.health("liveness") == "SERVING"

        # a load now waits (retries) for the runtime that starts meanwhile
        timer = threading.Timer(0.5, lambda: started.append(start_runtime()))
        started: list[Process] = []
        timer.start()
        info = client.load(model_id)
        timer.join()
        assert info.model.model_id == model_id
        assert client.list_models()[0].id == model_id
        np.testing.assert_array_equal(
            client.predict(model_id, FRAME)["output"].reshape(6, 6), FRAME
        )
        # the rest of the stream, from where it stopped
        with client.predict_stream(model_id, [FRAME] * (400 - answered)) as stream:
            assert sum(1 for _ in stream) == 400 - answered
