"""The README's "Large images" section, run exactly as written (its bash block, as a script)
against the session's server, in a folder laid out like a fresh clone without ``../shared``
(``tests/readme_checkout.py``): the example scripts where ``examples/`` is and the example
models where the README's first command writes them."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

from modelrunner.serving import RunningServer
from tests.readme_checkout import README, blocks, fresh_clone, run_bash, section, shell_env


def test_the_large_images_commands_run_as_written(
    server: RunningServer, example_model: Callable[[str], Path], tmp_path: Path
) -> None:
    checkout = fresh_clone(tmp_path, example_model)
    commands = "".join(blocks(section("## Large images", README), "bash"))
    done = run_bash(commands, checkout, shell_env(server.address))
    assert done.returncode == 0, done.stderr
    predicted = re.search(
        r"nuclei_timelapse\.ome\.zarr -> results/timelapse_blocks\.ome\.zarr \(probability: "
        r"\[3, 256, 256\], axes tyx; (\d+) of (\d+) blocks predicted on 1 runtime",
        done.stderr,
    )
    assert predicted is not None, done.stderr
    assert predicted.group(1) == predicted.group(2)
    assert (
        f"(probability: [3, 256, 256], axes tyx; all {predicted.group(2)} blocks were done "
        "already)" in done.stderr
    )
    output = checkout / "results" / "timelapse_blocks.ome.zarr"
    group = zarr.open_group(str(output), mode="r")
    multiscale = group.attrs["multiscales"][0]  # NGFF 0.4, as the input
    full_resolution = multiscale["datasets"][0]
    assert full_resolution["coordinateTransformations"][0]["scale"] == [30.0, 0.65, 0.65]
    probability = group["0"][:]
    assert probability.dtype == np.float32 and 0 <= probability.min() <= probability.max() <= 1
