"""A runtime that drains ends its open streams promptly, even a stream whose client has nothing
to send right now (a microscope between acquisitions): the runtime's shutdown notice makes the
client end its side, so the stream ends with ServerShuttingDownError naming the frames answered
instead of holding the runtime's shutdown until its grace period cuts it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from modelrunner import errors
from modelrunner.client import ModelInfo, ModelRunnerClient
from modelrunner.runtime_flight.server import RuntimeFlightServer

FRAME = np.arange(64, dtype="float32").reshape(1, 1, 8, 8)


def test_a_stream_whose_client_sends_nothing_more_ends_promptly_on_drain(
    client: ModelRunnerClient, identity: ModelInfo, runtime: RuntimeFlightServer
) -> None:
    acquired = threading.Event()  # the next acquisition; never comes during the test

    def acquisitions() -> Iterator[np.ndarray]:
        yield FRAME
        yield FRAME
        acquired.wait(60)
        yield FRAME

    stream = client.predict_stream(identity.id, acquisitions())
    try:
        for _ in range(2):
            np.testing.assert_array_equal(next(stream)["output"].reshape(FRAME.shape), FRAME)
        runtime.begin_drain()
        began = time.monotonic()
        with pytest.raises(errors.ServerShuttingDownError) as caught:
            next(stream)
        assert caught.value.frames_answered == 2
        assert time.monotonic() - began < 5  # not the idle timeout, nor "never"
    finally:
        runtime.draining.clear()
        acquired.set()
        stream.close()
    # the runtime serves new streams once the drain is called off (the shared server goes on)
    assert len(list(client.predict_stream(identity.id, [FRAME, FRAME]))) == 2
