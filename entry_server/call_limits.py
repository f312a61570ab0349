"""How many long calls of each kind the control service serves at once, and who may wait how long.

Uploads, validations, adds, model tests, package fetches and V2 inference calls hold one of the
gRPC server's threads for as long as they run (an upload for as long as its client takes to
send). Each kind has its own :class:`~modelrunner.call_slots.CallLimit`, and uploads also one per
client (:class:`~modelrunner.call_slots.PerClientLimit`; the runtime uses the same two for its
own limits); a call over its limit is refused at once
with RESOURCE_EXHAUSTED naming the setting, never queued. The server's thread pool is larger
than the sum of these limits (:func:`threads_for_limited_calls`), so health checks, listings,
routing and runtime heartbeats always find a thread.

The planes hold these limits (``ControlPlane.limits``, ``InferencePlane.limits``) and the gRPC
servicers take a slot of them per call. Also here: cancellation of work when the client goes away
(:func:`cancelled_when`, :func:`is_cancelled`). What a call's gRPC context tells (who it comes
from, whether it is gone, an idle client stream) is in :mod:`.call_context`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from modelrunner.call_slots import CallLimit, PerClientLimit
from modelrunner.settings import Settings


def threads_for_limited_calls(settings: Settings) -> int:
    """Threads the limited calls can take together: the server adds them to its pool."""
    return (
        settings.max_concurrent_uploads
        + settings.max_concurrent_validations
        + settings.max_concurrent_adds
        + settings.max_concurrent_tests
        + settings.max_concurrent_package_fetches
        + settings.max_concurrent_infers
        + settings.max_concurrent_infer_streams
    )


class ControlCallLimits:
    """The limits of the control service's long calls, from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.uploads = CallLimit(
            "max_concurrent_uploads", settings.max_concurrent_uploads, "uploads"
        )
        self.uploads_per_client = PerClientLimit(
            "max_concurrent_uploads_per_client",
            settings.max_concurrent_uploads_per_client,
            "uploads",
        )
        self.validations = CallLimit(
            "max_concurrent_validations", settings.max_concurrent_validations, "validations"
        )
        self.adds = CallLimit("max_concurrent_adds", settings.max_concurrent_adds, "model adds")
        self.tests = CallLimit("max_concurrent_tests", settings.max_concurrent_tests, "model tests")
        self.package_fetches = CallLimit(
            "max_concurrent_package_fetches",
            settings.max_concurrent_package_fetches,
            "package fetches",
        )


class InferenceCallLimits:
    """The limits of the Open Inference Protocol's calls and streams, from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.infers = CallLimit(
            "max_concurrent_infers", settings.max_concurrent_infers, "V2 inference calls"
        )
        self.streams = CallLimit(
            "max_concurrent_infer_streams",
            settings.max_concurrent_infer_streams,
            "V2 inference streams",
        )
        self.streams_per_client = PerClientLimit(
            "max_concurrent_infer_streams_per_client",
            settings.max_concurrent_infer_streams_per_client,
            "V2 inference streams",
        )


# -- cancellation ---------------------------------------------------------------------------------

_cancelled: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar(
    "modelrunner_cancelled", default=None
)


@contextmanager
def cancelled_when(check: Callable[[], bool]) -> Iterator[None]:
    """Work done in this block (in this thread) stops when ``check()`` turns true: the caller
    went away. Long waits poll :func:`is_cancelled` (a description worker is then killed)."""
    token = _cancelled.set(check)
    try:
        yield
    finally:
        _cancelled.reset(token)


def is_cancelled() -> bool:
    check = _cancelled.get()
    return check is not None and check()
