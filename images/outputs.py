"""Writing ``modelrunner predict``'s outputs: the format an output path asks for, checked
before any work, and OME-TIFF (axes, physical pixel sizes), PNG and ``.npy`` files written under
a temporary name in their folder and renamed when complete (OME-Zarr outputs are written plane
by plane through :mod:`modelrunner.images.ome_zarr` inside the same :func:`atomic_path`), so a
failed or cancelled run never leaves a file that looks finished.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from modelrunner.errors import FailedPreconditionError, InvalidArgumentError, PermissionDeniedError
from modelrunner.images.ome_zarr import UNIT_NAMES

Format = Literal["npy", "tiff", "png", "zarr"]
OUTPUT_SUFFIXES: dict[str, Format] = {
    ".ome.tif": "tiff",
    ".ome.tiff": "tiff",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".ome.zarr": "zarr",
    ".zarr": "zarr",
    ".npy": "npy",
    ".png": "png",
}
_OME_UNITS = {name: symbol for symbol, name in UNIT_NAMES.items() if symbol not in ("um", "micron")}


def full_suffix(path: Path) -> str:
    """``.ome.tif``, ``.ome.tiff`` and ``.ome.zarr`` whole; otherwise the last suffix."""
    name = path.name.lower()
    for suffix in (".ome.tif", ".ome.tiff", ".ome.zarr"):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def output_format(path: Path) -> Format:
    suffix = full_suffix(path)
    if suffix not in OUTPUT_SUFFIXES:
        raise InvalidArgumentError(
            f"-o {path}: cannot write {suffix or 'files without a suffix'} (JPEG would lose "
            "the values); use .ome.tif, .tif, .ome.zarr, .npy or .png, or a folder (ending "
            "in /) for one file per input and output"
        )
    return OUTPUT_SUFFIXES[suffix]


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path next to ``path``, renamed to ``path`` when the block completes and
    removed when it fails. A failure to write (a full disk, a folder in the way of a file) is
    an error naming the file, not a traceback."""
    temporary = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        try:
            yield temporary
            if temporary.is_dir() and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)  # an older OME-Zarr of the same name, replaced by the new
            os.replace(temporary, path)
        except OSError as e:
            raise FailedPreconditionError(
                f"cannot write {path}: {e.strerror or e}; nothing was written there"
            ) from e
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary.exists():
            temporary.unlink()


def check_writable(path: Path) -> None:
    """Refuse, before any work, an output whose folder cannot be made or written."""

    folder = path.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionDeniedError(f"-o {path}: cannot write in {existing}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionDeniedError(f"-o {path}: cannot make folder {folder}: {e}") from e


def write_image(
    path: Path,
    fmt: Format,
    array: np.ndarray,
    axes: tuple[str, ...],
    pixel_sizes: dict[str, tuple[float, str]],
    *,
    name: str,
) -> None:
    """Write a whole array (TIFF, PNG, npy) to ``path`` (a temporary name from
    :func:`atomic_path`; ``name`` is the final one); OME-TIFF keeps axes and pixel sizes."""
    if fmt == "npy":
        with path.open("wb") as f:
            np.save(f, array)
    elif fmt == "tiff":
        _write_ome_tiff(path, name, array, axes, pixel_sizes)
    elif fmt == "png":
        _write_png(path, name, array)
    else:  # pragma: no cover - zarr is written plane by plane by the caller
        raise AssertionError(fmt)


def _write_ome_tiff(
    path: Path,
    name: str,
    array: np.ndarray,
    axes: tuple[str, ...],
    sizes: dict[str, tuple[float, str]],
) -> None:
    import tifffile

    ome = {"time": "T", "channel": "C", "z": "Z", "y": "Y", "x": "X"}
    if not axes or any(a not in ome for a in axes):
        raise InvalidArgumentError(
            f"{name}: OME-TIFF holds time, channel, z, y and x axes, the output has "
            f"{list(axes) or list(array.shape)}; name the input's axes (--axes) or write .npy"
        )
    letters = "".join(ome[a] for a in axes)
    metadata: dict[str, Any] = {"axes": letters}
    for axis in ("x", "y", "z"):
        if axis in sizes and axis in axes:
            value, unit = sizes[axis]
            metadata[f"PhysicalSize{axis.upper()}"] = value
            if unit:
                metadata[f"PhysicalSize{axis.upper()}Unit"] = _OME_UNITS.get(unit, unit)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    tifffile.imwrite(path, array, ome=True, metadata=metadata, photometric="minisblack")


def _write_png(path: Path, name: str, array: np.ndarray) -> None:
    from PIL import Image

    image = np.squeeze(array)
    if image.ndim == 3 and image.shape[0] in (3, 4) and image.shape[-1] not in (3, 4):
        image = np.moveaxis(image, 0, -1)
    if image.ndim not in (2, 3):
        raise InvalidArgumentError(
            f"{name}: a PNG holds a 2-D image (or 2-D with 3/4 channels), the output has shape "
            f"{list(array.shape)}; write .ome.tif, .ome.zarr or .npy instead"
        )
    if image.dtype not in (np.uint8, np.uint16):
        lo, hi = float(np.nanmin(image)), float(np.nanmax(image))
        print(
            f"note: {name}: {image.dtype} values in [{lo:.3g}, {hi:.3g}] scaled to 8 bit "
            "for PNG; use .ome.tif or .npy to keep them",
            file=sys.stderr,
        )
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        image = ((np.nan_to_num(image, nan=lo) - lo) * scale).astype(np.uint8)
    Image.fromarray(image).save(path, format="PNG")
