"""Frame streams: one exchange for a whole sequence, results in order, back-pressure, a failed
frame reported without losing the others, and cancellation that stops the server's work."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from modelrunner.client import (
    DeadlineExceededError,
    FrameError,
    InvalidTensorError,
    ModelInfo,
    ModelRunnerClient,
)
from modelrunner.serving import RunningServer

Tiny = Callable[[str], Path]


def _frame(i: int, side: int = 16) -> np.ndarray:
    return np.full((1, 1, side, side), i, np.float32)


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_a_long_stream_comes_back_in_order_and_unchanged(
    client: ModelRunnerClient, identity: ModelInfo
) -> None:
    n = 3000
    count = 0
    for i, out in enumerate(client.predict_stream(identity.id, (_frame(i) for i in range(n)))):
        np.testing.assert_array_equal(out["output"], _frame(i))
        count += 1
    assert count == n


def test_the_server_may_batch_frames_without_changing_results(
    client: ModelRunnerClient, identity: ModelInfo
) -> None:
    frames = [np.random.default_rng(i).random((1, 1, 32, 24), np.float32) for i in range(200)]
    outs = list(client.predict_stream(identity.id, frames, max_batch_size=8, max_in_flight=32))
    assert len(outs) == len(frames)
    for frame, out in zip(frames, outs, strict=True):
        np.testing.assert_array_equal(out["output"], frame)


def test_frames_of_lower_rank_and_dicts(client: ModelRunnerClient, identity: ModelInfo) -> None:
    frames = [{"input": np.full((20, 20), i, np.float32)} for i in range(5)]
    outs = list(client.predict_stream(identity.id, frames))
    assert [o["output"].shape for o in outs] == [(1, 1, 20, 20)] * 5
    assert [float(o["output"][0, 0, 0, 0]) for o in outs] == [0, 1, 2, 3, 4]


def test_a_failing_frame_is_reported_and_the_others_are_not_lost(
    client: ModelRunnerClient, identity: ModelInfo
) -> None:
    frames = [_frame(i) for i in range(10)]
    frames[4] = np.full((1, 1, 16, 16), np.nan, np.float32)
    results = list(client.predict_stream(identity.id, frames, on_error="yield"))
    assert len(results) == 10
    failed = results[4]
    assert isinstance(failed, FrameError) and failed.frame == 4
    assert isinstance(failed.cause, InvalidTensorError)
    assert "NaN" in failed.message
    for i in (0, 3, 5, 9):
        np.testing.assert_array_equal(results[i]["output"], frames[i])


def test_raising_on_a_failed_frame_lets_the_stream_go_on(
    client: ModelRunnerClient, identity: ModelInfo
) -> None:
    frames = [_frame(0), _frame(1, side=8), _frame(2)]
    stream = client.predict_stream(identity.id, frames)
    assert float(next(stream)["output"][0, 0, 0, 0]) == 0
    with pytest.raises(FrameError) as caught:
        next(stream)
    assert caught.value.frame == 1
    assert "every frame of a stream must have the tensors, shapes and data types" in str(
        caught.value
    )
    assert float(next(stream)["output"][0, 0, 0, 0]) == 2
    with pytest.raises(StopIteration):
        next(stream)


def test_back_pressure_bounds_the_frames_in_flight(
    client: ModelRunnerClient, identity: ModelInfo
) -> None:
    produced = 0

    def frames() -> Iterator[np.ndarray]:
        nonlocal produced
        for i in itertools.count():
            produced += 1
            yield _frame(i)

    stream = client.predict_stream(identity.id, frames(), max_in_flight=4)
    for consumed, _ in enumerate(stream, start=1):
        time.sleep(0.001)
        assert produced <= consumed + 4 + 1
        if consumed == 200:
            break
    stream.close()


def test_leaving_the_loop_stops_the_work_on_the_server(
    client: ModelRunnerClient, identity: ModelInfo, server: RunningServer
) -> None:
    assert server.runtime is not None
    runtime = server.runtime.server
    _wait_until(lambda: runtime.active_exchanges == 0)
    pulled = 0

    def endless() -> Iterator[np.ndarray]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield _frame(i)

    for i, _ in enumerate(client.predict_stream(identity.id, endless(), max_in_flight=4)):
        if i == 20:
            assert runtime.active_exchanges == 1
            break
    _wait_until(lambda: runtime.active_exchanges == 0)
    stopped_at = pulled
    time.sleep(0.3)
    assert pulled == stopped_at <= 21 + 4 + 1


def test_a_deadline_ends_the_stream(
    client: ModelRunnerClient, identity: ModelInfo, server: RunningServer
) -> None:
    def slow() -> Iterator[np.ndarray]:
        for i in itertools.count():
            time.sleep(0.05)
            yield _frame(i)

    with pytest.raises(DeadlineExceededError):
        for _ in client.predict_stream(identity.id, slow(), timeout=0.5):
            pass
    assert server.runtime is not None
    _wait_until(lambda: server.runtime.server.active_exchanges == 0)  # type: ignore[union-attr]


def test_an_error_in_the_frame_source_reaches_the_caller(
    client: ModelRunnerClient, identity: ModelInfo
) -> None:
    def broken() -> Iterator[np.ndarray]:
        yield _frame(0)
        raise OSError("camera disconnected")

    stream = client.predict_stream(identity.id, broken())
    with pytest.raises(Exception, match="camera disconnected"):
        list(stream)
