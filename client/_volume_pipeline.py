"""Reading, prediction and writing of blocks, overlapped, with back-pressure: the threads of a
volume prediction.

::

    readers (2) --[inputs: depth]--> predictors (k per runtime) --[results: depth]--> writer (1)

Readers take the next block, read its region (with halo and padding) into an array; each
runtime has ``workers_per_runtime`` predictor threads, each with its own session on that runtime,
all taking from the one input queue, so a faster runtime takes more blocks; one writer writes
each result's owned region into the destination and records the block as finished. Both queues
are bounded: a slow writer stops the predictors, slow runtimes stop the readers, and memory holds
at most about ``2 * depth + predictors`` blocks whatever the volume's size.

A runtime that goes away (UnavailableError) gives its block back to the queue and its threads
stop; the others go on. Any other error stops the run. Ctrl-C in the caller (or :meth:`stop`)
cancels the predictions in flight through a :class:`~modelrunner.runtime_client.cancellation.CancelScope` and ends the
threads within a fraction of a second; blocks already written stay recorded.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelrunner import errors
from modelrunner.runtime_client.cancellation import CancelScope, current_scope

from ._volume_blocks import Block

logger = logging.getLogger(__name__)

POLL_S = 0.05
"""How often waiting threads look at the stop flag."""
JOIN_S = 0.5
"""How long a stop waits for the threads (the rest of Ctrl-C's second)."""

Predict = Callable[[Block, np.ndarray], dict[str, np.ndarray]]
"""One runtime's prediction of a block's input: the outputs by id."""


@dataclass(frozen=True)
class BlockRuntime:
    """A runtime and how to predict on it."""

    name: str
    predict: Predict


class BlockPipeline:
    def __init__(
        self,
        *,
        read: Callable[[Block], np.ndarray],
        routes: Sequence[BlockRuntime],
        write: Callable[[Block, dict[str, np.ndarray]], None],
        workers_per_runtime: int = 2,
        readers: int = 2,
        depth: int = 4,
        on_written: Callable[[Block, int], None] | None = None,
    ) -> None:
        """``write`` runs in the writer thread only; ``on_written(block, input_bytes)`` after
        each block is written and recorded."""
        if not routes:
            raise errors.UnavailableError("no runtime serves the model")
        self._read, self._write, self._routes = read, write, list(routes)
        self._workers, self._readers, self._depth = workers_per_runtime, readers, depth
        self._on_written = on_written
        self._inputs: queue.Queue[tuple[Block, np.ndarray]] = queue.Queue(depth)
        self._results: queue.Queue[tuple[Block, dict[str, np.ndarray], int]] = queue.Queue(depth)
        self._stop = threading.Event()
        self._scope = CancelScope()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._pending = 0
        self._written = 0
        self._alive_predictors = 0
        self._gone: list[str] = []
        self._threads: list[threading.Thread] = []

    # -- the caller's side ---------------------------------------------------------------------

    def run(self, blocks: Iterable[Block]) -> int:
        """Predict and write ``blocks``; the number written. Raises the first error (or
        KeyboardInterrupt), after stopping the threads."""
        todo = list(blocks)
        self._pending = len(todo)
        if not todo:
            return 0
        source = iter(todo)
        source_lock = threading.Lock()
        self._start(self._reader, self._readers, "reader", source, source_lock)
        for route in self._routes:
            self._start(self._predictor, self._workers, f"predict-{route.name}", route)
        self._start(self._writer, 1, "writer")
        caller = current_scope()  # the async client's task, for one
        try:
            while True:
                if caller is not None and caller.reason is not None:
                    raise errors.CancelledError(
                        f"the volume prediction was cancelled: {caller.reason}"
                    )
                with self._lock:
                    if self._error is not None or self._written == self._pending:
                        break
                    if self._alive_predictors == 0:
                        self._error = errors.UnavailableError(
                            f"every runtime went away ({', '.join(self._gone)}); "
                            f"{self._written} of {self._pending} blocks were written: run again "
                            "with resume to predict the rest",
                            details={"written": self._written, "blocks": self._pending},
                        )
                        break
                time.sleep(POLL_S)
        except BaseException:
            self.stop("the volume prediction was interrupted")
            raise
        self.stop("the volume prediction ended")
        if self._error is not None:
            raise self._error
        return self._written

    def stop(self, reason: str) -> None:
        """Stop every thread: cancel the predictions in flight, wait briefly for the threads."""
        self._stop.set()
        self._scope.cancel(reason)
        deadline = time.monotonic() + JOIN_S
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # -- threads -------------------------------------------------------------------------------

    def _start(self, target: Callable[..., None], count: int, name: str, *args: Any) -> None:
        for i in range(count):
            if target == self._predictor:
                with self._lock:
                    self._alive_predictors += 1
            t = threading.Thread(
                target=self._guarded,
                args=(target, *args),
                name=f"modelrunner-volume-{name}-{i}",
                daemon=True,
            )
            self._threads.append(t)
            t.start()

    def _guarded(self, target: Callable[..., None], *args: Any) -> None:
        try:
            with self._scope.current():
                target(*args)
        except BaseException as e:  # noqa: BLE001 - the caller raises it
            if not self._stop.is_set():
                with self._lock:
                    if self._error is None:
                        self._error = e
                self._stop.set()
                self._scope.cancel("another part of the volume prediction failed")

    def _put(self, into: queue.Queue[Any], item: Any) -> bool:
        """Put, waiting while the queue is full; False when the run stops meanwhile."""
        while not self._stop.is_set():
            try:
                into.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, source: queue.Queue[Any]) -> Any:
        while not self._stop.is_set():
            try:
                return source.get(timeout=POLL_S)
            except queue.Empty:
                continue
        return None

    def _reader(self, source: Any, lock: threading.Lock) -> None:
        while not self._stop.is_set():
            with lock:
                block = next(source, None)
            if block is None:
                return
            if not self._put(self._inputs, (block, self._read(block))):
                return

    def _predictor(self, route: BlockRuntime) -> None:
        alive = True
        try:
            while True:
                item = self._get(self._inputs)
                if item is None:
                    return
                block, inputs = item
                try:
                    outputs = route.predict(block, inputs)
                except errors.UnavailableError as e:
                    if self._stop.is_set():
                        return
                    logger.warning(
                        "runtime %s went away (%s): its blocks go to the others", route.name, e
                    )
                    with self._lock:
                        if route.name not in self._gone:
                            self._gone.append(route.name)
                        self._alive_predictors -= 1
                    alive = False
                    self._put(self._inputs, (block, inputs))  # for a runtime still there
                    return
                if not self._put(self._results, (block, outputs, inputs.nbytes)):
                    return
        finally:
            if alive:
                with self._lock:
                    self._alive_predictors -= 1

    def _writer(self) -> None:
        while True:
            item = self._get(self._results)
            if item is None:
                return
            block, outputs, nbytes = item
            self._write(block, outputs)
            with self._lock:
                self._written += 1
            if self._on_written is not None:
                self._on_written(block, nbytes)
