"""Description workers: processes that parse and check untrusted descriptions, bounded in memory
and time, so that no description can hold the control service's cores or memory.

Reading a description with bioimageio.spec can take any time and memory the YAML asks for (a
558-byte alias bomb kept a core busy and grew the server past 5.9 GB), and it cannot be
interrupted inside a thread. So validating and reading a model to add it run here, in a worker
process:

* started from a fork server that has imported bioimageio.spec once, so a new worker is ready
  in milliseconds (``description_workers`` idle ones are kept started);
* with an address space limit (``RLIMIT_AS``) of its size after start-up plus
  ``validation_memory_bytes``: allocating beyond it fails inside the worker;
* killed when the job takes longer than ``validation_timeout_s`` or the caller goes away
  (:func:`modelrunner.entry_server.call_limits.cancelled_when`), and replaced.

A job is a module-level function of plain data (sent by reference, with pickled arguments); its
result or ``ModelRunnerError`` comes back as data. Over the memory or the time limit:
``ResourceExhaustedError`` naming the setting; the caller gone: ``CancelledError``.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.forkserver
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from modelrunner import errors
from modelrunner.entry_server.call_limits import is_cancelled
from modelrunner.entry_server.limits import over_limit
from modelrunner.entry_server.packages import fetch_policy, yaml_limits
from modelrunner.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

_POLL_S = 0.05
"""How often a waiting caller checks the time limit and whether its client is still there."""
_PRELOAD = ["__main__", "bioimageio.spec", "modelrunner.entry_server.packages.description_jobs"]
"""Imported once by the fork server, so workers start without importing them again."""

_context: BaseContext | None = None
_context_lock = threading.Lock()


def _worker_context() -> BaseContext:
    """A fork server where the platform has one (never plain fork: the control service runs
    gRPC threads), else spawn."""
    global _context
    with _context_lock:
        if _context is None:
            if "forkserver" in multiprocessing.get_all_start_methods():
                forkserver = multiprocessing.get_context("forkserver")
                forkserver.set_forkserver_preload(_PRELOAD)
                _start_ignoring_sigint()
                _context = forkserver
            else:  # pragma: no cover - Windows
                _context = multiprocessing.get_context("spawn")
        return _context


def _start_ignoring_sigint() -> None:
    """Start the fork server with SIGINT ignored, which it and the workers it forks keep: Ctrl-C
    in a terminal reaches the whole process group (``modelrunner predict`` with its embedded
    runner, ``modelrunner serve``), and a worker, or the fork server while it imports
    bioimageio.spec, would print a KeyboardInterrupt traceback; the control service stops its
    workers itself. Only the main thread may change a handler: from another thread the fork
    server starts on first use, as before."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection
    jobs_done: int = field(default=0)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()

    def stop(self) -> None:
        """Ask an idle worker to end (closing its connection ends its loop)."""
        self.conn.close()
        self.process.join(1)
        if self.process.is_alive():
            self.kill()


class DescriptionWorkers:
    """The worker processes of one control service. Safe to use from many threads."""

    def __init__(self, settings: Settings) -> None:
        self.memory_bytes = settings.validation_memory_bytes
        self.timeout_s = settings.validation_timeout_s
        self._keep_idle = settings.description_workers
        self._yaml_limits = yaml_limits.YamlLimits.from_settings(settings)
        self._fetch_networks = tuple(settings.fetch_allowed_networks)
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._closed = False
        _worker_context()  # here, in the caller's thread (see _start_ignoring_sigint)
        if self._keep_idle:
            self._refill_in_background()

    # -- running jobs -----------------------------------------------------------------------------

    def run(self, what: str, job: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``job(*args, **kwargs)`` in a worker; ``what`` (e.g. "validating bioimageio.yaml")
        names the job in errors."""
        worker = self._take()
        try:
            worker.conn.send((job, args, kwargs))
            kind, value = self._wait(worker, what)
        except BaseException:
            self._discard(worker)
            raise
        if kind == "ok":
            self._give_back(worker)
            return value  # type: ignore[no-any-return]
        self._discard(worker)
        if kind == "error":
            cls, message, details = value
            raise cls(message, details=details)
        if kind == "memory":
            raise self._over_memory(what, "ran out of memory")
        raise errors.InternalError(f"{what} failed in the description worker: {value}")

    def _wait(self, worker: _Worker, what: str) -> tuple[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        while not worker.conn.poll(_POLL_S):
            if is_cancelled():
                raise errors.CancelledError(f"{what} was cancelled: the client went away")
            if time.monotonic() > deadline:
                raise over_limit(
                    "validation_timeout_s",
                    self.timeout_s,
                    f"{what} took longer than the limit of {self.timeout_s:g} s",
                )
        try:
            outcome: tuple[str, Any] = worker.conn.recv()
        except (EOFError, OSError):
            worker.process.join(1)
            if self._closed:
                raise errors.UnavailableError("the control service is shutting down") from None
            code = worker.process.exitcode
            if code is not None and code > 0:
                raise errors.InternalError(
                    f"the description worker ended unexpectedly (exit code {code}) while {what}; "
                    "the server log says why"
                ) from None
            # killed by a signal: an allocation over the address space limit aborts C code
            raise self._over_memory(what, f"ended the worker process (exit code {code})") from None
        return outcome

    def _over_memory(self, what: str, how: str) -> errors.ResourceExhaustedError:
        return over_limit(
            "validation_memory_bytes",
            self.memory_bytes,
            f"{what} {how}: it needs more than the limit of {self.memory_bytes} bytes",
        )

    # -- the pool ---------------------------------------------------------------------------------

    def busy_pids(self) -> list[int]:
        """Process ids of the workers running a job now (for tests and diagnostics)."""
        with self._lock:
            return [w.pid for w in self._busy if w.pid is not None]

    def idle_pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._idle if w.pid is not None]

    def _take(self) -> _Worker:
        while True:
            with self._lock:
                if self._closed:
                    raise errors.UnavailableError("the control service is shutting down")
                worker = self._idle.pop() if self._idle else None
                if worker is not None:
                    self._busy.add(worker)
            if worker is None:
                worker = self._start()
                with self._lock:
                    self._busy.add(worker)
                return worker
            if worker.process.is_alive():
                return worker
            self._discard(worker)

    def _give_back(self, worker: _Worker) -> None:
        worker.jobs_done += 1
        with self._lock:
            self._busy.discard(worker)
            keep = not self._closed and len(self._idle) < self._keep_idle
            if keep:
                self._idle.append(worker)
        if not keep:
            worker.stop()

    def _discard(self, worker: _Worker) -> None:
        """Kill a worker after a failure (its memory may be spent), and start a replacement."""
        with self._lock:
            self._busy.discard(worker)
        worker.kill()
        self._refill_in_background()

    def _refill_in_background(self) -> None:
        threading.Thread(target=self._refill, name="description-workers", daemon=True).start()

    def _refill(self) -> None:
        while True:
            with self._lock:
                if self._closed or len(self._idle) >= self._keep_idle:
                    return
            try:
                worker = self._start()
            except Exception:
                logger.exception("cannot start a description worker")
                return
            with self._lock:
                if not self._closed and len(self._idle) < self._keep_idle:
                    self._idle.append(worker)
                    continue
            worker.stop()
            return

    def _start(self) -> _Worker:
        context = _worker_context()
        with self._start_lock:
            ours, theirs = context.Pipe(duplex=True)
            process = context.Process(  # type: ignore[attr-defined]
                target=serve,
                args=(theirs, self.memory_bytes, self._yaml_limits, self._fetch_networks),
                name="description-worker",
                daemon=True,
            )
            try:
                process.start()
            except Exception as exc:
                ours.close()
                raise errors.UnavailableError(
                    f"cannot start a description worker: {type(exc).__name__}: {exc}"
                ) from exc
            finally:
                theirs.close()
        return _Worker(process=process, conn=ours)

    def close(self) -> None:
        """Kill every worker, idle or busy (a busy caller gets an error)."""
        with self._lock:
            self._closed = True
            workers = [*self._idle, *self._busy]
            self._idle.clear()
        for worker in workers:
            worker.kill()


# -- inside the worker ----------------------------------------------------------------------------


def serve(
    conn: Connection,
    memory_bytes: int,
    limits: yaml_limits.YamlLimits,
    fetch_networks: tuple[str, ...] = (),
) -> None:
    """The worker's loop: run jobs until the connection closes or memory runs out. The
    worker's fetches follow the server's policy (``fetch_allowed_networks``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # see _start_ignoring_sigint (spawned workers)
    _limit_address_space(memory_bytes)
    yaml_limits.process_limits = limits
    fetch_policy.process_policy = fetch_policy.FetchPolicy(fetch_networks)
    while True:
        try:
            job, args, kwargs = conn.recv()
        except (EOFError, OSError):
            return
        outcome = _run_job(job, args, kwargs)
        try:
            conn.send(outcome)
        except MemoryError:
            outcome = ("memory", None)
            conn.send(outcome)
        if outcome[0] == "memory":
            return  # a fresh worker replaces this one, whose heap may be fragmented


def _run_job(job: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return ("ok", job(*args, **kwargs))
    except MemoryError:
        pass  # leave the except block first, so what the job allocated is freed
    except errors.ModelRunnerError as exc:
        return ("error", (type(exc), exc.message, exc.details))
    except RecursionError:
        return ("error", (errors.InvalidPackageError, "the description nests too deeply", {}))
    except Exception as exc:
        logger.exception("description job %s failed", getattr(job, "__name__", job))
        return ("crash", f"{type(exc).__name__}: {exc}")
    return ("memory", None)


def _limit_address_space(extra_bytes: int) -> None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        logger.warning("no memory limit for description workers on this platform")
        return
    size = _address_space_bytes()
    if size is None:  # pragma: no cover - Linux has /proc
        logger.warning("cannot read this worker's size; its memory limit is not set")
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size + extra_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _address_space_bytes() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
