"""The ``modelrunner`` command line, against a real server (and ``serve`` as a real process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest

from modelrunner.app.cli import main
from modelrunner.client import ModelInfo, ModelRunnerClient
from modelrunner.serving import RunningServer
from tests.common.test_listen_failures import GRPC_CORE_LINE
from tests.runtime_flight.test_model_removal import prediction_in_flight
from tests.tiny_models import build_onnx_identity


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_add_describe(
    server: RunningServer,
    example_nuclei: ModelInfo,
    example_model: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    volume = str(example_model("nuclei3d"))
    code, out, _ = _run(capsys, "add", volume, "--server", server.address, "--json")
    assert code == 0 and json.loads(out)["name"] == "Example nuclei U-Net 3D"
    code, out, _ = _run(capsys, "models", "--server", server.address)
    assert code == 0 and example_nuclei.id[:12] in out and "Example nuclei U-Net 2D" in out
    code, out, _ = _run(capsys, "describe", example_nuclei.id[:12], "--server", server.address)
    assert code == 0
    assert (
        "input raw: float32 (batch:*, channel:1, y:32+n*16, x:32+n*16)  "
        "[ensure_dtype, zero_mean_unit_variance, ensure_dtype]"
    ) in out
    assert (
        "output probability: float32 (batch:*, channel:1, y:=raw.y halo 8, x:=raw.x halo 8)  "
        "[sigmoid, ensure_dtype]"
    ) in out
    # a package path is added first (the same content: the same model)
    code, out, _ = _run(capsys, "describe", volume, "--server", server.address)
    assert code == 0 and "name:           Example nuclei U-Net 3D" in out


def test_validate_exit_codes(
    server: RunningServer,
    example_model: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    package = example_model("nuclei")
    code, out, _ = _run(capsys, "validate", str(package), "--server", server.address)
    assert code == 0
    broken = tmp_path / "bioimageio.yaml"
    broken.write_text((package / "rdf.yaml").read_text().replace("type: batch", "type: bat"))
    code, out, _ = _run(
        capsys, "validate", str(broken), "--server", server.address, "--no-io-checks"
    )
    assert code == 1 and "failed" in out


def test_errors_print_their_code_not_a_traceback(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "describe", "0123456789abcdef", "--server", server.address)
    assert code == 1
    assert err.startswith("error (NOT_FOUND): no model '0123456789abcdef'")


def test_remove_says_when_it_waited_for_predictions_in_flight(
    server: RunningServer,
    client: ModelRunnerClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for waiting in (True, False):
        name = f"cli-removed-{waiting}"
        info = client.add_model(build_onnx_identity(tmp_path / name, name=name))
        client.load(info.id)
        with prediction_in_flight(server, info.id) if waiting else nullcontext():
            code, out, _ = _run(capsys, "remove", info.id, "--server", server.address)
        assert code == 0
        note = "; waited for 1 prediction(s) in flight" if waiting else ""
        assert out == f"removed {info.id}{note}\n"


def test_info_and_test(
    server: RunningServer, example_nuclei: ModelInfo, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "info", "--server", server.address)
    assert code == 0 and "bioimageio.core 0.11.0" in out and "devices: cpu" in out
    code, out, _ = _run(
        capsys,
        "test",
        example_nuclei.id,
        "--weight-format",
        "torchscript",
        "--server",
        server.address,
        "--json",
    )
    assert code == 0 and json.loads(out)["status"] == "passed"


def test_predict_files(
    server: RunningServer,
    example_nuclei: ModelInfo,
    example_model: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    package = example_model("nuclei")
    x = np.load(package / "test_input.npy")
    np.save(tmp_path / "in.npy", x[0, 0])
    code, _, err = _run(
        capsys,
        "predict",
        example_nuclei.id,
        str(tmp_path / "in.npy"),
        "-o",
        str(tmp_path / "out.tif"),
        "--server",
        server.address,
        "--weight-format",
        "torchscript",
        "--no-progress",
    )
    assert code == 0, err
    import tifffile

    y = tifffile.imread(tmp_path / "out.tif")
    expected = np.load(package / "test_output.npy")[0, 0]  # written without singleton axes
    np.testing.assert_allclose(y, expected, atol=1e-4)


def test_predict_on_the_reference_path_and_a_bad_precision(
    server: RunningServer,
    example_nuclei: ModelInfo,
    identity: ModelInfo,
    example_model: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    package = example_model("nuclei")
    np.save(tmp_path / "in.npy", np.load(package / "test_input.npy")[0, 0])
    common = [
        str(tmp_path / "in.npy"),
        "--server",
        server.address,
        "--weight-format",
        "torchscript",
    ]
    code, _, err = _run(
        capsys,
        "predict",
        example_nuclei.id,
        *common,
        "-o",
        str(tmp_path / "out.npy"),
        "--reference-path",
        "--no-progress",
    )
    assert code == 0, err
    expected = np.load(package / "test_output.npy")[0, 0]  # written without singleton axes
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-4)
    # reduced precision needs PyTorch or TorchScript weights: the tiny identity's are ONNX
    code, _, err = _run(
        capsys,
        "predict",
        identity.id,
        str(tmp_path / "in.npy"),
        "--server",
        server.address,
        "-o",
        str(tmp_path / "half.npy"),
        "--precision",
        "float16",
        "--no-progress",
    )
    assert code == 1
    assert err.startswith(f"using the server at {server.address}\nerror (FAILED_PRECONDITION): ")
    assert "float16 precision runs on the fast path" in err


def test_serve_starts_answers_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    env = dict(os.environ, MODELRUNNER_CACHE_DIR=str(tmp_path / "cache"))
    port, flight_port = _free_port(), _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelrunner.app.cli",
            "serve",
            "--port",
            str(port),
            "--flight-port",
            str(flight_port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with ModelRunnerClient(f"127.0.0.1:{port}", timeout=2) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    info = client.server_info()
                    if info.runtimes:
                        break
                except Exception:  # noqa: BLE001 - not up yet
                    pass
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        assert info.runtimes[0].flight_uri.endswith(f":{flight_port}")
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert f"modelrunner control service at 127.0.0.1:{port}" in out
    assert not GRPC_CORE_LINE.search(out), out  # a normal start and stop: our lines only


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_single_machine_default_never_imports_ray() -> None:
    code = (
        "import sys, modelrunner.app.cli, modelrunner.serving, modelrunner.entry_server.server, "
        "modelrunner.runtime_flight.server; "
        "modelrunner.app.cli.build_parser().parse_args(['serve']); "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
