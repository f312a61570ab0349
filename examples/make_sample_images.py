"""Small microscopy sample files for the README's command-line examples: synthetic nuclei
(``modelrunner.synthetic_nuclei``, drawn with numpy, the same kind of image the example models
are trained on), saved as microscopes and Fiji save them, 16-bit as a camera records them:

    samples/nuclei_zstack.ome.tif     OME-TIFF z-stack, 3 planes of 256x256 (ZYX, 0.65 x 0.65 x 2 µm)
    samples/nuclei_rgb.png            RGB PNG, the nuclei in the blue channel (as a DAPI overlay)
    samples/fields/field_{1,2,3}.tif  a folder of plain 2-D TIFFs (the z-stack's planes)
    samples/stack.tif                 a plain 3-page TIFF stack, with no axes in its metadata
    samples/nuclei_timelapse.ome.zarr OME-Zarr (NGFF 0.4), 3 time points of 256x256 (TYX)
    samples/nuclei_volume.ome.tif     OME-TIFF volume, 24 planes of 128x128 (ZYX), for a 3-D model

Usage: ``python examples/make_sample_images.py samples [--seed 0]``. Needs only the client
install (numpy, tifffile, pillow, zarr).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile
import zarr
from PIL import Image

from modelrunner.synthetic_nuclei import camera_counts, draw_nuclei


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write the files (made if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    # three planes of one volume, 2 µm apart: the nuclei's sections change from plane to plane
    planes = camera_counts(draw_nuclei((3, 256, 256), rng, z_scale=0.25).image)
    out: Path = args.folder
    (out / "fields").mkdir(parents=True, exist_ok=True)

    _write_zstack(out / "nuclei_zstack.ome.tif", planes, z_step_um=2.0)
    flat = draw_nuclei((256, 256), rng).image
    rgb = np.zeros((256, 256, 3), np.uint8)
    rgb[..., 2] = (np.clip(flat / flat.max(), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(out / "nuclei_rgb.png")
    for i, plane in enumerate(planes, 1):
        tifffile.imwrite(out / "fields" / f"field_{i}.tif", plane, photometric="minisblack")
    with tifffile.TiffWriter(out / "stack.tif") as tif:
        for plane in planes:  # pages one by one: no shape or axes in the file
            tif.write(plane, photometric="minisblack", metadata=None)

    group = zarr.open_group(str(out / "nuclei_timelapse.ome.zarr"), mode="w", zarr_format=2)
    array = group.create_array("0", shape=planes.shape, chunks=(1, 256, 256), dtype="uint16")
    array[:] = planes
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": "nuclei_timelapse",
            "axes": [
                {"name": "t", "type": "time", "unit": "second"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [{"type": "scale", "scale": [30.0, 0.65, 0.65]}],
                }
            ],
        }
    ]

    volume = camera_counts(draw_nuclei((24, 128, 128), rng).image)
    _write_zstack(out / "nuclei_volume.ome.tif", volume, z_step_um=1.3)
    print(f"wrote sample images to {out}/")


def _write_zstack(path: Path, stack: np.ndarray, *, z_step_um: float) -> None:
    """An OME-TIFF z-stack (ZYX) with 0.65 µm pixels, as a microscope writes it."""
    tifffile.imwrite(
        path,
        stack,
        ome=True,
        photometric="minisblack",
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": 0.65,
            "PhysicalSizeY": 0.65,
            "PhysicalSizeZ": z_step_um,
        },
    )


if __name__ == "__main__":
    main()
