"""Runtimes as Ray actors: ``modelrunner serve --ray ADDRESS`` (docs/cluster.md).

Each actor is an ordinary runtime process (``serving.start_runtime``): its own Arrow Flight
endpoint on its node, registered with the control service with the runtime credential, and
its own metrics endpoint when the control service publishes metrics. One actor per GPU
(``num_gpus=1``, or a custom resource standing for a GPU), plus CPU runtimes as configured.
Ray places them and restarts one that dies (``max_restarts``); its ``__init__`` runs again and
registers the new process at its new address, under the same runtime id. A watcher in the
control service's process pings every actor each half heartbeat and drops one that does not
answer from routing at once, so no client is routed to a dead runtime for longer than that.

Placement by model affinity and the spreading of a busy model are the control service's
(``entry_server/runtimes/placement.py``); actors only report their queue depth in their heartbeats.

Ray is imported by this module only: ``modelrunner serve`` without ``--ray`` never loads it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from modelrunner import errors, types
from modelrunner.settings import Settings

from .ray_scaling import LoadScaling

logger = logging.getLogger(__name__)

DEFAULT_MAX_RESTARTS = -1
"""Ray restarts a runtime actor as often as it dies (-1: without limit)."""


class RuntimeActor:
    """One runtime in a Ray worker process (wrapped by ``ray.remote`` in :func:`_actor_class`)."""

    def __init__(
        self,
        settings: dict[str, Any],
        control_address: str,
        runtime_token: str | None,
        runtime_id: str,
    ) -> None:
        from modelrunner.serving import start_runtime

        values = dict(settings, runtime_id=runtime_id, flight_port=0)
        host = values.get("flight_host") or values.get("host") or "127.0.0.1"
        if host not in ("127.0.0.1", "localhost", "::1"):
            # clients reach this runtime at its node's address, whatever it binds
            values["advertise_host"] = ray.util.get_node_ip_address()
        if values.get("metrics_port") is not None:
            values["metrics_port"] = 0  # several runtimes per node: each a free port
        self.runtime = start_runtime(
            Settings(**values), control_address, runtime_token=runtime_token
        )

    def describe(self) -> dict[str, Any]:
        return {
            "runtime_id": self.runtime.server.service.runtime_id,
            "flight_uri": self.runtime.flight_uri,
            "metrics_uri": self.runtime.metrics_uri,
            "pid": os.getpid(),
        }

    def ping(self) -> str:
        """The address this process serves at (a restarted actor's differs)."""
        return self.runtime.flight_uri

    def stop(self) -> None:
        self.runtime.stop()


def _actor_class(max_restarts: int) -> Any:
    # max_concurrency: pings are answered while another call (describe, stop) runs
    remote: Any = ray.remote  # its overloads do not list the actor options
    return remote(max_restarts=max_restarts, max_task_retries=0, max_concurrency=4)(RuntimeActor)


@dataclass
class RayRuntime:
    runtime_id: str
    handle: Any
    """The Ray actor handle."""
    kind: str
    """"gpu" or "cpu"."""


@dataclass
class RayRuntimes:
    """The runtime actors of one control service, and the watcher that drops dead ones."""

    runtimes: list[RayRuntime]
    drop: Callable[[str, str], object]
    """``drop(runtime_id, flight_uri)`` removes a runtime from the control service's routing
    while it is registered at that address; true when it did."""
    interval_s: float
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    dropped: list[str] = field(default_factory=list)
    """Runtime ids the watcher dropped, in order (tests and the log)."""
    _alive_at: dict[str, str] = field(default_factory=dict)
    """Each runtime's address when it last answered."""
    spawn: Callable[[], RayRuntime] | None = None
    """Starts one more runtime actor of the kind the service started with."""
    scaling: LoadScaling | None = None
    """Adds and removes runtimes with load (:mod:`.ray_scaling`); None: a fixed number."""
    registered: Callable[[], list[types.RuntimeInfo]] = list
    """The runtimes as the control service knows them (queue depths, warm models)."""
    added: list[str] = field(default_factory=list)
    """Runtimes the scaling added and still runs."""

    def describe(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait until every actor runs and registered (also one Ray is restarting: its
        ``__init__`` runs again); their ids, URIs and process ids."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                refs = [r.handle.describe.remote() for r in self.runtimes]
                described = list(ray.get(refs, timeout=max(0.1, deadline - time.monotonic())))
            except ray.exceptions.GetTimeoutError:
                raise errors.UnavailableError(
                    f"the Ray runtimes did not start within {timeout:.0f} s (pending "
                    "resources? `ray status` shows what the cluster lacks)"
                ) from None
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise errors.UnavailableError(
                        f"a Ray runtime was still restarting after {timeout:.0f} s"
                    ) from None
                time.sleep(0.2)
                continue
            except ray.exceptions.RayActorError as e:
                raise errors.UnavailableError(f"a Ray runtime failed to start: {e}") from None
            for d in described:
                self._alive_at[d["runtime_id"]] = d["flight_uri"]
            return described

    def watch(self) -> None:
        self._thread = threading.Thread(
            target=self._watch, name="modelrunner-ray-watch", daemon=True
        )
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            pings = {r.handle.ping.remote(): r for r in self.runtimes}
            ready, _ = ray.wait(list(pings), num_returns=len(pings), timeout=self.interval_s)
            for ref, runtime in pings.items():
                uri = None
                if ref in ready:
                    try:
                        uri = ray.get(ref)
                    except ray.exceptions.RayError:
                        uri = None
                if uri is not None:
                    self._alive_at[runtime.runtime_id] = uri
                    continue
                last = self._alive_at.get(runtime.runtime_id)
                # only the process last seen alive is dropped: a restarted one that registered
                # before its actor answers pings stays routed to
                if last is not None and self.drop(runtime.runtime_id, last):
                    logger.warning(
                        "Ray runtime %s at %s is not answering; not routed to",
                        runtime.runtime_id,
                        last,
                    )
                    self.dropped.append(runtime.runtime_id)
            if self.scaling is not None:
                self._scale(self.scaling)

    def _scale(self, scaling: LoadScaling) -> None:
        known = self.registered()
        if self.spawn is not None and scaling.wants_more(known, len(self.runtimes)):
            runtime = self.spawn()
            logger.info("every runtime is saturated: starting %s", runtime.runtime_id)
            self.runtimes = [*self.runtimes, runtime]
            self.added.append(runtime.runtime_id)
        for runtime_id in scaling.idle_to_remove(known, self.added):
            (runtime,) = [r for r in self.runtimes if r.runtime_id == runtime_id]
            logger.info("%s added for load is idle: stopping it", runtime_id)
            self.runtimes = [r for r in self.runtimes if r is not runtime]
            self.added.remove(runtime_id)
            self._alive_at.pop(runtime_id, None)
            threading.Thread(
                target=_stop_actor, args=(runtime.handle,), name="modelrunner-ray-stop", daemon=True
            ).start()

    def stop(self, timeout: float = 30.0) -> None:
        """Drain and stop every actor (each tells the control service it leaves), then end
        them."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
        stops = [r.handle.stop.remote() for r in self.runtimes]
        ray.wait(stops, num_returns=len(stops), timeout=timeout)
        for r in self.runtimes:
            ray.kill(r.handle, no_restart=True)


def _stop_actor(handle: Any, timeout: float = 30.0) -> None:
    """Drain (the runtime tells the control service it leaves), then end the actor."""
    ray.wait([handle.stop.remote()], timeout=timeout)
    ray.kill(handle, no_restart=True)


def start_ray_runtimes(
    settings: Settings,
    control_address: str,
    drop: Callable[[str, str], object],
    *,
    cpu_runtimes: int = 0,
    gpu_runtimes: int | None = None,
    gpu_resource: str | None = None,
    runtime_token: str | None = None,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    name_prefix: str = "ray",
) -> RayRuntimes:
    """Start ``gpu_runtimes`` actors with one GPU each (None: one per GPU the cluster has now)
    and ``cpu_runtimes`` CPU-only ones, all registering with ``control_address``.

    ``gpu_resource``: a custom Ray resource that stands for a GPU (a test cluster has none;
    nodes of a heterogeneous cluster may name theirs), requested instead of ``num_gpus``.
    Returns once each actor is created (not yet started: :meth:`RayRuntimes.describe` waits)."""
    if not ray.is_initialized():
        raise errors.FailedPreconditionError("connect to Ray first (ray.init)")
    if gpu_runtimes is None:
        gpu_runtimes = int(ray.cluster_resources().get(gpu_resource or "GPU", 0))
    if gpu_runtimes + cpu_runtimes == 0:
        raise errors.InvalidArgumentError(
            "no runtimes to start: the Ray cluster has no GPU and --ray-cpu-runtimes is 0"
        )
    actor = _actor_class(max_restarts)
    # the control service's own address and name are not its runtimes' (each finds its node's);
    # nor is its Ray token file (an actor's worker process has its node's token)
    values = settings.model_dump(
        mode="json",
        exclude={"runtime_token", "advertise_host", "runtime_id", "ray_auth_token_file"},
        exclude_none=True,
    )
    started: dict[str, int] = {"gpu": 0, "cpu": 0}

    def spawn(kind: str) -> RayRuntime:
        runtime_id = f"{name_prefix}-{kind}-{started[kind]}"
        started[kind] += 1
        if kind == "gpu" and gpu_resource:
            options: dict[str, Any] = {"num_cpus": 1, "resources": {gpu_resource: 1}}
        elif kind == "gpu":
            # Ray sets CUDA_VISIBLE_DEVICES: the actor's one GPU is its cuda:0
            options = {"num_cpus": 1, "num_gpus": 1}
        else:
            options = {"num_cpus": 1}
        device = "cuda" if kind == "gpu" and not gpu_resource else values.get("device")
        handle = actor.options(**options).remote(
            dict(values, device=device), control_address, runtime_token, runtime_id
        )
        return RayRuntime(runtime_id, handle, kind)

    runtimes = [spawn("gpu") for _ in range(gpu_runtimes)]
    runtimes += [spawn("cpu") for _ in range(cpu_runtimes)]
    return RayRuntimes(
        runtimes,
        drop,
        interval_s=max(0.2, settings.heartbeat_interval_s / 2),
        spawn=lambda: spawn("gpu" if gpu_runtimes else "cpu"),
    )
