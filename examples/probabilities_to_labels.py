"""From a probability map to labelled nuclei: what to do with what ``modelrunner predict`` wrote
for a segmentation model such as the example nuclei U-Nets (``modelrunner example-model``).

A probability map says, per pixel, how likely it belongs to a nucleus (0 to 1); labels give each
nucleus its own integer (0: background). This script thresholds the map (0.5, or Otsu's
threshold with ``--threshold otsu``), drops specks smaller than ``--min-size`` pixels, and labels
the connected components with scikit-image; ``--split`` also separates touching nuclei (a
watershed on the distance to the background). A 3-D map (ZYX) is labelled in 3-D, unless
``--per-plane`` (a 2-D model's planes, as ``modelrunner predict`` writes them for a z-stack).

    python examples/probabilities_to_labels.py results/nuclei_zstack_probability.ome.tif --per-plane

writes ``results/nuclei_zstack_labels.ome.tif`` (uint16, the input's axes) and prints how many
nuclei each image or plane holds. Reads and writes OME-TIFF, TIFF and ``.npy``. Needs
scikit-image: ``pip install -e ".[examples]"`` (``.[all]`` has it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.measure import label
from skimage.segmentation import watershed


def labels_of(
    probability: np.ndarray,
    *,
    threshold: float | None = 0.5,
    min_size: int = 8,
    split: bool = False,
) -> np.ndarray:
    """Label the nuclei of one 2-D or 3-D probability map. ``threshold`` None: Otsu's."""
    level = threshold_otsu(probability) if threshold is None else threshold
    components = label(probability > level)
    sizes = np.bincount(components.ravel())
    specks = sizes < min_size
    specks[0] = False  # the background stays what it is
    components[specks[components]] = 0
    foreground = components > 0
    if not split:
        return label(foreground).astype(np.uint16)
    # touching nuclei: one seed per local maximum of the distance to the background
    distance = ndimage.distance_transform_edt(foreground)
    peaks = peak_local_max(distance, min_distance=3, labels=label(foreground))
    seeds = np.zeros(distance.shape, np.int32)
    seeds[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, seeds, mask=foreground).astype(np.uint16)


def _read(path: Path) -> tuple[np.ndarray, str]:
    if path.suffix == ".npy":
        array = np.load(path)
        return array, "ZYX"[-array.ndim :] if array.ndim <= 3 else ""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        return series.asarray(), series.axes


def _labels_path(path: Path) -> Path:
    name = path.name
    for suffix in (".ome.tif", ".ome.tiff", ".tif", ".tiff", ".npy"):
        if name.endswith(suffix):
            stem, ext = name[: -len(suffix)], suffix
            break
    else:
        raise SystemExit(f"{path}: give an OME-TIFF, TIFF or .npy file")
    stem = stem.removesuffix("_probability")
    return path.with_name(f"{stem}_labels{ext}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("maps", nargs="+", type=Path, help="probability maps (YX or ZYX)")
    parser.add_argument(
        "--threshold",
        default="0.5",
        help="probability above which a pixel is nucleus, or 'otsu' (default 0.5)",
    )
    parser.add_argument(
        "--min-size", type=int, default=8, help="smallest nucleus kept, in pixels (default 8)"
    )
    parser.add_argument("--split", action="store_true", help="separate touching nuclei")
    parser.add_argument(
        "--per-plane", action="store_true", help="label each plane of a 3-D map on its own"
    )
    args = parser.parse_intermixed_args()
    threshold = None if args.threshold == "otsu" else float(args.threshold)
    for path in args.maps:
        array, axes = _read(path)
        kept = [i for i, n in enumerate(array.shape) if n > 1]  # size-1 axes: C, batch
        probability = array.reshape([array.shape[i] for i in kept])
        axes = "".join(axes[i] for i in kept) if len(axes) == array.ndim else ""

        def one(p: np.ndarray) -> np.ndarray:
            return labels_of(p, threshold=threshold, min_size=args.min_size, split=args.split)

        if args.per_plane and probability.ndim == 3:
            labels = np.stack([one(plane) for plane in probability])
            counts = ", ".join(str(int(plane.max())) for plane in labels)
            found = f"{counts} nuclei in its {len(labels)} planes"
        else:
            labels = one(probability)
            found = f"{int(labels.max())} nuclei"
        target = _labels_path(path)
        if target.suffix == ".npy":
            np.save(target, labels)
        else:
            tifffile.imwrite(target, labels, ome=True, metadata={"axes": axes or None})
        print(f"{path.name}: {found} -> {target}")


if __name__ == "__main__":
    main()
