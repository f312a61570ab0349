"""The asyncio client: the same methods, awaitable, safe for many concurrent calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from modelrunner.client import (
    AsyncModelRunnerClient,
    FrameError,
    InvalidTensorError,
    ModelNotFoundError,
    ModelRunnerClient,
)
from modelrunner.serving import RunningServer
from tests.zoo import NUCLEI

Tiny = Callable[[str], Path]


def test_registry_calls(server: RunningServer) -> None:
    async def main() -> None:
        async with AsyncModelRunnerClient(server.address) as client:
            info = await client.add_model(NUCLEI)
            assert info.id in {m.id for m in await client.list_models()}
            assert (await client.describe(info.id[:8])).name == "UNet 2D Nuclei Broad"
            assert (await client.server_info()).runtimes
            report = await client.validate(NUCLEI)
            assert report.passed
            with pytest.raises(ModelNotFoundError):
                await client.describe("0000000000ff")

    asyncio.run(main())


def test_many_concurrent_predictions(
    server: RunningServer, client: ModelRunnerClient, tiny: Tiny
) -> None:
    model_id = client.add_model(tiny("onnx")).id
    frames = [np.full((1, 1, 24, 24), i, np.float32) for i in range(64)]

    async def main() -> list[dict[str, np.ndarray]]:
        async with AsyncModelRunnerClient(server.address, max_concurrency=16) as c:
            return await asyncio.gather(*(c.predict(model_id, f) for f in frames))

    outputs = asyncio.run(main())
    for frame, out in zip(frames, outputs, strict=True):
        np.testing.assert_array_equal(out["output"], frame)


def test_async_for_over_a_stream_of_async_frames(
    server: RunningServer, client: ModelRunnerClient, tiny: Tiny
) -> None:
    model_id = client.add_model(tiny("onnx")).id

    async def frames() -> AsyncIterator[np.ndarray]:
        for i in range(50):
            await asyncio.sleep(0)
            yield np.full((1, 1, 8, 8), i, np.float32)

    async def main() -> list[float]:
        seen = []
        async with (
            AsyncModelRunnerClient(server.address) as c,
            c.predict_stream(model_id, frames(), on_error="yield") as stream,
        ):
            async for out in stream:
                seen.append(float(out["output"][0, 0, 0, 0]))
        return seen

    assert asyncio.run(main()) == [float(i) for i in range(50)]


def test_errors_keep_their_types(
    server: RunningServer, client: ModelRunnerClient, tiny: Tiny
) -> None:
    model_id = client.add_model(tiny("onnx")).id

    async def main() -> None:
        async with AsyncModelRunnerClient(server.address) as c:
            with pytest.raises(InvalidTensorError, match="NaN"):
                await c.predict(model_id, np.full((1, 1, 8, 8), np.nan, np.float32))
            stream = c.predict_stream(model_id, [np.full((1, 1, 8, 8), np.nan, np.float32)])
            with pytest.raises(FrameError):
                async for _ in stream:
                    pass

    asyncio.run(main())
