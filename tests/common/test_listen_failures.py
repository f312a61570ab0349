"""A server that cannot listen says which port, whether a modelrunner answers there and the flag
that picks another, with no log line of gRPC's C core or absl before it."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelrunner import __version__, errors
from modelrunner.entry_server import start_control_server
from modelrunner.runtime_flight.server import RuntimeFlightServer
from modelrunner.serving import RunningServer, start_runtime
from modelrunner.settings import Settings

GRPC_CORE_LINE = re.compile(r"^[IWEF]\d{4} |absl::|GRPC_VERBOSITY|add_port\.cc", re.MULTILINE)
"""What gRPC's C core and absl print: ``E1205 20:11:08.124880 7247 add_port.cc:83] ...``."""


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another program holds: a plain listening socket."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(
        **{"host": "127.0.0.1", "port": 0, "flight_port": 0, "cache_dir": tmp_path, **values}
    )


def test_a_port_a_modelrunner_holds_names_it_and_the_flag(
    server: RunningServer, tmp_path: Path
) -> None:
    port = server.control.port
    with pytest.raises(errors.UnavailableError) as raised:
        start_control_server(_settings(tmp_path, port=port))
    assert raised.value.message == (
        f"port {port} is in use on 127.0.0.1: a modelrunner control service answers there "
        f"(modelrunner {__version__}; "
        f"`modelrunner info --server 127.0.0.1:{port}`): use it, or stop it first. Start this "
        "control service on another port with --port PORT (--port 0: any free port)"
    )


def test_a_port_another_program_holds_says_so(held_port: int, tmp_path: Path) -> None:
    with pytest.raises(errors.UnavailableError) as raised:
        start_control_server(_settings(tmp_path, port=held_port))
    assert raised.value.message.startswith(
        f"port {held_port} is in use on 127.0.0.1: another program listens there"
    )
    assert raised.value.message.endswith("with --port PORT (--port 0: any free port)")


def test_a_second_runtime_on_the_first_ones_port_says_a_runtime_answers_there(
    server: RunningServer, runtime: RuntimeFlightServer, tmp_path: Path
) -> None:
    """`modelrunner runtime --control ...` next to `modelrunner serve` takes the default Flight
    port the embedded runtime holds."""
    with pytest.raises(errors.UnavailableError) as raised:
        start_runtime(_settings(tmp_path, flight_port=runtime.port), server.address)
    assert raised.value.message == (
        f"port {runtime.port} is in use on 127.0.0.1: a modelrunner runtime answers there (that "
        "of a running `modelrunner serve`, or another `modelrunner runtime`). Start this runtime "
        "on another port with --flight-port PORT (--flight-port 0: any free port)"
    )


def test_an_address_of_another_machine_says_so(tmp_path: Path) -> None:
    """192.0.2.1 is TEST-NET-1: never an address of this machine."""
    with pytest.raises(errors.UnavailableError) as raised:
        start_control_server(_settings(tmp_path, host="192.0.2.1", insecure=True))
    assert raised.value.message == (
        "the control service cannot listen on 192.0.2.1:0: Cannot assign requested address; "
        "is 192.0.2.1 an address of this machine?"
    )


def test_serve_on_a_held_port_prints_one_error_and_no_grpc_core_lines(
    held_port: int, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modelrunner.app.cli", "serve", "--port", str(held_port)],
        env={"MODELRUNNER_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert not GRPC_CORE_LINE.search(done.stderr), done.stderr
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert error.startswith(f"error (UNAVAILABLE): port {held_port} is in use on 127.0.0.1: ")
