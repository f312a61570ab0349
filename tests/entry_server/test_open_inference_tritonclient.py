"""The Open Inference Protocol with the real client Triton users have: tritonclient's gRPC
``infer`` and stream infer against the shared server give bioimageio.core's outputs for the zoo
models, and its errors carry the right status codes.

tritonclient runs in its own environment (:mod:`tests.tritonclient_env`), from the script
``tritonclient_calls.py``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from modelrunner.client import ModelRunnerClient
from modelrunner.serving import RunningServer
from tests.reference import core_prediction, sample_inputs
from tests.tritonclient_env import tritonclient_python
from tests.zoo import MULTI, NUCLEI, needs_zoo

SCRIPT = Path(__file__).with_name("tritonclient_calls.py")
pytestmark = [needs_zoo, pytest.mark.slow]


def _call(python: Path, tmp_path: Path, spec: dict[str, object]) -> dict[str, object]:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"out_dir": str(tmp_path), **spec}))
    done = subprocess.run(
        [str(python), str(SCRIPT), str(spec_file)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def _check(
    server: RunningServer,
    client: ModelRunnerClient,
    tmp_path: Path,
    package: Path,
    weight_format: str,
    bad_shape: list[int],
) -> None:
    python = tritonclient_python()
    info = client.add_model(package)
    inputs = sample_inputs(package)
    paths = {}
    for name, array in inputs.items():
        paths[name] = str(tmp_path / f"input_{name}.npy")
        np.save(paths[name], array)
    report = _call(
        python,
        tmp_path,
        {
            "url": server.address,
            "model": info.id,
            "inputs": paths,
            "parameters": {"weight_format": weight_format},
            "bad_shape": bad_shape,
        },
    )
    assert report["live"] is True
    assert report["ready"] is True
    assert report["model_ready"] is True
    metadata = report["metadata"]
    assert isinstance(metadata, dict)
    assert metadata["name"] == info.id
    assert [t["name"] for t in metadata["inputs"]] == [t.id for t in info.inputs]
    expected = core_prediction(package, inputs, weight_format)
    assert report["outputs"] == [t.id for t in info.outputs]
    for name, array in expected.items():
        for file in (f"infer_{name}.npy", f"stream0_{name}.npy", f"stream2_{name}.npy"):
            got = np.load(tmp_path / file)
            assert got.shape == array.shape, file
            np.testing.assert_allclose(got, array, rtol=1e-5, atol=1e-5, err_msg=file)
    assert report["bad_infer"] == "INVALID_ARGUMENT"
    assert report["unknown_model"] == "NOT_FOUND"
    stream = report["stream"]
    assert isinstance(stream, list)
    assert [s.get("id") for s in stream] == ["0", None, "2"]
    assert "INVALID_ARGUMENT" in stream[1]["error"]


def test_tritonclient_runs_the_nuclei_model(
    server: RunningServer, client: ModelRunnerClient, tmp_path: Path
) -> None:
    _check(server, client, tmp_path, NUCLEI, "onnx", [1, 3, 64, 64])


def test_tritonclient_runs_a_model_of_two_inputs_and_outputs(
    server: RunningServer, client: ModelRunnerClient, tmp_path: Path
) -> None:
    _check(server, client, tmp_path, MULTI, "torchscript", [1, 3, 64, 64])


def test_tritonclient_runs_the_careamics_model(
    server: RunningServer, client: ModelRunnerClient, n2v_package: Path, tmp_path: Path
) -> None:
    _check(server, client, tmp_path, n2v_package, "pytorch_state_dict", [2, 3, 64, 64, 5])
