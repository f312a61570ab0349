"""``modelrunner serve --ray`` as a user runs it, in a process of its own: started on a free
port, waited for until it says it is ready, stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Serving:
    proc: subprocess.Popen[str]
    server: str
    """The control service: ``127.0.0.1:PORT``."""
    code: int | None = None
    """The exit status, once stopped."""


@contextmanager
def serving(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> Iterator[Serving]:
    """``modelrunner serve ARGS`` ready (its stderr read up to the ready line, each line
    checked for Ray's retries); SIGTERM on exit, whose status :attr:`Serving.code` holds."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelrunner.app.cli", "serve", *args, "--port", str(port)],
        env=env if env is not None else os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = Serving(proc, f"127.0.0.1:{port}")
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + timeout
        for line in proc.stderr:
            assert RAY_RETRIES not in line
            if line.startswith("modelrunner ready: "):
                break
            assert time.monotonic() < deadline, "not ready in time"
        else:
            pytest.fail(f"serve --ray exited with {proc.wait()} before it was ready")
        yield started
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            started.code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


RAY_RETRIES = "Failed to get cluster ID"
"""What Ray logs once a second while it retries a refused token."""
