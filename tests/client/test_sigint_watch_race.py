"""Ctrl-C while the client starts watching a call for SIGINT (between installing its handler and
borrowing the signal wakeup fd) must leave nothing behind: not the borrowed wakeup fd, not its
handler, not the call in the watcher's registry."""

from __future__ import annotations

import _signal
import signal
import types
from typing import Any

import pytest

from modelrunner.runtime_client import cancellation as _cancellation


class _Reader:
    def cancel(self) -> None:
        pass


def _wakeup_fd() -> int:
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return fd


@pytest.mark.parametrize("step", ["signal", "set_wakeup_fd"])
def test_a_ctrl_c_while_watch_starts_leaves_nothing_borrowed(
    monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """Attack: KeyboardInterrupt raised inside each step of ``watch()``."""
    watcher = _cancellation._SigintWatcher()

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    steps = {
        "getsignal": _signal.getsignal,
        "signal": _signal.signal,
        "set_wakeup_fd": _signal.set_wakeup_fd,
    }
    steps[step] = interrupted
    monkeypatch.setattr(_cancellation, "_signal", types.SimpleNamespace(**steps))
    handler, fd = signal.getsignal(signal.SIGINT), _wakeup_fd()
    with pytest.raises(KeyboardInterrupt):
        watcher.watch(_Reader())
    assert signal.getsignal(signal.SIGINT) is handler
    assert _wakeup_fd() == fd
    assert watcher._watched is None
