"""Frame streams: one Flight exchange for a whole sequence of frames, results in order.

A thread uploads frames while the caller iterates over results, so upload, compute and download
overlap. At most ``max_in_flight`` frames are sent but not yet answered: a producer faster than
the model waits instead of filling memory on either side.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

import numpy as np
import pyarrow.flight as flight

from modelrunner import converters, errors
from modelrunner.v1 import runtime_pb2
from modelrunner.wire import SampleDecoder, SampleLayout, encode_sample

from ._errors import translated_errors
from ._flight import call_options, parse_frame_result
from ._inputs import Inputs, normalise_inputs

logger = logging.getLogger(__name__)

OnError = Literal["raise", "yield"]


class FrameError(errors.ModelRunnerError):
    """One frame of a stream failed; ``frame`` is its 0-based index, ``cause`` the error.

    The stream goes on: with ``on_error="raise"`` calling ``next()`` again gives the next frame's
    result; with ``on_error="yield"`` the error is yielded in the failed frame's place.
    """

    def __init__(self, frame: int, cause: errors.ModelRunnerError) -> None:
        super().__init__(f"frame {frame} failed: {cause.message}", details=cause.details)
        self.frame = frame
        self.cause = cause
        self.code = cause.code  # type: ignore[misc]


_DONE = object()


class FrameStream(Iterator[dict[str, np.ndarray]]):
    """Iterator over the results of :meth:`ModelRunnerClient.predict_stream`.

    Close it (or use it as a context manager, or break out of a ``for`` loop over it) to stop
    the work on the server.
    """

    def __init__(
        self,
        client: flight.FlightClient,
        command: runtime_pb2.PredictCommand,
        frames: Iterable[Inputs],
        *,
        max_in_flight: int,
        timeout: float | None,
        batch_bytes: int,
        on_error: OnError,
    ) -> None:
        if max_in_flight < 1:
            raise errors.InvalidArgumentError("max_in_flight must be at least 1")
        self._on_error = on_error
        self._batch_bytes = batch_bytes
        self._credits = threading.Semaphore(max_in_flight)
        self._closed = threading.Event()
        # In frame order: (index, None) for a frame sent to the runtime, (index, error) for one
        # the client could not send (wrong shape, not an array); _DONE after the last.
        self._sent: queue.Queue[Any] = queue.Queue()
        self._decoder: SampleDecoder | None = None
        self._upload_error: BaseException | None = None
        descriptor = flight.FlightDescriptor.for_command(command.SerializeToString())
        with translated_errors():
            self._writer, self._reader = client.do_exchange(descriptor, call_options(timeout))
        self._uploader = threading.Thread(
            target=self._upload, args=(iter(frames),), name="modelrunner-frames", daemon=True
        )
        self._uploader.start()

    # -- upload side (thread) ----------------------------------------------------------------

    def _upload(self, frames: Iterator[Inputs]) -> None:
        layout: SampleLayout | None = None
        index = 0
        try:
            while not self._closed.is_set():
                self._credits.acquire()
                if self._closed.is_set():
                    break
                try:
                    frame = next(frames)
                except StopIteration:
                    break
                try:
                    arrays, dims = normalise_inputs(frame, None)
                    if layout is None:
                        layout = SampleLayout.plan(arrays, dims, batch_bytes=self._batch_bytes)
                        self._writer.begin(layout.schema())
                    elif not layout.matches(arrays):
                        raise errors.InvalidTensorError(
                            "every frame of a stream must have the tensors, shapes and data types "
                            f"of the first: expected {_describe(layout)}, got "
                            f"{ {k: (list(a.shape), str(a.dtype)) for k, a in arrays.items()} }",
                            details={"frame": index},
                        )
                except errors.ModelRunnerError as e:
                    self._sent.put((index, e))
                    self._credits.release()
                    index += 1
                    continue
                self._sent.put((index, None))
                for batch in encode_sample(layout, arrays):
                    self._writer.write_batch(batch)
                index += 1
            if not self._closed.is_set():
                self._writer.done_writing()
        except BaseException as e:  # noqa: BLE001 - handed to the consumer in __next__
            if not self._closed.is_set():
                self._upload_error = e
                logger.debug("frame upload stopped: %s", e)
                self._reader.cancel()
        finally:
            self._sent.put(_DONE)

    # -- result side (caller) ----------------------------------------------------------------

    def __iter__(self) -> FrameStream:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._closed.is_set():
            raise StopIteration
        item = self._sent.get()
        if item is _DONE:
            self._sent.put(_DONE)
            self._raise_upload_error()
            self.close()
            raise StopIteration
        index, local_error = item  # type: ignore[misc]
        assert isinstance(index, int)
        if local_error is not None:
            return self._fail(FrameError(index, local_error))
        try:
            return self._read_frame(index)
        finally:
            self._credits.release()

    def _read_frame(self, index: int) -> dict[str, np.ndarray]:
        while True:
            try:
                with translated_errors():
                    chunk = self._reader.read_chunk()
            except StopIteration:
                self._raise_upload_error()
                raise errors.InternalError(
                    f"the runtime ended the stream before frame {index}"
                ) from None
            except errors.ModelRunnerError:
                self._raise_upload_error()
                self.close()
                raise
            meta = parse_frame_result(chunk.app_metadata)
            if meta.HasField("error"):
                return self._fail(FrameError(index, converters.from_pb_error(meta.error)))
            if chunk.data is None:
                continue
            if self._decoder is None:
                self._decoder = SampleDecoder(SampleLayout.from_schema(self._reader.schema))
            samples = self._decoder.feed(chunk.data)
            if samples:
                return samples[0]

    def _fail(self, error: FrameError) -> dict[str, np.ndarray]:
        if self._on_error == "yield":
            return error  # type: ignore[return-value]
        raise error

    def _raise_upload_error(self) -> None:
        if self._upload_error is not None:
            error, self._upload_error = self._upload_error, None
            self.close()
            if isinstance(error, errors.ModelRunnerError):
                raise error
            with translated_errors():
                raise error

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the stream: cancels the exchange, so the runtime stops working on it."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._credits.release()
        try:
            self._reader.cancel()
        except Exception:  # noqa: BLE001 - already finished or broken: nothing left to stop
            pass
        self._uploader.join(timeout=5)
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 - a cancelled call refuses further writes
            pass

    def __enter__(self) -> FrameStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._closed.is_set():
            self.close()


def _describe(layout: SampleLayout) -> Mapping[str, tuple[list[int], str]]:
    return {t.name: (list(t.shape), str(t.dtype)) for t in layout.tensors}
