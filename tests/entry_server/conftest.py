"""Fixtures: a real control service on port 0 with its own cache directory, a local web server,
fake runtimes."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelrunner.entry_server import ControlServer, start_control_server
from modelrunner.settings import Settings
from modelrunner.v1 import control_pb2, control_pb2_grpc
from tests.entry_server.helpers import ZOO

READABLE_ZOO = [ZOO] if ZOO.is_dir() else []
"""Without the zoo, no test names a path in it (``tests/zoo.py`` skips those that would), and
the servers of the others must not count as reading it."""


def make_settings(cache_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "cache_dir": cache_dir,
        "host": "127.0.0.1",
        "port": 0,
        "grace_period_s": 0.5,
        # most of these servers have no runtime: calls that need one fail at once
        "runtime_wait_s": 0,
        "download_timeout_s": 5.0,
        "download_retries": 2,
        "download_backoff_s": 0.01,
        "bioimageio_base_url": "http://127.0.0.1:9/unused",
        # Tests name packages by path in the zoo and in their own tmp folder (the cache's parent).
        "path_source_roots": [*READABLE_ZOO, cache_dir.parent],
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Running:
    """A started control service and a stub connected to it."""

    server: ControlServer
    channel: grpc.Channel
    stub: control_pb2_grpc.ControlServiceStub

    @property
    def cache_dir(self) -> Path:
        return self.server.settings.cache_dir


@dataclass
class ServerFactory:
    tmp_path: Path
    running: list[Running] = field(default_factory=list)

    def __call__(self, cache_dir: Path | None = None, **overrides: Any) -> Running:
        settings = make_settings(cache_dir or self.tmp_path / "cache", **overrides)
        server = start_control_server(settings, max_workers=8)
        channel = grpc.insecure_channel(server.address)
        running = Running(server, channel, control_pb2_grpc.ControlServiceStub(channel))
        self.running.append(running)
        return running

    def stop(self, running: Running) -> None:
        """Stop one server, after checking it still serves (every error test ends with this)."""
        if running not in self.running:
            return
        self.running.remove(running)
        try:
            _assert_serving(running)
        finally:
            running.channel.close()
            running.server.stop(0)


def _assert_serving(running: Running) -> None:
    running.stub.ListModels(control_pb2.ListModelsRequest(), timeout=10)
    health = health_pb2_grpc.HealthStub(running.channel)
    # alive; "" is NOT_SERVING without a runtime (readiness)
    answer = health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Starts control services; at the end checks each still serves, then stops it."""
    factory = ServerFactory(tmp_path)
    yield factory
    for running in list(factory.running):
        factory.stop(running)


@pytest.fixture
def control(start_server: ServerFactory) -> Running:
    """One control service with default test settings."""
    return start_server()


# -- a local web server ---------------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    """Extra headers, such as ``Location`` for a redirect."""


class FakeWeb:
    """Serves scripted replies: each path has a list of replies, the last one repeats."""

    def __init__(self) -> None:
        self.replies: dict[str, list[Reply]] = {}
        self.requests: list[str] = []
        self.hosts: list[str] = []
        """The Host header of each request."""
        self._lock = threading.Lock()
        web = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                web.hosts.append(self.headers.get("Host", ""))
                reply = web.next_reply(self.path)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Length", str(len(reply.body)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def serve(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self.replies[path] = list(replies)

    def serve_file(self, path: str, file: Path) -> None:
        self.serve(path, Reply(body=file.read_bytes()))

    def serve_folder(self, prefix: str, folder: Path) -> None:
        for file in folder.rglob("*"):
            if file.is_file():
                self.serve_file(f"{prefix}/{file.relative_to(folder).as_posix()}", file)

    def next_reply(self, path: str) -> Reply:
        with self._lock:
            self.requests.append(path)
            queue = self.replies.get(path)
            if not queue:
                return Reply(status=404, body=b"not found")
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def web() -> Iterator[FakeWeb]:
    fake = FakeWeb()
    yield fake
    fake.close()


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
