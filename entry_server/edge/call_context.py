"""What the control service's gRPC edge reads from a call's context: who the call comes from, for
per-client limits (:func:`token_or_host`, :func:`peer_host`), whether its client went away
(:func:`client_gone`, for :func:`~modelrunner.entry_server.call_limits.cancelled_when`), and an
idle timeout for client streams (:func:`with_idle_timeout`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

from modelrunner import errors
from modelrunner.entry_server.edge.auth_interceptor import current_identity

T = TypeVar("T")

ClientIdentity = Callable[[grpc.ServicerContext], str]
"""Who a call comes from, for per-client limits."""


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
