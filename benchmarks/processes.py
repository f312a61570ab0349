"""Servers under test, each in its own process (and process group), always stopped.

A server starts in a new session, so stopping it reaches every process it started (PyTriton's
``tritonserver`` and Python backend stubs, for instance) without touching anything else: SIGINT
to the group first (graceful), then SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import psutil

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerDiedError(RuntimeError):
    """A server process ended while it was expected to serve."""


class ServerProcess:
    """A server command run in its own process group, its output going to ``log_path``.

    >>> with ServerProcess("echo", [python, "-m", "benchmarks.echo_server", ...], log) as server:
    ...     server.wait_ready(lambda: ping(), timeout=30)
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "server not started"
        return self.process.pid

    def start(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logger.info("starting %s: %s", self.name, " ".join(self.command))
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    def check_alive(self) -> None:
        assert self.process is not None, "server not started"
        code = self.process.poll()
        if code is not None:
            tail = self.log_tail()
            last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
            raise ServerDiedError(
                f"{self.name} exited with code {code}: {last.strip()} (log: {self.log_path})"
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(
        self, is_ready: Callable[[], bool], *, timeout: float, interval: float = 0.2
    ) -> float:
        """Poll ``is_ready`` until it returns True; returns the seconds waited. Exceptions from
        ``is_ready`` count as not ready."""
        started = time.monotonic()
        deadline = started + timeout
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if is_ready():
                    waited = time.monotonic() - started
                    logger.info("%s ready after %.1f s", self.name, waited)
                    return waited
            except Exception as e:  # noqa: BLE001 - not up yet; the last error is reported
                last_error = e
            time.sleep(interval)
        raise TimeoutError(
            f"{self.name} not ready after {timeout:.0f} s (last error: {last_error}); "
            f"output:\n{self.log_tail()}"
        )

    def stop(self, grace: float = 15.0) -> None:
        """Stop the whole process group: SIGINT, then SIGTERM, then SIGKILL."""
        if self.process is not None:
            stop_group(self.process, self.name, grace=grace)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader still counts as a member: look for members that are not zombies.
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.info["pid"]) == group and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def stop_group(process: subprocess.Popen[bytes], name: str, *, grace: float = 15.0) -> None:
    """Stop ``process`` (started with ``start_new_session=True``) and everything it started:
    SIGINT to its process group, then SIGTERM, then SIGKILL."""
    group = process.pid  # the leader of its own session and group
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if not _group_alive(group):
            break
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            # Reap the leader as soon as it exits; the rest of the group may linger.
            process.poll()
            if not _group_alive(group):
                break
            time.sleep(0.05)
        else:
            logger.warning("%s still running %.0f s after %s", name, wait, sig.name)
    try:
        # The group is gone, but its leader may still be between exit and zombie.
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
    logger.info("stopped %s (exit code %s)", name, process.returncode)
