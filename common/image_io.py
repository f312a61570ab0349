"""Read and write arrays as ``.npy``, ``.tif``/``.tiff`` and ``.png`` files for the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from modelrunner.errors import InvalidArgumentError, SourceNotFoundError

SUFFIXES = (".npy", ".tif", ".tiff", ".png")


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InvalidArgumentError(
            f"{path}: unsupported file type {suffix or '(none)'}; use one of {', '.join(SUFFIXES)}"
        )
    return suffix


def read_array(path: Path) -> np.ndarray:
    suffix = _suffix(path)
    if not path.is_file():
        raise SourceNotFoundError(f"no such file: {path}")
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix in (".tif", ".tiff"):
        import tifffile

        return np.asarray(tifffile.imread(path))
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)


def write_array(path: Path, array: np.ndarray) -> None:
    suffix = _suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(path, array)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, array)
    else:
        _write_png(path, array)


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    image = np.squeeze(array)
    if image.ndim == 3 and image.shape[0] in (3, 4) and image.shape[-1] not in (3, 4):
        image = np.moveaxis(image, 0, -1)
    if image.ndim not in (2, 3):
        raise InvalidArgumentError(
            f"{path}: a PNG holds a 2-D image (or 2-D with 3/4 channels), the output has shape "
            f"{list(array.shape)}; write .tif or .npy instead"
        )
    if image.dtype not in (np.uint8, np.uint16):
        lo, hi = float(np.nanmin(image)), float(np.nanmax(image))
        print(
            f"note: {path.name}: {image.dtype} values in [{lo:.3g}, {hi:.3g}] scaled to 8 bit "
            "for PNG; use .tif or .npy to keep them",
            file=sys.stderr,
        )
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        image = ((np.nan_to_num(image, nan=lo) - lo) * scale).astype(np.uint8)
    Image.fromarray(image).save(path)


def output_paths(output: Path, output_ids: list[str]) -> dict[str, Path]:
    """Where each output goes: ``-o out.tif`` for one output, ``out_<id>.tif`` for several,
    ``<folder>/<id>.npy`` when ``-o`` is a folder."""
    if output.is_dir() or str(output).endswith(("/", "\\")) or not output.suffix:
        return {oid: output / f"{oid}.npy" for oid in output_ids}
    _suffix(output)
    if len(output_ids) == 1:
        return {output_ids[0]: output}
    return {oid: output.with_name(f"{output.stem}_{oid}{output.suffix}") for oid in output_ids}
