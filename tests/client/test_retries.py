"""Which errors the client retries, and for how long (client/_retries.py); the retries against
real restarting servers are in tests/test_lifecycle.py."""

from __future__ import annotations

import time

import pytest

from modelrunner import errors
from modelrunner.client import ModelRunnerClient
from modelrunner.client._retries import Backoff, is_transient, with_retries

FAST = Backoff(initial_s=0.01, max_s=0.02)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (errors.ServerShuttingDownError("the runtime is shutting down"), True),
        (errors.UnavailableError("no runtime registered"), True),
        (errors.UnavailableError("failed to connect to all addresses; Connection refused"), True),
        (errors.UnavailableError("failed to connect: Ssl handshake failed"), False),
        (errors.UnavailableError("no registered runtime can run model abc with onnx"), False),
        (errors.ModelNotFoundError("no model abc"), False),
        (errors.DeadlineExceededError("too slow"), False),
    ],
)
def test_only_unavailable_that_waiting_may_mend_is_transient(
    error: errors.ModelRunnerError, transient: bool
) -> None:
    assert is_transient(error) is transient


def test_a_transient_error_is_retried_until_the_call_succeeds() -> None:
    attempts: list[float | None] = []

    def call(left: float | None) -> str:
        attempts.append(left)
        if len(attempts) < 3:
            raise errors.UnavailableError("no runtime registered")
        return "ok"

    assert with_retries(call, timeout=5, retry_s=5, what="t", backoff=FAST) == "ok"
    assert len(attempts) == 3
    assert all(left is not None and 0 < left <= 5 for left in attempts)  # the time left


def test_a_permanent_error_is_raised_at_once() -> None:
    attempts = []

    def call(left: float | None) -> None:
        attempts.append(left)
        raise errors.ModelNotFoundError("no model abc")

    with pytest.raises(errors.ModelNotFoundError):
        with_retries(call, timeout=5, retry_s=5, what="t", backoff=FAST)
    assert len(attempts) == 1


@pytest.mark.parametrize(("timeout", "retry_s"), [(0.3, 30.0), (None, 0.3), (30.0, 0.3)])
def test_retries_stop_at_the_call_timeout_or_retry_s(timeout: float | None, retry_s: float) -> None:
    def call(left: float | None) -> None:
        raise errors.UnavailableError("no runtime registered")

    start = time.monotonic()
    with pytest.raises(errors.UnavailableError):
        with_retries(call, timeout=timeout, retry_s=retry_s, what="t", backoff=FAST)
    assert 0.2 <= time.monotonic() - start < 2.0


def test_retry_s_zero_never_retries() -> None:
    with ModelRunnerClient("127.0.0.1:9", timeout=5, retry_s=0) as client:
        start = time.monotonic()
        with pytest.raises(errors.UnavailableError):
            client.list_models()
        assert time.monotonic() - start < 2.0
