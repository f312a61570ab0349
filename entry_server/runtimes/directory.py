"""The directory of registered runtimes and the choice of runtime for a model.

A runtime registers with ``RegisterRuntime`` and repeats the call every ``heartbeat_interval_s``;
one silent for three intervals is dropped, and one registering for the first time at the address
of another that missed a heartbeat replaces it (a runtime restarted on its port is routed to
at once; runtimes sharing one address that beat in time are all kept). For a model, runtimes that
report it loaded come first, then the least loaded; a model whose warm runtimes are all busy
spreads to another (``entry_server/runtimes/placement.py``). A call that finds no available runtime waits
up to ``runtime_wait_s`` for one (start-up, a restart). Listeners hear of every change in the
number of available runtimes (readiness, ``entry_server/runtimes/readiness.py``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from modelrunner import errors, types
from modelrunner.entry_server.runtimes.placement import placement_order
from modelrunner.settings import Settings

logger = logging.getLogger(__name__)

MISSED_HEARTBEATS = 3
MAX_WAITERS = 4
"""Calls that may wait for a runtime at once (see :meth:`RuntimeDirectory._wait_if_none`)."""


@dataclass(frozen=True)
class RegistrationReply:
    """The answer to a registration."""

    heartbeat_interval_s: float
    shared_cache_dir: str
    """The control service's cache directory when the runtime reads the same one, else ""."""


@dataclass(frozen=True)
class _Entry:
    info: types.RuntimeInfo
    seen_at: float
    owner: str = ""
    """The token id of the credential that registered it ("" without authentication)."""


class RuntimeDirectory:
    """Registered runtimes; safe to use from many threads."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.heartbeat_interval_s = settings.heartbeat_interval_s
        self._cache_dir = settings.cache_dir
        self._clock = clock
        self.runtime_wait_s = settings.runtime_wait_s
        self.spread_queue_depth = settings.spread_queue_depth
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._entries: dict[str, _Entry] = {}
        self._listeners: list[Callable[[int], None]] = []
        self._available = 0
        self._waiters = threading.BoundedSemaphore(MAX_WAITERS)

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """``listener(n)`` is called (now, and whenever it changes) with the number of
        available runtimes; it must be quick and not call back into the directory."""
        with self._lock:
            self._listeners.append(listener)
            count = self._available
        listener(count)

    def register(
        self, info: types.RuntimeInfo, cache_dir: str = "", *, owner: str = ""
    ) -> RegistrationReply:
        """Add or refresh a runtime. ``cache_dir``: the cache directory it reads, if any;
        ``owner``: the credential registering it. A live runtime's id cannot be taken over by
        another credential (PermissionDeniedError)."""
        if not info.runtime_id.strip():
            raise errors.InvalidArgumentError("runtime registration without a runtime_id")
        if not info.flight_uri.strip():
            raise errors.InvalidArgumentError(
                f"runtime {info.runtime_id!r} registered without a flight_uri"
            )
        info = info.model_copy(update={"last_seen_at": datetime.now(timezone.utc)})
        with self._lock:
            self._prune()
            known = self._entries.get(info.runtime_id)
            if known is not None and known.owner != owner:
                raise errors.PermissionDeniedError(
                    f"runtime {info.runtime_id[:200]!r} is registered by another credential",
                    details={"runtime_id": info.runtime_id[:200]},
                )
            now = self._clock()
            for other in [
                k
                for k, e in self._entries.items()
                if known is None
                and e.info.flight_uri == info.flight_uri
                and k != info.runtime_id
                and e.owner == owner
                and now - e.seen_at > self.heartbeat_interval_s
            ]:
                # A new process at the address of one that missed its last heartbeat: the old
                # one is gone. Only then: runtimes sharing an address (replicas behind one
                # Kubernetes Service) each beat in time, and must not evict each other.
                logger.info("runtime %s replaced by %s", other, info.runtime_id)
                del self._entries[other]
            self._entries[info.runtime_id] = _Entry(info=info, seen_at=self._clock(), owner=owner)
            self._count_changed()
        if not known:
            logger.info("runtime %s registered at %s", info.runtime_id, info.flight_uri)
        return RegistrationReply(
            heartbeat_interval_s=self.heartbeat_interval_s,
            shared_cache_dir=self._shared_cache_dir(cache_dir),
        )

    def unregister(self, runtime_id: str, flight_uri: str | None = None) -> bool:
        """Stop routing to a runtime; with ``flight_uri``, only while it is registered at that
        address (a process found dead; its restarted successor has registered elsewhere)."""
        with self._lock:
            entry = self._entries.get(runtime_id)
            found = entry is not None and flight_uri in (None, entry.info.flight_uri)
            if found:
                del self._entries[runtime_id]
            self._count_changed()
            return found

    def runtimes(self) -> list[types.RuntimeInfo]:
        """The live runtimes, by id."""
        with self._lock:
            self._prune()
            return [self._entries[k].info for k in sorted(self._entries)]

    def available_count(self) -> int:
        """How many live runtimes can predict (drops the silent ones first)."""
        with self._lock:
            self._prune()
            return self._available

    def wait_for_available(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until a runtime that can predict is registered."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                self._prune()
                if self._available:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, self.heartbeat_interval_s))

    def _wait_if_none(self, wait_s: float) -> None:
        """Start-up, or a runtime restarting: a few seconds' wait beats a failed call. The
        waiters hold threads of the control service's shared pool, so only a few may wait;
        the others fail at once (UnavailableError), leaving threads for health checks and
        the registrations they wait for."""
        if wait_s <= 0 or self.available_count():
            return
        if not self._waiters.acquire(blocking=False):
            raise errors.UnavailableError(
                "no runtime registered yet (the server is starting, or its runtimes restart): "
                "try again in a few seconds",
                details={"waiting_calls": MAX_WAITERS},
            )
        try:
            self.wait_for_available(wait_s)
        finally:
            self._waiters.release()

    def _count_changed(self) -> None:
        """Under the lock: tell listeners and waiters when the number of available runtimes
        changed."""
        count = sum(1 for e in self._entries.values() if e.info.available)
        if count == self._available:
            return
        self._available = count
        self._changed.notify_all()
        for listener in self._listeners:
            listener(count)

    def note_routed(self, runtime_id: str) -> None:
        """A client was sent to this runtime: count it in the runtime's queue depth until its
        next heartbeat reports the real one."""
        with self._lock:
            entry = self._entries.get(runtime_id)
            if entry is not None:
                info = entry.info.model_copy(update={"queue_depth": entry.info.queue_depth + 1})
                self._entries[runtime_id] = _Entry(
                    info=info, seen_at=entry.seen_at, owner=entry.owner
                )

    def forget_loaded(self, runtime_id: str, model_id: str) -> None:
        """Note that a runtime unloaded a model (before its next heartbeat says so)."""
        with self._lock:
            entry = self._entries.get(runtime_id)
            if entry is None:
                return
            kept = tuple(m for m in entry.info.loaded_models if m.model_id != model_id)
            info = entry.info.model_copy(update={"loaded_models": kept})
            self._entries[runtime_id] = _Entry(info=info, seen_at=entry.seen_at, owner=entry.owner)

    def loaded_model_ids(self) -> set[str]:
        """Models any live runtime reports loaded."""
        return {m.model_id for r in self.runtimes() for m in r.loaded_models}

    def candidates(
        self,
        model_id: str,
        *,
        model_weight_formats: Collection[str],
        weight_format: str = "",
        device: str = "",
        wait_s: float | None = None,
    ) -> list[types.RuntimeInfo]:
        """Runtimes that can serve the model, best first; UnavailableError when none can.
        ``wait_s``: the most the call may wait for a runtime (its remaining deadline)."""
        self._wait_if_none(
            self.runtime_wait_s if wait_s is None else min(wait_s, self.runtime_wait_s)
        )
        runtimes = self.runtimes()
        if not runtimes:
            raise errors.UnavailableError("no runtime registered")
        available = [r for r in runtimes if r.available]
        if not available:
            reasons = "; ".join(
                f"{r.runtime_id}: {r.unavailable_reason or 'unavailable'}" for r in runtimes
            )
            raise errors.UnavailableError(f"no runtime available ({reasons})")
        if device and not any(_has_device(r, device) for r in runtimes):
            # no runtime has such a device: the client's mistake, which no retry mends
            known = sorted({d.name for r in runtimes for d in r.devices})
            raise errors.InvalidArgumentError(
                f"unknown device {errors.clip(device)!r}: no registered runtime has it; "
                f"devices: {', '.join(known)}",
                details={"device": errors.clip(device), "available": ", ".join(known)},
            )
        wanted = {weight_format} if weight_format else set(model_weight_formats)
        fitting = [r for r in available if _runs_any(r, wanted) and _has_device(r, device)]
        if not fitting:
            offered = "; ".join(
                f"{r.runtime_id} runs {', '.join(r.weight_formats) or 'any format'} on "
                f"{', '.join(d.name for d in r.devices) or 'any device'}"
                for r in available
            )
            raise errors.UnavailableError(
                f"no registered runtime can run model {model_id[:12]} with weight format(s) "
                f"{', '.join(sorted(wanted))}{f' on {device}' if device else ''} ({offered})",
                details={"model_id": model_id},
            )
        return placement_order(
            fitting,
            lambda r: _has_loaded(r, model_id, weight_format, device),
            spread_queue_depth=self.spread_queue_depth,
        )

    def _prune(self) -> None:
        deadline = self._clock() - MISSED_HEARTBEATS * self.heartbeat_interval_s
        for runtime_id in [k for k, e in self._entries.items() if e.seen_at < deadline]:
            logger.warning(
                "runtime %s missed %d heartbeats; dropping it", runtime_id, MISSED_HEARTBEATS
            )
            del self._entries[runtime_id]
        self._count_changed()

    def _shared_cache_dir(self, cache_dir: str) -> str:
        if not cache_dir:
            return ""
        try:
            same = os.path.samefile(Path(cache_dir).expanduser(), self._cache_dir)
        except OSError:
            same = False
        return str(self._cache_dir) if same else ""


def _runs_any(runtime: types.RuntimeInfo, formats: set[str]) -> bool:
    # A runtime that lists no formats did not say: let it try.
    return not runtime.weight_formats or bool(formats & set(runtime.weight_formats))


def _device_matches(name: str, wanted: str) -> bool:
    """ "cuda" matches "cuda" and "cuda:N"; "cuda:1" only "cuda:1"."""
    return name == wanted or (":" not in wanted and name.split(":", 1)[0] == wanted)


def _has_device(runtime: types.RuntimeInfo, device: str) -> bool:
    if not device or not runtime.devices:
        return True
    return any(_device_matches(d.name, device) for d in runtime.devices)


def _has_loaded(runtime: types.RuntimeInfo, model_id: str, weight_format: str, device: str) -> bool:
    return any(
        m.model_id == model_id
        and (not weight_format or m.weight_format == weight_format)
        and (not device or _device_matches(m.device, device))
        for m in runtime.loaded_models
    )
