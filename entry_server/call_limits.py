"""How many long calls of each kind the control service serves at once, and who may wait how long.

Uploads, validations, adds, model tests, package fetches and V2 inference calls hold one of the
gRPC server's threads for as long as they run (an upload for as long as its client takes to
send). Each kind has its own :class:`~modelrunner.call_slots.CallLimit`, and uploads also one per
client (:class:`~modelrunner.call_slots.PerClientLimit`; the runtime uses the same two for its
own limits); a call over its limit is refused at once
with RESOURCE_EXHAUSTED naming the setting, never queued. The server's thread pool is larger
than the sum of these limits (:func:`threads_for_limited_calls`), so health checks, listings,
routing and runtime heartbeats always find a thread.

Also here: the caller's host for per-client limits (:func:`peer_host`; the servicer keys them by
the caller's token when calls are authenticated), cancellation of work when the client goes away
(:func:`cancelled_when`, :func:`raise_if_cancelled`), and an idle timeout for client streams
(:func:`with_idle_timeout`).
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import grpc

from modelrunner import errors
from modelrunner.call_slots import CallLimit as CallLimit  # the servicers take both from here
from modelrunner.call_slots import PerClientLimit as PerClientLimit
from modelrunner.entry_server.authentication import current_identity
from modelrunner.settings import Settings

T = TypeVar("T")

ClientIdentity = Callable[[grpc.ServicerContext], str]
"""Who a call comes from, for per-client limits."""


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


def token_or_host(context: grpc.ServicerContext) -> str:
    """Who a call comes from, for per-client limits: the caller's token when calls are
    authenticated, else its host."""
    token_id = current_identity().token_id
    return f"token:{token_id}" if token_id else peer_host(context)


def peer_host(context: grpc.ServicerContext) -> str:
    """The caller's host from ``context.peer()`` (``ipv4:10.0.0.5:51234`` -> ``10.0.0.5``,
    ``ipv6:[::1]:51234`` -> ``::1``); the whole peer string for other transports."""
    peer = context.peer() or ""
    kind, _, address = peer.partition(":")
    if kind == "ipv4":
        return address.rsplit(":", 1)[0]
    if kind == "ipv6":
        host = address.rsplit(":", 1)[0]
        return host.removeprefix("[").removesuffix("]")
    return peer


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


def client_gone(context: grpc.ServicerContext) -> Callable[[], bool]:
    """A check for :func:`cancelled_when`: the call was cancelled or its deadline passed."""
    return lambda: not context.is_active()


# -- idle client streams --------------------------------------------------------------------------

_END = object()


def with_idle_timeout(
    messages: Iterator[T], *, timeout_s: float, setting: str, what: str
) -> Iterator[T]:
    """The messages of a client stream, failing with DeadlineExceededError when the client
    sends nothing for ``timeout_s``.

    gRPC's request iterator blocks without a timeout, so a helper thread reads it into a small
    queue; once the call ends (the error ends it), the iterator fails and that thread ends too.
    """
    received: queue.Queue[object] = queue.Queue(maxsize=2)
    stopped = threading.Event()

    def hand_over(item: object) -> None:
        while not stopped.is_set():
            try:
                received.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read() -> None:
        try:
            for message in messages:
                hand_over(message)
                if stopped.is_set():
                    return
            hand_over(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the reading call
            hand_over(exc)

    threading.Thread(target=read, name="stream-reader", daemon=True).start()
    try:
        while True:
            try:
                item = received.get(timeout=timeout_s)
            except queue.Empty:
                raise errors.DeadlineExceededError(
                    f"{what}: nothing arrived for {timeout_s:g} s (setting {setting})",
                    details={"limit": setting, "limit_value": timeout_s},
                ) from None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stopped.set()
