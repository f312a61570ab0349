"""``modelrunner serve --ray local`` as a user runs it (docs/cluster.md, README): a process that
starts its own Ray cluster and a CPU runtime actor, says it is ready, is seen by
``modelrunner status --once`` with both metrics endpoints, and stops cleanly on SIGTERM,
leaving no Ray token behind (the cluster's own, in a temporary file, goes with it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelrunner.app.cli import main
from tests.cluster.serve_process import serving

pytest.importorskip(
    "ray", reason="Ray is not installed: the cluster tests need `pip install -e .[cluster]`"
)

pytestmark = pytest.mark.ray


def test_serve_ray_local_is_ready_watched_and_stops_on_sigterm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--ray", "local", "--ray-cpu-runtimes", "1", "--metrics-port", "0"]
    env = dict(os.environ, MODELRUNNER_CACHE_DIR=str(tmp_path / "cache"))
    with serving(*argv, env=env) as started:
        assert started.proc.stdout is not None
        assert started.proc.stdout.readline().startswith("modelrunner control service at ")
        # Ray's token mode, with a token of its own: not in ~/.ray/auth_token, where the next
        # `ray start --head` on this machine would take it up
        said = started.proc.stdout.readline()
        assert said.startswith("Ray's token for this local cluster: ")
        token_file = Path(said.split(": ", 1)[1].split(" ", 1)[0])
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert len(token_file.read_text()) == 64
        assert main(["status", "--once", "--server", started.server, "--interval", "0.2"]) == 0
        shown = capsys.readouterr().out
        assert "1 runtime(s), 1 available" in shown
        assert "ray-cpu-0" in shown
        assert "metrics from 2 endpoint(s)" in shown  # the control service's and the actor's
    assert started.code == 0
    assert not token_file.parent.exists()
    assert not (Path(os.environ["HOME"]) / ".ray").exists()
