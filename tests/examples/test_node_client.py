"""The Node.js example client (``examples/node``) against the session's server: it uploads the
zoo's nuclei model, predicts its test input over Arrow Flight and over the Open Inference
Protocol, and has a wrong-shape tensor refused on both planes. Needs ``node``; installs the
example's npm packages on first use."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from modelrunner.client import ModelInfo
from modelrunner.client._sources import _zipped
from modelrunner.serving import RunningServer
from tests.zoo import NUCLEI, needs_zoo

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node"
TOLERANCE = 1e-4
"""As the zoo models are held to their test outputs (``tests/runtime_flight/test_fast_path.py``)."""
BAD_CHANNELS = "input 'raw' has 3 channel(s) on axis 'channel', the model expects 1 (raw_intensity)"


@pytest.fixture(scope="module")
def node() -> str:
    """``node``, with the example's packages installed."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH")
    # npm writes node_modules/.package-lock.json last: a folder without it is a broken install
    if not (EXAMPLE / "node_modules" / ".package-lock.json").is_file():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip(f"no {EXAMPLE / 'node_modules'} and npm is not on PATH")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=EXAMPLE,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            first_lines = " / ".join(done.stderr.strip().splitlines()[:4])
            pytest.skip(f"npm ci failed in {EXAMPLE}: {first_lines}")
    return node


def run_example(node: str, server: RunningServer, package: Path) -> dict[str, Any]:
    done = subprocess.run(
        [
            node,
            str(EXAMPLE / "client.mjs"),
            server.address,
            str(package),
            str(NUCLEI / "test_input.npy"),
            str(NUCLEI / "test_output.npy"),
            "--tolerance",
            str(TOLERANCE),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


@needs_zoo
def test_node_client_matches_the_test_output_on_both_planes_and_names_a_bad_tensor(
    node: str, server: RunningServer, nuclei: ModelInfo, tmp_path: Path
) -> None:
    package = tmp_path / f"{NUCLEI.name}.zip"
    upload = _zipped(NUCLEI, compress=False)  # the Python client's own packing of a folder
    assert upload.data is not None
    package.write_bytes(upload.data)

    result = run_example(node, server, package)

    assert result["model_id"] == nuclei.id  # content-addressed: the same for every client
    for plane in ("flight", "v2"):
        assert result[plane]["max_abs_diff"] <= TOLERANCE, plane
        assert result[plane]["ms"] > 0, plane
        assert result[plane]["error"] == {"code": "INVALID_ARGUMENT", "message": BAD_CHANNELS}
