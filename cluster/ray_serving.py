"""``modelrunner serve --ray ADDRESS``: the control service in this process, its runtimes as
Ray actors (:mod:`.ray_runtimes`), until SIGTERM or Ctrl+C (docs/cluster.md)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import ray

from modelrunner import errors
from modelrunner.serving import RunningServer, announce_ready, control_address_of, start_serving
from modelrunner.serving.graceful_shutdown import ShutdownSignals, stop_within
from modelrunner.settings import Settings

from .ray_runtimes import DEFAULT_MAX_RESTARTS, RayRuntimes, start_ray_runtimes
from .ray_scaling import LoadScaling
from .ray_token_auth import HOW_TO_PASS, choose_ray_auth, local_cluster_token, use_ray_auth

logger = logging.getLogger(__name__)

IDLE_UNLOAD_S = 600.0
"""A spread copy of a model nobody uses goes after ten minutes, unless ``idle_unload_s`` says."""


@dataclass(frozen=True)
class RayPlan:
    """What to run on the cluster."""

    address: str
    """``auto`` (the cluster this node belongs to), ``ray://HOST:10001``, ``HOST:6379``, or
    ``local`` (start a cluster in this process: trying it out)."""
    cpu_runtimes: int = 0
    gpu_runtimes: int | None = None
    """None: one per GPU in the cluster at start."""
    gpu_resource: str | None = None
    max_restarts: int = DEFAULT_MAX_RESTARTS
    max_runtimes: int | None = None
    """Add runtimes while all are saturated, up to this many (Ray's autoscaler adds nodes for
    them); None: the runtimes started are all there is."""


@contextmanager
def joined_ray(address: str, token_file: Path | None = None) -> Iterator[Path | None]:
    """In the Ray cluster at ``address`` for the block (``local``: one started for it, stopped
    at the end); nothing to do when Ray is initialized already. UnavailableError when no
    cluster answers there, UnauthenticatedError when it refuses this process's Ray token
    (:mod:`.ray_token_auth`). Yields the token file made for a local cluster, else None."""
    if ray.is_initialized():
        yield None
        return
    if address == "local":
        with local_cluster_token(token_file) as made:
            _init(address)
            try:
                yield made
            finally:
                ray.shutdown()
        return
    _reachable(address)
    # Ray retries a refused token for 20 s and then blames the address: ask first
    choice = choose_ray_auth(address, token_file)
    if choice is not None:
        use_ray_auth(choice)
    _init(address)
    yield None


def _init(address: str) -> None:
    try:
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except ray.exceptions.AuthenticationError as e:
        raise errors.UnauthenticatedError(
            f"Ray's token authentication failed for {address!r} ({errors.clip(e)}): {HOW_TO_PASS}"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise errors.UnavailableError(
            f"cannot join the Ray cluster at {address!r} ({type(e).__name__}: {errors.clip(e)}); "
            "start one with `ray start --head`, or use --ray local"
        ) from None


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Ray retries an address nobody answers at for minutes: ask once, quickly, first."""
    if address in ("auto", "local"):
        return  # auto: Ray reads the local node's cluster address, and fails fast without one
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise errors.UnavailableError(
            f"no Ray cluster answers at {address!r} ({errors.clip(e)}); start one with "
            "`ray start --head`, or use --ray local"
        ) from None


@contextmanager
def start_ray_serving(
    settings: Settings, plan: RayPlan
) -> Iterator[tuple[RunningServer, RayRuntimes]]:
    """The control service here, its runtimes on the cluster, every one of them registered
    when this yields; all stopped on exit (the runtimes drain first)."""
    with (
        joined_ray(plan.address, settings.ray_auth_token_file),
        _serving_on_joined_cluster(settings, plan) as started,
    ):
        yield started


@contextmanager
def _serving_on_joined_cluster(
    settings: Settings, plan: RayPlan
) -> Iterator[tuple[RunningServer, RayRuntimes]]:
    if settings.idle_unload_s is None:
        settings = settings.model_copy(update={"idle_unload_s": IDLE_UNLOAD_S})
    running = start_serving(settings, with_runtime=False)
    try:
        plane = running.control.control
        token = settings.runtime_token.get_secret_value() if settings.runtime_token else None
        if token is None:
            # the actors' credential, valid while this control service runs (None without auth)
            token = plane.issue_runtime_token("ray-runtimes")
        group = start_ray_runtimes(
            settings,
            control_address_of(running),
            plane.runtimes.unregister,
            cpu_runtimes=plan.cpu_runtimes,
            gpu_runtimes=plan.gpu_runtimes,
            gpu_resource=plan.gpu_resource,
            runtime_token=token,
            max_restarts=plan.max_restarts,
        )
        if plan.max_runtimes is not None and plan.max_runtimes > len(group.runtimes):
            group.registered = plane.runtimes.runtimes
            group.scaling = LoadScaling(
                min_runtimes=len(group.runtimes),
                max_runtimes=plan.max_runtimes,
                spread_queue_depth=settings.spread_queue_depth,
                idle_s=settings.idle_unload_s or IDLE_UNLOAD_S,
            )
        try:
            for described in group.describe(timeout=max(60.0, settings.runtime_wait_s)):
                logger.info("Ray runtime %(runtime_id)s at %(flight_uri)s (pid %(pid)s)", described)
            group.watch()
            yield running, group
        finally:
            group.stop(timeout=settings.grace_period_s + 5)
    finally:
        running.stop()


def serve_with_ray(settings: Settings, plan: RayPlan) -> None:
    """Serve until SIGTERM or Ctrl+C, then drain the runtimes and stop within the grace
    period (a second signal exits at once)."""
    with joined_ray(plan.address, settings.ray_auth_token_file) as local_token:
        # after ray.init: Ray's core installs its own SIGTERM handler, which would exit at once
        signals = ShutdownSignals()
        with ExitStack() as stack:
            running, group = stack.enter_context(start_ray_serving(settings, plan))
            print(
                f"modelrunner control service at {running.address}; "
                f"{len(group.runtimes)} runtime(s) on Ray ({plan.address}): "
                + ", ".join(r.runtime_id for r in group.runtimes)
                + (f"; metrics at {running.metrics.uri}" if running.metrics is not None else ""),
                flush=True,
            )
            if local_token is not None:
                print(
                    f"Ray's token for this local cluster: {local_token} (for `ray status` and "
                    f"the like: RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={local_token}); removed "
                    "when this process exits",
                    flush=True,
                )
            announce_ready(running, signals.requested)
            signals.wait()
            stop_within(stack.pop_all().close, settings.grace_period_s)
