"""``serve --ray`` on a Ray cluster that uses Ray's token authentication
(``cluster/ray_token_auth.py``, docs/cluster.md).

One head node for the module, started as an operator does: ``ray start --head --block`` with
``RAY_AUTH_MODE=token`` and its token in a file, in a HOME and RAY_TMPDIR of the tests' own
(tests/cluster/conftest.py). ``modelrunner serve`` joins it with the right token and its runtime
actor registers; a wrong, stale or missing token, from each source Ray reads, is refused at once
by name, before ``ray.init`` (whose retries would take 20 s and end in a message about the
address). The cluster without token mode is tests/cluster/test_ray_runtimes.py's.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelrunner import errors
from modelrunner.app.cli import main
from modelrunner.cluster.ray_token_auth import (
    HOW_TO_PASS,
    NAMED_FILE,
    RayAuthChoice,
    TokenSource,
    choose_ray_auth,
    local_cluster_token,
)
from tests.cluster.serve_process import RAY_RETRIES, free_port, serving

pytest.importorskip(
    "ray", reason="Ray is not installed: the cluster tests need `pip install -e .[cluster]`"
)

pytestmark = pytest.mark.ray

TOKEN = "a" * 64
STALE = "b" * 64


@dataclass(frozen=True)
class Head:
    address: str
    """The GCS: ``host:port``."""
    client_port: int
    """Its Ray Client server (``ray://``)."""
    token_file: Path
    ray_tmpdir: Path
    """Its RAY_TMPDIR, where it notes its address for ``auto``."""


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    root = tmp_path_factory.mktemp("token-head")
    token_file = root / "cluster_token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    # its own short RAY_TMPDIR: Ray's socket paths must stay within 107 characters
    ray_tmpdir = Path(os.environ["RAY_TMPDIR"]) / "head"
    ray_tmpdir.mkdir()
    client_port = free_port()
    env = dict(
        os.environ,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_file),
        RAY_TMPDIR=str(ray_tmpdir),
    )
    command = [
        *(sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block"),
        *("--port=0", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"),
        f"--object-store-memory={80 * 1024**2}",
        f"--ray-client-server-port={client_port}",
        f"--dashboard-agent-listen-port={free_port()}",
    ]
    log = (root / "head.log").open("w")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        noted = ray_tmpdir / "ray" / "ray_current_cluster"
        deadline = time.monotonic() + 120
        while not noted.exists() or not noted.read_text().strip():
            assert proc.poll() is None, (root / "head.log").read_text()
            assert time.monotonic() < deadline, "the Ray head did not start in time"
            time.sleep(0.2)
        while not _listening(client_port):  # Ray starts its client server a little later
            assert proc.poll() is None, (root / "head.log").read_text()
            assert time.monotonic() < deadline, "the Ray Client server did not start in time"
            time.sleep(0.2)
        yield Head(noted.read_text().strip(), client_port, token_file, ray_tmpdir)
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def no_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """This process with none of Ray's token sources set; the home directory, empty."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    return home


def _token_file(directory: Path, token: str, name: str = "token") -> Path:
    path = directory / name
    path.write_text(token + "\n")  # as `echo` writes it: Ray drops the line end, so do we
    path.chmod(0o600)
    return path


def _set_source(
    source: str, token: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> Path | None:
    """Puts ``token`` where ``source`` says; the file for --ray-auth-token-file, else None."""
    if source == "RAY_AUTH_TOKEN":
        monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    elif source == "RAY_AUTH_TOKEN_PATH":
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(_token_file(home, token)))
    elif source == "~/.ray/auth_token":
        (home / ".ray").mkdir()
        _token_file(home / ".ray", token, "auth_token")
    else:
        return _token_file(home, token)
    return None


SOURCES = ["--ray-auth-token-file", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token"]


@pytest.mark.parametrize("source", SOURCES)
def test_the_right_token_from_each_source_is_taken_as_ray_takes_it(
    head: Head, no_token: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    token_file = _set_source(source, TOKEN, no_token, monkeypatch)
    choice = choose_ray_auth(head.address, token_file)
    assert choice is not None and choice.mode == "token"
    assert choice.source is not None
    assert choice.source.name == (NAMED_FILE if token_file else source)
    if token_file is not None:
        # the named file wins over Ray's own sources, for this process and what it starts
        assert choice.environment() == {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token_file),
            "RAY_AUTH_TOKEN": None,
        }
    else:
        assert choice.environment() == {"RAY_AUTH_MODE": "token"}


@pytest.mark.parametrize("source", SOURCES)
def test_a_wrong_or_stale_token_is_refused_naming_its_source(
    head: Head, no_token: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """Attacks: a stale ~/.ray/auth_token left by another cluster (the issue's case), or any
    wrong token; each is told as such, not as an address where nothing answers."""
    token_file = _set_source(source, STALE, no_token, monkeypatch)
    with pytest.raises(errors.UnauthenticatedError) as refused:
        choose_ray_auth(head.address, token_file)
    named = {
        "--ray-auth-token-file": f"{NAMED_FILE} ({token_file})",
        "RAY_AUTH_TOKEN": "RAY_AUTH_TOKEN",
        "RAY_AUTH_TOKEN_PATH": f"RAY_AUTH_TOKEN_PATH ({no_token / 'token'})",
        "~/.ray/auth_token": f"~/.ray/auth_token ({no_token / '.ray' / 'auth_token'})",
    }[source]
    message = refused.value.message
    assert message.startswith(
        f"the Ray cluster at {head.address!r} uses Ray's token authentication and refused "
        f"the token from {named}"
    )
    assert message.endswith(HOW_TO_PASS)
    assert ("one left by another cluster is stale" in message) == (source == "~/.ray/auth_token")


def test_no_token_at_all_is_refused_saying_where_it_looked(head: Head, no_token: Path) -> None:
    with pytest.raises(errors.UnauthenticatedError) as refused:
        choose_ray_auth(head.address)
    assert refused.value.message == (
        f"the Ray cluster at {head.address!r} uses Ray's token authentication, and this "
        f"process has no token (none in {NAMED_FILE}, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
        f"~/.ray/auth_token): {HOW_TO_PASS}"
    )


def test_ray_auth_mode_disabled_here_is_named(
    head: Head, no_token: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(errors.UnauthenticatedError, match="RAY_AUTH_MODE=disabled here: unset"):
        choose_ray_auth(head.address)
    # the file named to modelrunner is meant: it turns token mode on
    choice = choose_ray_auth(head.address, _token_file(no_token, TOKEN))
    assert choice is not None and choice.mode == "token"


def test_a_named_token_file_that_is_missing_or_empty_is_an_invalid_argument(
    head: Head, no_token: Path
) -> None:
    with pytest.raises(errors.InvalidArgumentError, match="cannot read Ray's token from"):
        choose_ray_auth(head.address, no_token / "missing")
    (no_token / "empty").write_text("\n")
    with pytest.raises(errors.InvalidArgumentError, match="is empty"):
        choose_ray_auth(head.address, no_token / "empty")


def test_a_ray_client_address_and_auto_are_asked_as_well(
    head: Head, no_token: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = f"ray://127.0.0.1:{head.client_port}"
    monkeypatch.setenv("RAY_AUTH_TOKEN", STALE)
    with pytest.raises(errors.UnauthenticatedError, match="refused the token from RAY_AUTH"):
        choose_ray_auth(client)
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    assert choose_ray_auth(client) == RayAuthChoice("token", TokenSource("RAY_AUTH_TOKEN"))
    # auto: the cluster `ray start` last noted in RAY_TMPDIR, as ray.init finds it
    monkeypatch.setenv("RAY_TMPDIR", str(head.ray_tmpdir))
    monkeypatch.setenv("RAY_AUTH_TOKEN", STALE)
    at = re.escape(f"cluster at 'auto' ({head.address}) uses Ray's token")
    with pytest.raises(errors.UnauthenticatedError, match=at):
        choose_ray_auth("auto")


def test_a_local_cluster_gets_a_token_of_its_own_that_goes_with_it(no_token: Path) -> None:
    before = dict(os.environ)
    with local_cluster_token() as made:
        assert made is not None and made.parent.name.startswith("modelrunner-ray-")
        assert made.stat().st_mode & 0o777 == 0o600
        assert made.parent.stat().st_mode & 0o777 == 0o700
        assert os.environ["RAY_AUTH_MODE"] == "token"
        assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(made)
    assert not made.parent.exists()
    assert dict(os.environ) == before
    assert not (no_token / ".ray").exists()


def test_a_local_cluster_takes_the_users_token_or_none_when_told(
    no_token: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with local_cluster_token(_token_file(no_token, TOKEN)) as made:
        assert made is None and os.environ["RAY_AUTH_TOKEN_PATH"] == str(no_token / "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    with local_cluster_token() as made:
        assert made is None and os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with local_cluster_token() as made:
        assert made is None and os.environ["RAY_AUTH_MODE"] == "disabled"
    (no_token / "empty").write_text("")
    with (
        pytest.raises(errors.InvalidArgumentError, match="is empty"),
        local_cluster_token(no_token / "empty"),
    ):
        pytest.fail("a local cluster with an empty token file")
    assert os.environ["RAY_AUTH_MODE"] == "disabled" and "RAY_AUTH_TOKEN_PATH" not in os.environ


def test_serve_refuses_a_wrong_token_at_once_without_rays_retries(
    head: Head, tmp_path: Path
) -> None:
    wrong = _token_file(tmp_path, STALE)
    argv = ["serve", "--ray", head.address, "--ray-auth-token-file", str(wrong)]
    proc = subprocess.run(
        [sys.executable, "-m", "modelrunner.app.cli", *argv, "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error (UNAUTHENTICATED): the Ray cluster at {head.address!r} uses Ray's token "
        f"authentication and refused the token from {NAMED_FILE} ({wrong}): {HOW_TO_PASS}"
    ]
    assert RAY_RETRIES not in proc.stderr and proc.stdout == ""


def test_serve_joins_with_the_right_token_and_its_actors_need_nothing_more(
    head: Head, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = _token_file(tmp_path, TOKEN)
    args = ("--ray", head.address, "--ray-auth-token-file", str(token_file))
    with serving(*args, "--ray-cpu-runtimes", "1", "--cache-dir", str(tmp_path / "cache")) as on:
        assert main(["status", "--once", "--server", on.server]) == 0
        shown = capsys.readouterr().out
        assert "1 runtime(s), 1 available" in shown and "ray-cpu-0" in shown
    assert on.code == 0
    # joining leaves nothing in Ray's default place
    assert not (Path(os.environ["HOME"]) / ".ray").exists()
