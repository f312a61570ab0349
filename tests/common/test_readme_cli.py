"""The README's "From the command line" section, run exactly as written (its fenced bash
blocks, as a script) against the session's server, in a folder laid out like a checkout: the
example script where ``examples/`` is and the zoo at ``../shared/zoo``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
import zarr

from modelrunner.client import ModelInfo
from modelrunner.serving import RunningServer
from tests.zoo import ZOO

REPO = Path(__file__).resolve().parents[2]
SECTION = "## From the command line"


def readme_section(section: str = SECTION) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(section)
    end = text.find("\n## ", start + len(section))
    return text[start : end if end >= 0 else None]


def readme_commands(section: str = SECTION) -> str:
    blocks = re.findall(r"```bash\n(.*?)```", readme_section(section), flags=re.DOTALL)
    assert blocks, f"no bash block in {section!r}"
    return "".join(blocks)


def test_the_readme_commands_run_as_written(
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
    script = "set -euo pipefail\n" + readme_commands()
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(f"using the server at {server.address}") == 5

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
    assert not [p for p in results.rglob("*") if "partial" in p.name]

    # the error the section quotes, for the RGB image without --channel
    quoted = re.search(r"Without it the command\s+says `(.*?)`", readme_section(), re.DOTALL)
    assert quoted is not None
    command = "modelrunner predict ../shared/zoo/unet2d_nuclei_broad samples/nuclei_rgb.png -o x/"
    refused = subprocess.run(
        ["bash", "-c", command], cwd=checkout, env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 1
    assert f"error (INVALID_ARGUMENT): {' '.join(quoted.group(1).split())}\n" in refused.stderr
