"""The asyncio client: the same methods as :class:`ModelRunnerClient`, awaitable.

gRPC's and Arrow Flight's Python clients block, so each call runs on a thread pool of the
client's own (large enough for many concurrent calls); the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from modelrunner import types
from modelrunner.wire import DEFAULT_BATCH_BYTES

from ._cancellation import CancelScope
from ._inputs import Inputs
from ._progress import ProgressOption
from ._retries import DEFAULT_RETRY_S
from ._sources import SourceLike
from ._stream import FrameStream, OnError
from ._sync import ModelRunnerClient, NanPolicy, Precision
from ._timeouts import USE_CLIENT_DEFAULT, Timeout
from ._volume_result import VolumeResult

T = TypeVar("T")
_END = object()


class AsyncModelRunnerClient:
    """``async with AsyncModelRunnerClient(address) as client: await client.predict(...)``."""

    def __init__(
        self,
        address: str = "localhost:50051",
        *,
        token: str | None = None,
        tls: bool | str | Path = False,
        client_cert: tuple[str | Path, str | Path] | None = None,
        timeout: float | None = 300.0,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        max_concurrency: int = 64,
        retry_s: float = DEFAULT_RETRY_S,
    ) -> None:
        """The arguments of :class:`ModelRunnerClient`, and how many calls may run at once."""
        self._sync = ModelRunnerClient(
            address,
            token=token,
            tls=tls,
            client_cert=client_cert,
            timeout=timeout,
            batch_bytes=batch_bytes,
            retry_s=retry_s,
        )
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="modelrunner-async")
        self.address = address

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def _run_cancellable(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """:meth:`_run` for a call that stops on the runtime when its task is cancelled (the
        executor's thread cannot be stopped, but its Flight call can)."""
        scope = CancelScope()

        def call() -> T:
            with scope.current():
                return fn(*args, **kwargs)

        try:
            return await self._run(call)
        except asyncio.CancelledError:
            scope.cancel("its task was cancelled")
            raise

    async def close(self) -> None:
        # on a thread of its own: the pool may be full of predictions this close should stop
        await asyncio.to_thread(self._sync.close)
        self._pool.shutdown(wait=False)

    async def __aenter__(self) -> AsyncModelRunnerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def add_model(
        self,
        source: SourceLike,
        *,
        upload: bool | None = None,
        progress: ProgressOption = False,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> types.ModelInfo:
        return await self._run(
            self._sync.add_model, source, upload=upload, progress=progress, timeout=timeout
        )

    async def validate(
        self,
        source: SourceLike,
        *,
        perform_io_checks: bool = True,
        upload: bool | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> types.ValidationReport:
        return await self._run(
            self._sync.validate,
            source,
            perform_io_checks=perform_io_checks,
            upload=upload,
            timeout=timeout,
        )

    async def health(self, service: str = "", *, timeout: Timeout = USE_CLIENT_DEFAULT) -> str:
        return await self._run(self._sync.health, service, timeout=timeout)

    async def wait_until_ready(self, timeout: float = 60.0) -> None:
        await self._run(self._sync.wait_until_ready, timeout)

    async def list_models(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> list[types.ModelInfo]:
        return await self._run(self._sync.list_models, timeout=timeout)

    async def describe(
        self, model_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> types.ModelInfo:
        return await self._run(self._sync.describe, model_id, timeout=timeout)

    async def remove_model(self, model_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        await self._run(self._sync.remove_model, model_id, timeout=timeout)

    async def publish_model(
        self, model_id: str, published: bool = True, *, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> None:
        await self._run(self._sync.publish_model, model_id, published, timeout=timeout)

    async def server_info(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> types.ServerInfo:
        return await self._run(self._sync.server_info, timeout=timeout)

    async def test(
        self,
        model_id: str,
        weight_format: str | None = None,
        *,
        device: str | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> types.ValidationReport:
        return await self._run(
            self._sync.test, model_id, weight_format, device=device, timeout=timeout
        )

    async def load(
        self,
        model_id: str,
        *,
        weight_format: str | None = None,
        device: str | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> types.LoadInfo:
        return await self._run(
            self._sync.load, model_id, weight_format=weight_format, device=device, timeout=timeout
        )

    async def predict(
        self,
        model_id: str,
        inputs: Inputs,
        *,
        weight_format: str | None = None,
        device: str | None = None,
        blocksize: int | None = None,
        nan_policy: NanPolicy = "reject",
        skip_preprocessing: bool = False,
        skip_postprocessing: bool = False,
        reference_path: bool = False,
        precision: Precision | None = None,
        keep_shape: bool = False,
        progress: ProgressOption = False,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> dict[str, np.ndarray]:
        """See :meth:`ModelRunnerClient.predict`. ``reference_path``: run bioimageio.core's own
        pipeline even where the runtime's verified fast path serves the model."""
        return await self._run_cancellable(
            self._sync.predict,
            model_id,
            inputs,
            weight_format=weight_format,
            device=device,
            blocksize=blocksize,
            nan_policy=nan_policy,
            skip_preprocessing=skip_preprocessing,
            skip_postprocessing=skip_postprocessing,
            reference_path=reference_path,
            precision=precision,
            keep_shape=keep_shape,
            progress=progress,
            timeout=timeout,
        )

    async def predict_volume(
        self,
        model_id: str,
        source: str | Path | Any,
        destination: str | Path | Mapping[str, str | Path],
        **options: Any,
    ) -> VolumeResult:
        """:meth:`ModelRunnerClient.predict_volume` (the same options), on a thread of the
        client's pool; cancelling the task stops the prediction, leaving a destination to
        resume."""
        return await self._run_cancellable(
            self._sync.predict_volume, model_id, source, destination, **options
        )

    def predict_stream(
        self,
        model_id: str,
        frames: Iterable[Inputs] | AsyncIterable[Inputs],
        *,
        weight_format: str | None = None,
        device: str | None = None,
        max_in_flight: int = 8,
        max_batch_size: int = 0,
        nan_policy: NanPolicy = "reject",
        reference_path: bool = False,
        precision: Precision | None = None,
        on_error: OnError = "raise",
        timeout: Timeout = None,
    ) -> AsyncFrameStream:
        """``async for outputs in client.predict_stream(model_id, frames)``; ``frames`` may be an
        iterable or an async iterable. ``reference_path``: run bioimageio.core's own pipeline
        even where the runtime's verified fast path serves the model."""

        def open_stream(loop: asyncio.AbstractEventLoop) -> FrameStream:
            source: Iterable[Inputs] = (
                _blocking_iter(frames, loop) if isinstance(frames, AsyncIterable) else frames
            )
            return self._sync.predict_stream(
                model_id,
                source,
                weight_format=weight_format,
                device=device,
                max_in_flight=max_in_flight,
                max_batch_size=max_batch_size,
                nan_policy=nan_policy,
                reference_path=reference_path,
                precision=precision,
                on_error=on_error,
                timeout=timeout,
            )

        return AsyncFrameStream(self, open_stream)


class AsyncFrameStream(AsyncIterator[dict[str, np.ndarray]]):
    """Async iterator over a frame stream's results; ``aclose()`` stops the server's work."""

    def __init__(
        self,
        client: AsyncModelRunnerClient,
        open_stream: Callable[[asyncio.AbstractEventLoop], FrameStream],
    ) -> None:
        self._client = client
        self._open = open_stream
        self._stream: FrameStream | None = None

    async def __anext__(self) -> dict[str, np.ndarray]:
        if self._stream is None:
            loop = asyncio.get_running_loop()
            self._stream = await self._client._run(self._open, loop)
        try:
            result = await self._client._run(next, self._stream, _END)
        except asyncio.CancelledError:
            # the task was cancelled while a thread waits for the next answer: stop the stream
            # (its exchange is cancelled, so the runtime stops too, and the thread's wait ends);
            # on a thread, not the loop's: close waits for the stream's upload thread
            threading.Thread(
                target=self._stream.close, name="modelrunner-stream-close", daemon=True
            ).start()
            raise
        if result is _END:
            raise StopAsyncIteration
        return result  # type: ignore[return-value]

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._client._run(self._stream.close)

    async def __aenter__(self) -> AsyncFrameStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _blocking_iter(
    frames: AsyncIterable[Inputs], loop: asyncio.AbstractEventLoop
) -> Iterator[Inputs]:
    """Pull an async iterable from a worker thread."""
    iterator = frames.__aiter__()

    async def next_or_end() -> object:
        try:
            return await iterator.__anext__()
        except StopAsyncIteration:
            return _END

    while True:
        item = asyncio.run_coroutine_threadsafe(next_or_end(), loop).result()
        if item is _END:
            return
        yield item
