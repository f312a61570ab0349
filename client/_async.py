"""The asyncio client: the same methods as :class:`ModelRunnerClient`, awaitable.

gRPC's and Arrow Flight's Python clients block, so each call runs on a thread pool of the
client's own (large enough for many concurrent calls); the event loop never blocks. Each method
is the sync client's, run there (:func:`_awaitable`): one signature, one docstring, and a
prediction's request is built by the same code.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
)
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np
from typing_extensions import Unpack

from modelrunner.runtime_client.cancellation import CancelScope
from modelrunner.wire import DEFAULT_BATCH_BYTES

from ._inputs import Inputs
from ._requests import StreamKeywords
from ._retries import DEFAULT_RETRY_S
from ._stream import FrameStream, OnError
from ._sync import ModelRunnerClient
from ._timeouts import Timeout

T = TypeVar("T")
P = ParamSpec("P")
_END = object()


def _awaitable(
    method: Callable[Concatenate[ModelRunnerClient, P], T], *, cancellable: bool = False
) -> Callable[Concatenate[AsyncModelRunnerClient, P], Coroutine[Any, Any, T]]:
    """The sync client's ``method`` as a coroutine method run on the client's threads;
    ``cancellable``: cancelling its task stops the call on the runtime too."""

    @functools.wraps(method)
    async def call(self: AsyncModelRunnerClient, *args: P.args, **kwargs: P.kwargs) -> T:
        run = self._run_cancellable if cancellable else self._run
        return await run(method, self._sync, *args, **kwargs)

    return call


def _forwarded(
    method: Callable[Concatenate[ModelRunnerClient, P], T],
) -> Callable[Concatenate[AsyncModelRunnerClient, P], T]:
    """The sync client's ``method`` that does no I/O, called as it is."""

    @functools.wraps(method)
    def call(self: AsyncModelRunnerClient, *args: P.args, **kwargs: P.kwargs) -> T:
        return method(self._sync, *args, **kwargs)

    return call


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

    add_model = _awaitable(ModelRunnerClient.add_model)
    validate = _awaitable(ModelRunnerClient.validate)
    health = _awaitable(ModelRunnerClient.health)
    wait_until_ready = _awaitable(ModelRunnerClient.wait_until_ready)
    list_models = _awaitable(ModelRunnerClient.list_models)
    describe = _awaitable(ModelRunnerClient.describe)
    remove_model = _awaitable(ModelRunnerClient.remove_model)
    publish_model = _awaitable(ModelRunnerClient.publish_model)
    server_info = _awaitable(ModelRunnerClient.server_info)
    test = _awaitable(ModelRunnerClient.test)
    load = _awaitable(ModelRunnerClient.load)
    predict = _awaitable(ModelRunnerClient.predict, cancellable=True)
    send = _awaitable(ModelRunnerClient.send, cancellable=True)

    predict_volume = _awaitable(ModelRunnerClient.predict_volume, cancellable=True)
    """:meth:`ModelRunnerClient.predict_volume`; cancelling its task stops the prediction,
    leaving a destination to resume."""

    build_request = _forwarded(ModelRunnerClient.build_request)

    def predict_stream(
        self,
        model_id: str,
        frames: Iterable[Inputs] | AsyncIterable[Inputs],
        *,
        max_in_flight: int = 8,
        on_error: OnError = "raise",
        timeout: Timeout = None,
        **options: Unpack[StreamKeywords],
    ) -> AsyncFrameStream:
        """``async for outputs in client.predict_stream(model_id, frames)``; ``frames`` may be an
        iterable or an async iterable. See :meth:`ModelRunnerClient.predict_stream`."""

        def open_stream(loop: asyncio.AbstractEventLoop) -> FrameStream:
            source: Iterable[Inputs] = (
                _blocking_iter(frames, loop) if isinstance(frames, AsyncIterable) else frames
            )
            return self._sync.predict_stream(
                model_id,
                source,
                max_in_flight=max_in_flight,
                on_error=on_error,
                timeout=timeout,
                **options,
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
