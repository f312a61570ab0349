"""The README's "From the command line" section, run exactly as written (its fenced bash
blocks, as a script) against the session's server, in a folder laid out like a fresh clone
without ``../shared`` (``tests/readme_checkout.py``): the example scripts where ``examples/``
is and the example models where the README's first command writes them."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile
import zarr

from modelrunner.serving import RunningServer
from tests.readme_checkout import README, blocks, fresh_clone, run_bash, section, shell_env

SECTION = "## From the command line"


def readme_section() -> str:
    return section(SECTION, README)


def readme_commands() -> str:
    return "".join(blocks(readme_section(), "bash"))


def test_the_readme_commands_run_as_written(
    server: RunningServer, example_model: Callable[[str], Path], tmp_path: Path
) -> None:
    checkout = fresh_clone(tmp_path, example_model)
    env = shell_env(server.address)
    done = run_bash(readme_commands(), checkout, env)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(f"using the server at {server.address}") == 6

    results = checkout / "results"
    with tifffile.TiffFile(results / "nuclei_zstack_probability.ome.tif") as tif:
        assert tif.series[0].axes == "ZYX" and tif.series[0].shape == (3, 256, 256)
        assert 'PhysicalSizeZ="2.0"' in (tif.ome_metadata or "")
        zstack = tif.asarray()
    assert zstack.dtype == np.float32 and zstack.min() >= 0 and zstack.max() <= 1
    with tifffile.TiffFile(results / "stack_probability.ome.tif") as tif:
        assert tif.series[0].axes == "ZYX"
        np.testing.assert_allclose(tif.asarray(), zstack, atol=1e-5)
    for i in (1, 2, 3):
        with tifffile.TiffFile(results / "fields" / f"field_{i}_probability.ome.tif") as tif:
            assert tif.series[0].axes == "YX"
            np.testing.assert_allclose(tif.asarray(), zstack[i - 1], atol=1e-5)
    with tifffile.TiffFile(results / "nuclei_rgb_probability.ome.tif") as tif:
        assert tif.series[0].axes == "YX" and tif.series[0].shape == (256, 256)
    group = zarr.open_group(str(results / "nuclei_timelapse_probability.ome.zarr"), mode="r")
    assert [a["name"] for a in group.attrs["multiscales"][0]["axes"]] == ["t", "y", "x"]
    np.testing.assert_allclose(group["0"][:], zstack, atol=1e-5)
    with tifffile.TiffFile(results / "nuclei_volume_probability.ome.tif") as tif:
        assert tif.series[0].axes == "ZYX" and tif.series[0].shape == (24, 128, 128)
    with tifffile.TiffFile(results / "nuclei_zstack_labels.ome.tif") as tif:
        assert tif.series[0].axes == "ZYX" and tif.series[0].dtype == np.uint16
        labels = tif.asarray()
    counts = ", ".join(str(int(plane.max())) for plane in labels)
    assert (
        f"nuclei_zstack_probability.ome.tif: {counts} nuclei in its 3 planes -> "
        "results/nuclei_zstack_labels.ome.tif"
    ) in done.stdout
    assert all(int(plane.max()) > 20 for plane in labels)  # the planes hold dozens of nuclei
    assert not [p for p in results.rglob("*") if "partial" in p.name]

    # the error the section quotes, for the RGB image without --channel
    quoted = re.search(r"Without it the command\s+says `(.*?)`", readme_section(), re.DOTALL)
    assert quoted is not None
    command = "modelrunner predict models/nuclei samples/nuclei_rgb.png -o x/"
    refused = run_bash(command, checkout, env)
    assert refused.returncode == 1
    assert f"error (INVALID_ARGUMENT): {' '.join(quoted.group(1).split())}\n" in refused.stderr
