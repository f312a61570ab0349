"""The README's "Large images" section, run exactly as written (its bash block, as a script)
against the session's server, in a folder laid out like a checkout: the example script where
``examples/`` is and the zoo at ``../shared/zoo``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import zarr

from modelrunner.client import ModelInfo
from modelrunner.serving import RunningServer
from tests.common.test_readme_cli import REPO, readme_commands
from tests.zoo import ZOO, needs_zoo


@needs_zoo
def test_the_large_images_commands_run_as_written(
    server: RunningServer, nuclei: ModelInfo, tmp_path: Path
) -> None:
    checkout = tmp_path / "modelrunner"
    checkout.mkdir()
    (checkout / "examples").symlink_to(REPO / "examples")
    (tmp_path / "shared").symlink_to(ZOO.parent)
    env = dict(
        os.environ,
        MODELRUNNER_SERVER=server.address,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    done = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + readme_commands("## Large images")],
        cwd=checkout, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    output = checkout / "results" / "timelapse_blocks.ome.zarr"
    assert (
        "nuclei_timelapse.ome.zarr -> results/timelapse_blocks.ome.zarr (probability: "
        "[3, 256, 256], axes tyx; 12 of 12 blocks predicted on 1 runtime" in done.stderr
    )
    assert "(probability: [3, 256, 256], axes tyx; all 12 blocks were done already)" in done.stderr
    group = zarr.open_group(str(output), mode="r")
    multiscale = group.attrs["multiscales"][0]  # NGFF 0.4, as the input
    assert [d["coordinateTransformations"][0]["scale"] for d in multiscale["datasets"]] == [
        [30.0, 0.65, 0.65]
    ]
    probability = group["0"][:]
    assert probability.dtype == np.float32 and 0 <= probability.min() <= probability.max() <= 1
