"""The asyncio client's ways out do not wait behind the work they stop: ``close()`` while every
worker thread of the client is busy, and a cancelled stream, whose close must not block the
event loop (its upload thread may itself wait on the loop for the caller's next frame)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np

from modelrunner.client import AsyncModelRunnerClient, ModelInfo
from modelrunner.serving import RunningServer

FRAME = np.zeros((1, 1, 8, 8), np.float32)


async def _one_frame_then_wait(never: asyncio.Event) -> AsyncIterator[np.ndarray]:
    """A camera that gives one frame, then none for as long as the test runs."""
    yield FRAME
    await never.wait()


async def _a_stream_waiting_for_its_second_frame(
    client: AsyncModelRunnerClient, model_id: str, never: asyncio.Event
) -> asyncio.Task[object]:
    stream = client.predict_stream(model_id, _one_frame_then_wait(never))
    await stream.__anext__()
    waiting = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.3)  # its worker thread now waits for the answer to frame 1
    assert not waiting.done()
    return waiting


def test_close_is_not_queued_behind_a_full_pool(server: RunningServer, identity: ModelInfo) -> None:
    """Attack (accidental): max_concurrency threads all busy; close() must still run."""

    async def main() -> None:
        client = AsyncModelRunnerClient(server.address, max_concurrency=1)
        never = asyncio.Event()
        waiting = await _a_stream_waiting_for_its_second_frame(client, identity.id, never)
        try:
            await asyncio.wait_for(client.close(), timeout=10)
        finally:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)

    asyncio.run(main())


def test_a_cancelled_stream_does_not_block_the_event_loop(
    server: RunningServer, identity: ModelInfo
) -> None:
    async def main() -> float:
        async with AsyncModelRunnerClient(server.address) as client:
            never = asyncio.Event()
            waiting = await _a_stream_waiting_for_its_second_frame(client, identity.id, never)
            began = time.monotonic()
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
            return time.monotonic() - began

    # the old close joined the upload thread for 5 s on the loop's thread
    assert asyncio.run(main()) < 2.0
