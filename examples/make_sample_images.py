"""Small microscopy sample files for the README's command-line examples, cut from the zoo's
nuclei test image (``../shared/zoo/unet2d_nuclei_broad/test_input.npy``, 512x512):

    samples/nuclei_zstack.ome.tif     OME-TIFF z-stack, 3 planes of 256x256 (ZYX, 0.65 x 0.65 x 2 µm)
    samples/nuclei_rgb.png            RGB PNG, the nuclei in the blue channel (as a DAPI overlay)
    samples/fields/field_{1,2,3}.tif  a folder of plain 2-D TIFFs
    samples/stack.tif                 a plain 3-page TIFF stack, with no axes in its metadata
    samples/nuclei_timelapse.ome.zarr OME-Zarr (NGFF 0.4), 3 time points of 256x256 (TYX)

Usage: ``python examples/make_sample_images.py samples [--zoo ../shared/zoo]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile
import zarr
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--zoo", type=Path, default=Path("../shared/zoo"))
    args = parser.parse_args()
    image = np.load(args.zoo / "unet2d_nuclei_broad" / "test_input.npy")[0, 0]
    # 16-bit, as a camera gives them
    scaled = (image - image.min()) / (image.max() - image.min())
    camera = (scaled * 4000 + 100).astype(np.uint16)
    planes = np.stack([camera[:256, :256], camera[128:384, 128:384], camera[256:, 256:]])
    out: Path = args.folder
    (out / "fields").mkdir(parents=True, exist_ok=True)

    tifffile.imwrite(
        out / "nuclei_zstack.ome.tif",
        planes,
        ome=True,
        photometric="minisblack",
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": 0.65,
            "PhysicalSizeY": 0.65,
            "PhysicalSizeZ": 2.0,
        },
    )
    rgb = np.zeros((256, 256, 3), np.uint8)
    rgb[..., 2] = (scaled[:256, 256:] * 255).astype(np.uint8)
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
    print(f"wrote sample images to {out}/")


if __name__ == "__main__":
    main()
