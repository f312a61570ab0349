"""Frame streams: one Flight exchange for a whole sequence of frames, results in order.

A thread uploads frames while the caller iterates over results, so upload, compute and download
overlap. At most ``max_in_flight`` frames are sent but not yet answered: a producer faster than
the model waits instead of filling memory on either side.

A stream has no deadline by default (it may run for hours), but it has an idle timeout: when the
runtime sends nothing for ``idle_timeout`` seconds while the client waits for an answer, the
stream is cancelled and ``next()`` raises DeadlineExceededError, so a frozen runtime cannot make
the client wait forever. gRPC keepalive would not notice: a runtime whose handler hangs still
answers HTTP/2 pings.

A stream that loses its runtime (a restart, a shutdown: ServerShuttingDownError) raises an
UnavailableError whose ``frames_answered`` is the number of frames answered before it, so the
caller can send the rest on a new stream; the stream itself is never resent behind its back.
A runtime that ends a stream with an error (it drains; the model was removed or unpublished, the
caller's token revoked: NOT_FOUND, UNAUTHENTICATED, PERMISSION_DENIED) sends an end notice first
(docs/wire-format.md, section 3): a thread reading the runtime's answers ends the upload at once,
so the stream ends with that error even while the caller's frames are slow to come.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import pyarrow.flight as flight

from modelrunner import converters, errors
from modelrunner.body_alignment import write_aligned
from modelrunner.errors import FrameError
from modelrunner.runtime_client.cancellation import CallRegistry
from modelrunner.runtime_client.exchanges import call_options, is_end_notice, parse_frame_result
from modelrunner.transport_errors import translated_errors, typed_error
from modelrunner.v1 import runtime_pb2
from modelrunner.wire import (
    WRITE_OPTIONS,
    SampleDecoder,
    SampleLayout,
    encode_sample,
)

from ._inputs import Inputs, normalise_inputs
from ._stream_watchdog import IdleWatchdog

logger = logging.getLogger(__name__)

OnError = Literal["raise", "yield"]
DEFAULT_IDLE_TIMEOUT_S = 120.0
"""How long a stream waits for the runtime's next answer before giving up (its first answer
may follow a model load: minutes for a large model on a slow disk)."""


_DONE = object()


class _FrameUpload:
    """The upload side of a stream, run by its own thread. It holds no reference to the
    :class:`FrameStream`, so dropping the stream (leaving a ``for`` loop) can close it."""

    def __init__(
        self,
        writer: flight.FlightStreamWriter,
        reader: flight.FlightStreamReader,
        *,
        max_in_flight: int,
        batch_bytes: int,
    ) -> None:
        self.writer, self.reader = writer, reader
        self.batch_bytes = batch_bytes
        self.credits = threading.Semaphore(max_in_flight)
        self.closed = threading.Event()
        self._writing = threading.Lock()
        """Held for each write, so that :meth:`end_writing` never runs inside one."""
        self._ended = False
        """This side of the stream is ended (the runtime drains): no frame is sent any more."""
        # In frame order: (index, None) for a frame sent to the runtime, (index, error) for one
        # the client could not send (wrong shape, not an array); _DONE after the last.
        self.sent: queue.Queue[Any] = queue.Queue()
        self.error: BaseException | None = None

    def run(self, frames: Iterator[Inputs]) -> None:
        layout: SampleLayout | None = None
        index = 0
        try:
            while not self.closed.is_set():
                self.credits.acquire()
                if self.closed.is_set():
                    break
                try:
                    frame = next(frames)
                except StopIteration:
                    break
                try:
                    arrays, dims = normalise_inputs(frame, None)
                    if layout is None:
                        layout = SampleLayout.plan(arrays, dims, batch_bytes=self.batch_bytes)
                        with self._writing:
                            if self._ended:
                                break
                            self.writer.begin(layout.schema(), options=WRITE_OPTIONS)
                    elif not layout.matches(arrays):
                        raise errors.InvalidTensorError(
                            "every frame of a stream must have the tensors, shapes and data types "
                            f"of the first: expected {_describe(layout)}, got "
                            f"{ {k: (list(a.shape), str(a.dtype)) for k, a in arrays.items()} }",
                            details={"frame": index},
                        )
                except errors.ModelRunnerError as e:
                    self.sent.put((index, e))
                    self.credits.release()
                    index += 1
                    continue
                with self._writing:
                    if self._ended:
                        break  # the runtime drains: the caller resends from frames_answered
                    self.sent.put((index, None))
                    for batch in encode_sample(layout, arrays):
                        write_aligned(self.writer, batch)
                index += 1
            if not self.closed.is_set():
                self.end_writing()
        except BaseException as e:  # noqa: BLE001 - handed to the consumer in __next__
            if not self.closed.is_set():
                self.error = e
                logger.debug("frame upload stopped: %s", e)
                self.reader.cancel()
        finally:
            self.sent.put(_DONE)

    def end_writing(self) -> None:
        """End this side of the stream (once): after the last frame, or when the runtime
        drains (from the answer reader's thread, while this one may wait for a frame)."""
        with self._writing:
            if self._ended:
                return
            self._ended = True
            self.writer.done_writing()

    def stop(self) -> None:
        self.closed.set()
        self.credits.release()

    def close_writer(self) -> None:
        """Close the writer once no write is under way (the call is cancelled, so one under
        way fails soon); the upload thread, which may wait on the caller's frames for long,
        writes nothing after it."""
        if not self._writing.acquire(timeout=5):
            return  # a write that does not end: leave the writer to the call's end
        try:
            self._ended = True
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001 - a cancelled call refuses further writes
                pass
        finally:
            self._writing.release()


_ENDED = object()
"""In ``_FrameUpload.sent``: the exchange ended (the answer reader met its end or an error)."""


class _AnswerReader:
    """Reads the runtime's messages on a thread of its own into ``chunks``, so that an end
    notice is acted on even while the caller waits for its own next frame (a microscope between
    acquisitions): this side of the stream ends, and the runtime ends the call with the
    notice's error (ServerShuttingDownError, ModelNotFoundError, ...), which the consumer
    raises. It holds no reference to the :class:`FrameStream`."""

    def __init__(self, reader: flight.FlightStreamReader, upload: _FrameUpload) -> None:
        self.reader, self.upload = reader, upload
        self.chunks: queue.Queue[Any] = queue.Queue()
        """Chunks in order; then the exception that ended the reading (StopIteration at the
        end)."""

    def run(self) -> None:
        while True:
            try:
                chunk = self.reader.read_chunk()
            except BaseException as e:  # noqa: BLE001 - handed to the consumer in order
                self.chunks.put(_typed_here(e))
                self.upload.sent.put(_ENDED)  # wakes a consumer waiting for a frame to be sent
                return
            if chunk.data is None and is_end_notice(chunk.app_metadata):
                logger.debug("the runtime ends the stream: ending its upload")
                try:
                    self.upload.end_writing()
                except Exception:  # noqa: BLE001 - the call already ended: its error follows
                    pass
                continue
            self.chunks.put(chunk)


def _typed_here(error: BaseException) -> BaseException:
    """The typed error of a failed read, made in the thread that read: the call's error trailer
    (which tells ModelNotFoundError from NotFoundError) is kept per thread. A cancellation stays
    as it is, for the idle watchdog to tell apart."""
    return error if isinstance(error, flight.FlightCancelledError) else typed_error(error)


class FrameStream(Iterator[dict[str, np.ndarray]]):
    """Iterator over the results of :meth:`ModelRunnerClient.predict_stream`.

    Close it (or use it as a context manager, or leave a ``for`` loop over it) to stop the work
    on the server.
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
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_S,
        calls: CallRegistry | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise errors.InvalidArgumentError("max_in_flight must be at least 1")
        if idle_timeout is not None and idle_timeout <= 0:
            raise errors.InvalidArgumentError(
                f"idle_timeout must be positive (or None: wait forever), got {idle_timeout}"
            )
        self._on_error = on_error
        self._calls = calls or CallRegistry()
        self._idle_timeout = idle_timeout
        self.frames_answered = 0
        """Frames whose answer (outputs or FrameError) this stream gave so far."""
        self.on_unavailable: Callable[[], None] | None = None
        """Called when the stream ends with UnavailableError (the client forgets the route)."""
        self._decoder: SampleDecoder | None = None
        self._watchdog: IdleWatchdog | None = None
        descriptor = flight.FlightDescriptor.for_command(command.SerializeToString())
        with translated_errors():
            writer, self._reader = client.do_exchange(descriptor, call_options(timeout))
        self._upload = _FrameUpload(
            writer, self._reader, max_in_flight=max_in_flight, batch_bytes=batch_bytes
        )
        self._uploader = threading.Thread(
            target=self._upload.run, args=(iter(frames),), name="modelrunner-frames", daemon=True
        )
        self._uploader.start()
        self._answers = _AnswerReader(self._reader, self._upload)
        threading.Thread(target=self._answers.run, name="modelrunner-answers", daemon=True).start()

    def __iter__(self) -> FrameStream:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._upload.closed.is_set():
            raise StopIteration
        with self._noting_interruption():
            return self._next()

    @contextmanager
    def _noting_interruption(self) -> Iterator[None]:
        try:
            yield
        except errors.UnavailableError as e:
            e.frames_answered = self.frames_answered
            if self.on_unavailable is not None:
                self.on_unavailable()
            raise

    def _next(self) -> dict[str, np.ndarray]:
        item = self._upload.sent.get()
        while item is _ENDED:
            # the exchange ended with no frame waiting for its answer: raise its error, or
            # on a normal end take what the upload sends next (its end)
            self._raise_exchange_error()
            item = self._upload.sent.get()
        if item is _DONE:
            self._upload.sent.put(_DONE)
            self._raise_upload_error()
            self.close()
            raise StopIteration
        index, local_error = item
        if local_error is not None:
            return self._fail(FrameError(index, local_error))
        try:
            return self._read_frame(index)
        finally:
            self._upload.credits.release()

    def _read_chunk(self) -> flight.FlightStreamChunk:
        """The next message, cancelling the exchange when none comes within the idle timeout."""
        if self._idle_timeout is None:
            with self._calls.track(self._reader, "the stream"):
                return self._take_chunk()
        if self._watchdog is None:
            self._watchdog = IdleWatchdog(self._idle_timeout, self._reader)
        self._watchdog.arm()
        try:
            with self._calls.track(self._reader, "the stream"):
                return self._take_chunk()
        except flight.FlightCancelledError:
            if self._watchdog.fired:
                raise errors.DeadlineExceededError(
                    f"the runtime sent nothing for {self._idle_timeout:g} s (idle_timeout); "
                    "the stream was cancelled",
                    details={"idle_timeout_s": self._idle_timeout},
                ) from None
            raise
        finally:
            self._watchdog.disarm()

    def _raise_exchange_error(self) -> None:
        """The exchange has ended: raise its error, if it ended with one."""
        while True:
            try:
                with translated_errors():
                    self._take_chunk()  # nothing should be left but the end
            except StopIteration:
                return
            except errors.ModelRunnerError:
                self._raise_upload_error()
                self.close()
                raise

    def _take_chunk(self) -> flight.FlightStreamChunk:
        """The answer reader's next chunk; once it has ended, its error (or StopIteration),
        again at each call."""
        item = self._answers.chunks.get()
        if isinstance(item, BaseException):
            self._answers.chunks.put(item)
            raise item
        return item  # type: ignore[no-any-return]

    def _read_frame(self, index: int) -> dict[str, np.ndarray]:
        while True:
            try:
                with translated_errors():
                    chunk = self._read_chunk()
            except StopIteration:
                self._raise_upload_error()
                self.close()
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
                self.frames_answered += 1
                return samples[0]

    def _fail(self, error: FrameError) -> dict[str, np.ndarray]:
        self.frames_answered += 1
        if self._on_error == "yield":
            return error  # type: ignore[return-value]
        raise error

    def _raise_upload_error(self) -> None:
        error, self._upload.error = self._upload.error, None
        if error is None:
            return
        self.close()
        if isinstance(error, errors.ModelRunnerError):
            raise error
        with translated_errors():
            raise error

    def close(self) -> None:
        """Stop the stream: cancels the exchange, so the runtime stops working on it."""
        if self._upload.closed.is_set():
            return
        if self._watchdog is not None:
            self._watchdog.stop()
        self._upload.stop()
        try:
            self._reader.cancel()
        except Exception:  # noqa: BLE001 - already finished or broken: nothing left to stop
            pass
        self._upload.close_writer()

    def __enter__(self) -> FrameStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if hasattr(self, "_upload"):
            self.close()


def _describe(layout: SampleLayout) -> Mapping[str, tuple[list[int], str]]:
    return {t.name: (list(t.shape), str(t.dtype)) for t in layout.tensors}
