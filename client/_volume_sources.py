"""What a volume prediction reads: an OME-Zarr image (NGFF 0.4 or 0.5, any level of its
pyramid), a TIFF (read page by page, or tile by tile, through tifffile's zarr view), a ``.npy``
(memory-mapped), or an array already open: a ``zarr.Array``, a dask array, a numpy array (or
anything with ``shape``, ``dtype`` and numpy-style slicing). Files bring their axes, pixel sizes
and translation from their metadata; arrays take ``axes``.

Only the region a block needs is read: zarr and tifffile decode only the chunks or pages it
touches, and a dask array computes only that region.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelrunner import errors
from modelrunner.images.axes import LETTERS, letters, parse_axes
from modelrunner.images.files import ImageFile, open_image

VolumeLike = str | Path | Any
"""A path, or an array with ``shape``, ``dtype`` and slicing."""
FINGERPRINT_SAMPLES = 3
FINGERPRINT_BYTES = 1 << 20


def open_volume(
    source: VolumeLike,
    *,
    axes: str | Sequence[str] | None = None,
    level: int = 0,
    channel: int | None = None,
) -> ImageFile:
    """The source as an :class:`~modelrunner.images.files.ImageFile` (shape, axes, pixel sizes,
    regions read on demand). ``axes``: letters (``"zyx"``) or canonical names; required for an
    array, and overriding a file's metadata. ``level``: an OME-Zarr pyramid level.
    ``channel``: use only this channel of the channel axis."""
    names = _axes(axes)
    if isinstance(source, ImageFile):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise errors.SourceNotFoundError(f"no such file or folder: {path}")
        if level and path.suffix.lower() != ".zarr":
            raise errors.InvalidArgumentError(
                f"{path.name}: pyramid levels are read from OME-Zarr images only",
                details={"level": level},
            )
        return open_image(path, names, channel, level=level)
    if level:
        raise errors.InvalidArgumentError("level is for OME-Zarr paths, not arrays")
    return _open_array(source, names, channel)


def _axes(axes: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"zyx"`` or ``("z", "y", "x")`` or ``("time", "channel", "y", "x")`` as canonical names."""
    if axes is None or isinstance(axes, str):
        return None if axes is None else parse_axes(axes)
    known = set(LETTERS.values())
    names = tuple(a if a in known else LETTERS.get(str(a).lower(), "") for a in axes)
    if "" in names or len(set(names)) != len(names):
        raise errors.InvalidArgumentError(
            f"axes {list(axes)!r}: each one of time, channel, z, y, x, batch (or t, c, z, y, x, "
            "b), none twice"
        )
    return names


def _open_array(array: Any, axes: tuple[str, ...] | None, channel: int | None) -> ImageFile:
    shape = getattr(array, "shape", None)
    dtype = getattr(array, "dtype", None)
    if shape is None or dtype is None or not hasattr(array, "__getitem__"):
        raise errors.InvalidArgumentError(
            f"cannot read a volume from {type(array).__name__}: give a path (OME-Zarr, TIFF, "
            ".npy) or an array (zarr, dask, numpy)"
        )
    if axes is None:
        raise errors.InvalidArgumentError(
            f"an array of shape {tuple(shape)} has no axis names: give them with axes= "
            "(e.g. 'zyx', 'tcyx')"
        )
    if len(axes) != len(shape):
        raise errors.InvalidArgumentError(
            f"axes {letters(axes)!r} name {len(axes)} axes, the array has "
            f"{len(shape)} (shape {tuple(shape)})"
        )
    name = f"{type(array).__module__.split('.')[0]} array"
    image = ImageFile(Path(name), "array", tuple(int(s) for s in shape), axes, _source=array)
    if channel is not None:
        from modelrunner.images.files import _choose_channel

        _choose_channel(image, channel)
    return image


def source_chunks(image: ImageFile) -> tuple[int, ...] | None:
    """The source's chunk shape over ``image.shape`` (None when it has no chunk grid)."""
    array = image._source
    chunks = getattr(array, "chunks", None)
    if chunks is None:
        return None
    if chunks and isinstance(chunks[0], tuple):  # dask: the size of each chunk along each axis
        chunks = tuple(c[0] if c else 1 for c in chunks)
    chunks = tuple(int(c) for c in chunks)
    if image._channel is not None:
        axis = image._channel[0]
        chunks = chunks[:axis] + chunks[axis + 1 :]
    return chunks if len(chunks) == len(image.shape) else None


def source_dtype(image: ImageFile) -> np.dtype:
    """The source's dtype without reading pixels (the first pixel where it has none)."""
    array = image._source
    if array is not None and getattr(array, "dtype", None) is not None:
        return np.dtype(array.dtype)
    return image.read(tuple(slice(0, 1) for _ in image.shape)).dtype


def fingerprint(image: ImageFile, description: dict[str, Any]) -> str:
    """What identifies the source: its description (path, level, channel), shape, dtype and
    axes, and the bytes of a few regions (first, middle, last), so a destination made from other
    data of the same shape is refused without reading the whole source."""
    digest = hashlib.sha256()
    meta = {
        **description,
        "shape": list(image.shape),
        "dtype": str(source_dtype(image)),
        "axes": list(image.axes or ()),
    }
    digest.update(json.dumps(meta, sort_keys=True).encode())
    if math.prod(image.shape) == 0:
        return digest.hexdigest()
    itemsize = source_dtype(image).itemsize
    # a region of at most FINGERPRINT_BYTES at each of a few places along the first long axis
    axis = max(range(len(image.shape)), key=lambda i: image.shape[i])
    rest = math.prod(min(s, 256) for i, s in enumerate(image.shape) if i != axis) * itemsize
    length = max(1, min(image.shape[axis], FINGERPRINT_BYTES // max(1, rest)))
    starts = sorted({0, (image.shape[axis] - length) // 2, image.shape[axis] - length})[
        :FINGERPRINT_SAMPLES
    ]
    for start in starts:
        region = tuple(
            slice(start, start + length) if i == axis else slice(0, min(s, 256))
            for i, s in enumerate(image.shape)
        )
        digest.update(np.ascontiguousarray(image.read(region)).tobytes())
    return digest.hexdigest()
