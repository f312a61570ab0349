"""Riding through restarts: idempotent calls are retried while the server or runtime is
briefly unavailable; predictions never are.

Retried (with exponential backoff, within the call's own timeout and the client's
``retry_s``): listing and describing models, the route to a model's runtime, server info,
health, and loading a model (which asks the control service for a fresh route after a runtime
went away). What counts as passing: UNAVAILABLE because the server cannot be reached (starting,
restarting), is shutting down (ServerShuttingDownError), or has no runtime registered yet.
What does not: TLS failures, and a server that has runtimes but none able to run the model;
waiting mends neither.

A prediction is not repeated behind the caller's back (a microscope frame may have had side
effects, and the caller decides what a second answer would mean): it raises UnavailableError
and the client forgets the route, so the next call goes to a runtime that is there. A stream
that loses its runtime says how many frames it answered (``UnavailableError.frames_answered``)
so the caller can resume from there.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from modelrunner import errors

logger = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_RETRY_S = 15.0
"""How long an idempotent call keeps retrying by default: a ``modelrunner serve`` restart with
a warm cache takes 3-8 s."""
_PERMANENT_MARKERS = ("ssl", "tls", "handshake", "certificate", "no registered runtime can run")


@dataclass(frozen=True)
class Backoff:
    """Waits between attempts: ``initial_s``, then ``multiplier`` times longer each time, at
    most ``max_s``, each with up to 20 % jitter (clients restarted together do not retry in
    lockstep)."""

    initial_s: float = 0.05
    max_s: float = 1.0
    multiplier: float = 2.0

    def waits(self) -> Callable[[], float]:
        current = [self.initial_s]

        def next_wait() -> float:
            wait = current[0]
            current[0] = min(self.max_s, current[0] * self.multiplier)
            return wait * (1.0 + 0.2 * random.random())

        return next_wait


def is_transient(error: errors.ModelRunnerError) -> bool:
    """An error that waiting may mend (see the module docstring)."""
    if not isinstance(error, errors.UnavailableError):
        return False
    if isinstance(error, errors.ServerShuttingDownError):
        return True
    text = error.message.lower()
    return not any(marker in text for marker in _PERMANENT_MARKERS)


def with_retries(
    call: Callable[[float | None], T],
    *,
    timeout: float | None,
    retry_s: float,
    what: str,
    before_retry: Callable[[errors.ModelRunnerError], None] | None = None,
    backoff: Backoff = Backoff(),
) -> T:
    """``call(timeout_left)``, again after transient errors until ``retry_s`` (and ``timeout``,
    which bounds the whole, attempts included) have passed; then the last error is raised.
    ``before_retry(error)`` runs before each new attempt (forget a stale route)."""
    start = time.monotonic()
    call_deadline = None if timeout is None else start + timeout
    retry_deadline = start + (retry_s if timeout is None else min(retry_s, timeout))
    next_wait = backoff.waits()
    attempt = 1
    while True:
        left = None if call_deadline is None else max(0.0, call_deadline - time.monotonic())
        try:
            return call(left)
        except errors.ModelRunnerError as e:
            wait = next_wait()
            if not is_transient(e) or time.monotonic() + wait >= retry_deadline:
                raise
            logger.debug("%s: %s; retrying in %.2f s (attempt %d)", what, e, wait, attempt + 1)
            if before_retry is not None:
                before_retry(e)
        time.sleep(wait)
        attempt += 1
