"""Predict sessions: lockstep ``client.predict`` calls reuse one open exchange per runtime,
command and input layout; errors of single samples leave the session usable; broken sessions are
replaced without the caller noticing; timeouts, ``close()`` and ``reference_path`` still work.

The runtime's counter ``exchanges_opened`` shows how many exchanges the calls opened."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from modelrunner.client import (
    AsyncModelRunnerClient,
    DeadlineExceededError,
    InvalidTensorError,
    ModelInfo,
    ModelRunnerClient,
)
from modelrunner.predict_request import PredictRequest
from modelrunner.runtime_flight.server import RuntimeFlightServer
from modelrunner.serving import RunningServer, start_embedded, start_runtime
from modelrunner.settings import Settings

Tiny = Callable[[str], Path]


@pytest.fixture
def own_client(server: RunningServer) -> Iterator[ModelRunnerClient]:
    """A client of its own, so the pool holds only this test's sessions."""
    with ModelRunnerClient(server.address, timeout=60) as c:
        yield c


@pytest.fixture
def no_sessions(
    server: RunningServer, client: ModelRunnerClient, runtime: RuntimeFlightServer
) -> None:
    """No session open on the runtime: the shared client's idle ones closed."""
    assert server.runtime is not None
    client._runtimes.sessions.drop(server.runtime.flight_uri)
    _wait_until(lambda: runtime.active_sessions == 0)


def _frame(i: float, side: int = 16) -> np.ndarray:
    return np.full((1, 1, side, side), i, np.float32)


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _opened_during(runtime: RuntimeFlightServer, calls: Callable[[], Any]) -> int:
    before = runtime.exchanges_opened
    calls()
    return runtime.exchanges_opened - before


def _one_shot(client: ModelRunnerClient, model_id: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """A call with a progress callback takes an exchange of its own."""
    return client.predict(model_id, x, progress=lambda event: None)


def test_repeated_predicts_reuse_one_exchange(
    own_client: ModelRunnerClient, identity: ModelInfo, runtime: RuntimeFlightServer
) -> None:
    def calls() -> None:
        for i in range(20):
            out = own_client.predict(identity.id, _frame(i))["output"]
            np.testing.assert_array_equal(out, _frame(i))

    assert _opened_during(runtime, calls) == 1
    assert own_client._runtimes.sessions.idle == 1
    # a call with a progress callback keeps to its own exchange
    assert _opened_during(runtime, lambda: _one_shot(own_client, identity.id, _frame(1))) == 1


def test_session_results_equal_one_shot_results(
    own_client: ModelRunnerClient, nuclei: ModelInfo, runtime: RuntimeFlightServer
) -> None:
    images = [np.random.default_rng(i).random((1, 1, 256, 256), np.float32) for i in range(3)]
    for image in images:
        on_session = own_client.predict(nuclei.id, image, weight_format="onnx")
        one_shot = _one_shot(own_client, nuclei.id, image)
        assert on_session.keys() == one_shot.keys() == {"probability"}
        np.testing.assert_array_equal(on_session["probability"], one_shot["probability"])
        assert on_session["probability"].shape == (1, 1, 256, 256)


def test_a_bad_sample_fails_alone_and_the_session_goes_on(
    own_client: ModelRunnerClient, identity: ModelInfo, runtime: RuntimeFlightServer
) -> None:
    """Attacks the runtime's input check inside an open session: a NaN frame of the session's
    own shape (so it travels on the same exchange) is refused with the typed error, and the
    session answers the next frame."""
    own_client.predict(identity.id, _frame(0))
    before = runtime.exchanges_opened
    with pytest.raises(InvalidTensorError, match="NaN") as caught:
        own_client.predict(identity.id, _frame(np.nan))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    out = own_client.predict(identity.id, _frame(7))["output"]
    np.testing.assert_array_equal(out, _frame(7))
    assert runtime.exchanges_opened == before
    assert own_client._runtimes.sessions.idle == 1


def test_a_wrong_shape_fails_on_its_own_session_which_stays_usable(
    own_client: ModelRunnerClient, identity: ModelInfo, runtime: RuntimeFlightServer
) -> None:
    """Attacks the model's axis check with three channels for a one-channel model: the first
    sample of a new session fails with the typed error; the session is kept for its layout."""
    three_channels = np.zeros((1, 3, 16, 16), np.float32)

    def calls() -> None:
        for _ in range(2):
            with pytest.raises(InvalidTensorError) as caught:
                own_client.predict(identity.id, three_channels)
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert caught.value.details.get("tensor") == "input"

    assert _opened_during(runtime, calls) == 1
    np.testing.assert_array_equal(own_client.predict(identity.id, _frame(2))["output"], _frame(2))
    assert own_client._runtimes.sessions.idle == 2


def test_concurrent_callers_never_share_a_session(
    own_client: ModelRunnerClient, identity: ModelInfo, runtime: RuntimeFlightServer
) -> None:
    failures: list[BaseException] = []
    start = threading.Barrier(2)

    def work(offset: int) -> None:
        try:
            start.wait()
            for i in range(100):
                value = offset + i
                out = own_client.predict(identity.id, _frame(value))["output"]
                np.testing.assert_array_equal(out, _frame(value))
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            failures.append(e)

    def calls() -> None:
        threads = [threading.Thread(target=work, args=(k * 1000,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

    opened = _opened_during(runtime, calls)
    assert not failures, failures[0]
    assert 1 <= opened <= 2  # one session per caller at most
    assert own_client._runtimes.sessions.idle == opened


def test_each_input_layout_and_command_has_its_own_session(
    own_client: ModelRunnerClient, identity: ModelInfo, runtime: RuntimeFlightServer
) -> None:
    def calls() -> None:
        for _ in range(3):
            assert own_client.predict(identity.id, _frame(1, 16))["output"].shape == (1, 1, 16, 16)
            assert own_client.predict(identity.id, _frame(1, 32))["output"].shape == (1, 1, 32, 32)
            own_client.predict(identity.id, _frame(1, 16), nan_policy="allow")

    assert _opened_during(runtime, calls) == 3
    assert own_client._runtimes.sessions.idle == 3


def test_a_session_the_runtime_ended_is_replaced_transparently(
    own_client: ModelRunnerClient, identity: ModelInfo, runtime: RuntimeFlightServer
) -> None:
    own_client.predict(identity.id, _frame(0))
    runtime.retire_sessions()  # the pooled session's exchange ends before its next sample

    def calls() -> None:
        out = own_client.predict(identity.id, _frame(3))["output"]
        np.testing.assert_array_equal(out, _frame(3))

    assert _opened_during(runtime, calls) == 1
    assert _opened_during(runtime, calls) == 0
    assert own_client._runtimes.sessions.idle == 1


def test_a_per_call_timeout_applies_on_a_session(
    own_client: ModelRunnerClient,
    identity: ModelInfo,
    runtime: RuntimeFlightServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    own_client.predict(identity.id, _frame(0))
    service = runtime.service
    predict = service.predict

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.0)
        return predict(*args, **kwargs)

    monkeypatch.setattr(service, "predict", slow)
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError, match=r"timeout of 0\.2 s") as caught:
        own_client.predict(identity.id, _frame(1), timeout=0.2)
    assert time.monotonic() - started < 0.9
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    # the one-shot exchange raises the same type for the same reason
    with pytest.raises(DeadlineExceededError):
        own_client.predict(identity.id, _frame(1), timeout=0.2, progress=lambda event: None)
    assert own_client._runtimes.sessions.idle == 0  # the cancelled session was dropped
    monkeypatch.setattr(service, "predict", predict)
    _wait_until(lambda: runtime.active_exchanges == 0)
    np.testing.assert_array_equal(
        own_client.predict(identity.id, _frame(4), timeout=5)["output"], _frame(4)
    )
    # a deadline that is not reached leaves the session in the pool
    assert own_client._runtimes.sessions.idle == 1


def test_close_ends_the_sessions_on_the_runtime(
    server: RunningServer, identity: ModelInfo, runtime: RuntimeFlightServer, no_sessions: None
) -> None:
    client = ModelRunnerClient(server.address)
    client.predict(identity.id, _frame(0, 16))
    client.predict(identity.id, _frame(0, 24))
    assert runtime.active_sessions == 2
    client.close()
    _wait_until(lambda: runtime.active_sessions == 0, timeout=2)


def test_idle_sessions_are_closed_after_a_while(
    own_client: ModelRunnerClient,
    identity: ModelInfo,
    runtime: RuntimeFlightServer,
    no_sessions: None,
) -> None:
    own_client._runtimes.sessions.idle_s = 0.2
    own_client.predict(identity.id, _frame(0))
    assert runtime.active_sessions == 1
    _wait_until(lambda: runtime.active_sessions == 0, timeout=2)
    assert own_client._runtimes.sessions.idle == 0


def test_reference_path_reaches_the_runtime(
    own_client: ModelRunnerClient,
    identity: ModelInfo,
    runtime: RuntimeFlightServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, bool]] = []
    service = runtime.service
    predict, predict_frames = service.predict, service.predict_frames

    def recording(request: PredictRequest, *args: Any, **kwargs: Any) -> Any:
        calls.append(("predict", request.reference_path))
        return predict(request, *args, **kwargs)

    def recording_frames(request: PredictRequest, *args: Any, **kwargs: Any) -> Any:
        calls.append(("frames", request.reference_path))
        return predict_frames(request, *args, **kwargs)

    monkeypatch.setattr(service, "predict", recording)
    monkeypatch.setattr(service, "predict_frames", recording_frames)
    own_client.predict(identity.id, _frame(0))
    own_client.predict(identity.id, _frame(0), reference_path=True)
    list(own_client.predict_stream(identity.id, [_frame(0)], reference_path=True))
    assert own_client._runtimes.sessions.idle == 2  # sessions are bound to their command

    async def from_the_async_client() -> None:
        async with AsyncModelRunnerClient(own_client.address) as c:
            await c.predict(identity.id, _frame(0), reference_path=True)
            async with c.predict_stream(identity.id, [_frame(0)], reference_path=True) as s:
                assert [o["output"].shape async for o in s] == [(1, 1, 16, 16)]

    asyncio.run(from_the_async_client())
    # predictions on sessions (the pool holds them), streams as frames
    assert calls == [
        ("predict", False),
        ("predict", True),
        ("frames", True),
        ("predict", True),
        ("frames", True),
    ]


# -- a runtime restarted on the same port ---------------------------------------------------------


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[tuple[RunningServer, Settings]]:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        flight_port=0,
        cache_dir=tmp_path / "cache",
        heartbeat_interval_s=1.0,
        grace_period_s=0.5,
        bioimageio_base_url="http://127.0.0.1:9/unused",
    )
    with start_embedded(settings) as running:
        yield running, settings


def test_a_session_on_a_restarted_runtime_is_replaced_transparently(
    restartable: tuple[RunningServer, Settings], tiny: Tiny
) -> None:
    """The runtime stops while the client holds an idle session on it, and a new runtime starts
    on the same port: the next call goes through without an error, on a new exchange."""
    running, settings = restartable
    old = running.runtime
    assert old is not None
    port = old.server.port
    with ModelRunnerClient(running.address, timeout=60) as client:
        model_id = client.add_model(tiny("onnx")).id
        client.predict(model_id, _frame(1))
        assert client._runtimes.sessions.idle == 1
        # stopping waits for the open session: in a thread, as a process' signal handler does
        stopping = threading.Thread(target=old.stop, daemon=True)
        stopping.start()
        _wait_until(lambda: old.server.counters.session_epoch > 0)
        new = start_runtime(
            settings.model_copy(update={"flight_port": port}),
            running.address,
        )
        running.runtime = new
        out = client.predict(model_id, _frame(5))["output"]
        np.testing.assert_array_equal(out, _frame(5))
        stopping.join(10)
        assert not stopping.is_alive(), "the old runtime still waits for a session"
        assert new.server.exchanges_opened == 1
        assert client._runtimes.sessions.idle == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_session_on_a_killed_runtime_is_replaced_transparently(
    tmp_path: Path, tiny: Tiny
) -> None:
    """The runtime's process is killed while the client holds an idle session on it (writing to
    that session fails at once), and a new runtime starts on the same port: the next call goes
    through without an error, on a new exchange."""
    settings = Settings(
        host="127.0.0.1",
        port=0,
        flight_port=_free_port(),
        cache_dir=tmp_path / "cache",
        heartbeat_interval_s=1.0,
        grace_period_s=0.5,
    )
    with (
        start_embedded(settings, with_runtime=False) as running,
        ModelRunnerClient(running.address, timeout=60) as client,
    ):
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelrunner.app.cli",
                "runtime",
                "--host=127.0.0.1",
                f"--flight-port={settings.flight_port}",
                f"--cache-dir={settings.cache_dir}",
                f"--control={running.address}",
                "--log-level=WARNING",
            ],
        )
        try:
            model_id = client.add_model(tiny("onnx")).id
            _wait_until(lambda: bool(client.server_info().runtimes), timeout=30)
            client.predict(model_id, _frame(1))
            assert client._runtimes.sessions.idle == 1
        finally:
            process.kill()
            process.wait(10)
        new = start_runtime(settings, running.address)
        running.runtime = new
        out = client.predict(model_id, _frame(6))["output"]
        np.testing.assert_array_equal(out, _frame(6))
        assert new.server.exchanges_opened == 1
        assert client._runtimes.sessions.idle == 1
