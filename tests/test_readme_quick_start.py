"""The README's first steps run as written, from a folder laid out like a fresh clone with no
``../shared`` beside it (``tests/readme_checkout.py``): the example model, the Python client,
from probabilities to labels, the command line, and serving on a shared network with a private
CA's certificate. "From the command line" and "Use it from bioimageio.core" have tests of their
own (``tests/common/test_readme_cli.py``, ``tests/client/test_readme_core_example.py``).

Stood in for: the install block (this is the installed environment) and ``modelrunner serve``
(the session's server; its address is ``$MODELRUNNER_SERVER`` and replaces ``localhost:50051``).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.measure import label

from modelrunner.client import ModelRunnerClient
from modelrunner.serving import RunningServer
from tests.certificates import make_certificates
from tests.readme_checkout import (
    blocks,
    fresh_clone,
    promised,
    run_bash,
    run_python,
    section,
    shell_env,
)


def test_the_first_steps_run_as_written_without_shared(
    server: RunningServer, example_model: Callable[[str], Path], tmp_path: Path
) -> None:
    checkout = fresh_clone(tmp_path, example_model)
    env = shell_env(server.address)

    (try_it,) = blocks(section("## Try it with an example model"), "bash")
    done = run_bash(try_it, checkout, env)
    assert done.returncode == 0, done.stderr
    said = done.stdout.splitlines()
    assert said[0] == "models/nuclei/ holds the nuclei example model already (remove it to " + (
        "train it again)"
    )
    assert re.fullmatch(
        r"[0-9a-f]{64}  Example nuclei U-Net 2D  \(pytorch_state_dict, torchscript\)", said[1]
    )

    python = blocks(section("## Use it from Python"), "python")[0]
    printed = run_python(python, checkout, server.address).splitlines()
    assert printed == promised(python)

    (labels_block,) = blocks(section("### From probabilities to labels"), "python")
    (printed_count,) = run_python(labels_block, checkout, server.address).splitlines()
    expected = np.load(checkout / "models" / "nuclei" / "test_output.npy")[0, 0]
    count = int(label(expected > 0.5).max())
    found = re.fullmatch(r"(\d+) nuclei", printed_count)
    assert found is not None and abs(int(found.group(1)) - count) <= 1  # pixels at 0.5 may flip

    # "your image"
    tifffile.imwrite(
        checkout / "image.tif", np.load(checkout / "models/nuclei/test_input.npy")[0, 0]
    )
    (command_line,) = blocks(section("## Command line"), "bash")
    done = run_bash(command_line, checkout, env)
    assert done.returncode == 0, done.stderr
    assert "model test of models/nuclei: passed" in done.stdout
    assert "validation of models/nuclei/rdf.yaml: valid-format" in done.stdout
    assert "name:           Example nuclei U-Net 2D" in done.stdout
    with tifffile.TiffFile(checkout / "results" / "probability.ome.tif") as tif:
        assert tif.series[0].axes == "YX" and tif.series[0].shape == (256, 256)
    assert "Traceback" not in done.stderr


def test_serving_on_a_shared_network_with_a_private_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two lines as written, but for the address: tests listen on loopback only, so
    ``--host 0.0.0.0`` becomes ``--host 127.0.0.1`` and the ports are free ones
    (``MODELRUNNER_PORT=0``). ``host.pem`` was signed by a CA of the test's own, ``ca.pem``."""
    certs = make_certificates(tmp_path / "made")
    for made, named in (
        (certs.server_cert, "host.pem"),
        (certs.server_key, "host.key"),
        (certs.ca, "ca.pem"),
    ):
        shutil.copy(made, tmp_path / named)
    text = section("## On a shared network")
    (lines,) = blocks(text, "bash")
    create, serve = (line.split("   #")[0].strip() for line in lines.strip().splitlines())
    assert "--tls-ca ca.pem" in serve and "--host 0.0.0.0" in serve
    env = shell_env(
        "unused:1",
        MODELRUNNER_CACHE_DIR=str(tmp_path / "cache"),
        MODELRUNNER_PORT="0",
        MODELRUNNER_FLIGHT_PORT="0",
    )
    made = run_bash(create, tmp_path, env)
    assert made.returncode == 0, made.stderr
    token = made.stdout.split()[0]
    process = subprocess.Popen(
        ["bash", "-c", "exec " + serve.replace("--host 0.0.0.0", "--host 127.0.0.1")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        ready = ""
        for line in process.stderr:
            if line.startswith(("modelrunner ready", "error")):
                ready = line
                break
        assert ready.startswith("modelrunner ready: control service 127.0.0.1:"), ready
        address = ready.split("control service ", 1)[1].split(",")[0]
        (client_line,) = [
            line for line in blocks(text, "python")[0].splitlines() if "ModelRunnerClient(" in line
        ]
        code = client_line.replace('"host:50051"', repr(address)).replace('"mr_..."', repr(token))
        scope: dict[str, object] = {"ModelRunnerClient": ModelRunnerClient}
        monkeypatch.chdir(tmp_path)  # "ca.pem" is where the person ran the commands
        exec(code, scope)
        with scope["client"] as client:  # type: ignore[attr-defined]
            assert client.list_models() == []
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    assert process.returncode == 0
