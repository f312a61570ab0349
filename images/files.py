"""Image files in for ``modelrunner predict``: OME-TIFF, ImageJ and plain TIFF (tifffile),
PNG and JPEG (pillow), ``.npy`` and OME-Zarr (:mod:`modelrunner.images.ome_zarr`); outputs are
:mod:`modelrunner.images.outputs`'s.

An :class:`ImageFile` knows its shape, axes (from the file's metadata or ``--axes``), physical
pixel sizes and whether it is RGB before any pixel is read; planes are read on demand (TIFF and
OME-Zarr: only the pages or chunks a plane touches).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelrunner.errors import InvalidArgumentError, ModelRunnerError, SourceNotFoundError
from modelrunner.images.axes import axes_from_tiff
from modelrunner.images.ome_zarr import is_zarr, read_ome_zarr
from modelrunner.images.outputs import full_suffix

INPUT_SUFFIXES = (".npy", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".zarr")
DEFAULT_OUTPUT_SUFFIX = {"npy": ".npy", "zarr": ".ome.zarr"}
"""By input kind; everything else becomes OME-TIFF (PNG and JPEG hold no float values)."""


def stem(path: Path) -> str:
    return path.name[: len(path.name) - len(full_suffix(path))] or path.name


@dataclass
class ImageFile:
    path: Path
    kind: str
    """npy, tiff, png, jpeg or zarr."""
    shape: tuple[int, ...]
    axes: tuple[str, ...] | None
    rgb: bool = False
    pixel_sizes: dict[str, tuple[float, str]] = field(default_factory=dict)
    """Physical size (and unit) of one pixel by axis, from the file's metadata."""
    zarr_version: str = "0.4"
    translation: dict[str, float] = field(default_factory=dict)
    """OME-Zarr: the image's ``translation`` by axis (physical units)."""
    _source: Any = None
    _channel: tuple[int, int] | None = None
    """(axis, index) chosen with ``--channel``: dropped from ``shape`` and ``axes``."""
    _handle: Any = None

    def close(self) -> None:
        """Let go of an open TIFF (it is opened again when read again)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = self._source = None

    @property
    def name(self) -> str:
        return self.path.name

    def read(self, index: tuple[int | slice, ...]) -> np.ndarray:
        """The region ``index`` (over ``shape``) as a numpy array; TIFF and OME-Zarr read only
        the pages or chunks it touches."""
        if self._channel is not None:
            axis, chosen = self._channel
            index = (*index[:axis], chosen, *index[axis:])
        with _unreadable(self.path):
            if self._source is None:
                self._source, self._handle = _load(self)
            return np.asarray(self._source[index])


def find_inputs(patterns: list[str]) -> list[Path]:
    """Files named, the image files in folders named, and glob matches, in order."""
    import glob

    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if any(c in pattern for c in "*?[") and not path.exists():
            matches = sorted(Path(m) for m in glob.glob(pattern))
            if not matches:
                raise SourceNotFoundError(f"no files match {pattern!r}")
            found.extend(matches)
        elif path.is_dir() and not is_zarr(path):
            inside = sorted(
                p
                for p in path.iterdir()
                if full_suffix(p) in (*INPUT_SUFFIXES, ".ome.tif", ".ome.tiff", ".ome.zarr")
                and not p.name.startswith(".")
            )
            if not inside:
                raise SourceNotFoundError(
                    f"no image files in folder {path} (looked for {', '.join(INPUT_SUFFIXES)})"
                )
            found.extend(inside)
        elif path.exists():
            found.append(path)
        else:
            raise SourceNotFoundError(f"no such file: {path}")
    return found


def open_image(
    path: Path, axes: tuple[str, ...] | None, channel: int | None, *, level: int = 0
) -> ImageFile:
    """Shape, axes and metadata of ``path``; ``axes`` (from ``--axes``) wins over the file's.
    ``level``: which level of an OME-Zarr pyramid (0: full resolution)."""
    with _unreadable(path):
        image = _open(path, forced=axes is not None, level=level)
    if axes is not None:
        if len(axes) != len(image.shape):
            raise InvalidArgumentError(
                f"{path.name}: --axes names {len(axes)} axes, but the image has "
                f"{len(image.shape)} (shape {image.shape})"
            )
        image.axes = axes
    if channel is not None:
        _choose_channel(image, channel)
    return image


@contextmanager
def _unreadable(path: Path) -> Iterator[None]:
    """tifffile, pillow, numpy and zarr each raise their own errors for a damaged file: one
    error, naming the file, instead of a traceback."""
    try:
        yield
    except ModelRunnerError:
        raise
    except Exception as e:
        raise InvalidArgumentError(
            f"{path.name}: cannot read it as {full_suffix(path) or 'an image'}: "
            f"{type(e).__name__}: {e}"
        ) from e


def _open(path: Path, *, forced: bool, level: int = 0) -> ImageFile:
    suffix = full_suffix(path)
    if suffix in (".tif", ".tiff", ".ome.tif", ".ome.tiff"):
        image = _open_tiff(path, forced=forced)
    elif suffix in (".png", ".jpg", ".jpeg"):
        image = _open_pillow(path)
    elif suffix == ".npy":
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        guess = ("y", "x") if array.ndim == 2 else None
        image = ImageFile(path, "npy", tuple(array.shape), guess, _source=array)
    elif suffix in (".zarr", ".ome.zarr"):
        ome = read_ome_zarr(path, forced_axes=forced, level=level)
        image = ImageFile(
            path,
            "zarr",
            tuple(ome.array.shape),
            ome.axes,
            pixel_sizes=ome.pixel_sizes,
            zarr_version=ome.version,
            translation=ome.translation,
            _source=ome.array,
        )
    else:
        raise InvalidArgumentError(
            f"{path}: unsupported file type {suffix or '(none)'}; use one of "
            f"{', '.join(INPUT_SUFFIXES)} (.ome.tif and .ome.zarr included)"
        )
    return image


def _choose_channel(image: ImageFile, channel: int) -> None:
    if image.axes is None or "channel" not in image.axes:
        raise InvalidArgumentError(
            f"--channel {channel}: {image.name} has no channel axis (axes "
            f"{''.join(a[0] for a in image.axes or ())}); name it with --axes"
        )
    axis = image.axes.index("channel")
    if not 0 <= channel < image.shape[axis]:
        raise InvalidArgumentError(
            f"--channel {channel}: {image.name} has channels 0 to {image.shape[axis] - 1}"
        )
    image._channel = (axis, channel)
    image.shape = image.shape[:axis] + image.shape[axis + 1 :]
    image.axes = image.axes[:axis] + image.axes[axis + 1 :]
    image.rgb = False


def _open_tiff(path: Path, *, forced: bool) -> ImageFile:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise InvalidArgumentError(f"{path.name}: no image in this TIFF file")
        series = tif.series[0]
        pages = [p for p in series.pages if p is not None]
        held = sum(p.size for p in pages)
        if held != math.prod(series.shape):
            if not forced:
                raise InvalidArgumentError(
                    f"{path.name}: its metadata claims axes {series.axes} of shape "
                    f"{tuple(series.shape)}, but it holds {len(pages)} plane(s) of "
                    f"{tuple(pages[0].shape) if pages else ()}; give its axes with --axes"
                )
            return _open_plain_tiff(path)
        image = ImageFile(path, "tiff", tuple(series.shape), axes_from_tiff(series.axes))
        image.rgb = "S" in series.axes and series.keyframe.photometric == 2  # RGB
        if tif.is_ome and tif.ome_metadata:
            image.pixel_sizes = _ome_pixel_sizes(tif.ome_metadata)
        elif tif.is_imagej and tif.imagej_metadata:
            image.pixel_sizes = _imagej_pixel_sizes(tif.imagej_metadata, pages[0])
    return image


def _open_plain_tiff(path: Path) -> ImageFile:
    """The pages as they are, ignoring OME and ImageJ metadata (which did not fit them)."""
    import tifffile

    with tifffile.TiffFile(path, is_ome=False, is_imagej=False, is_shaped=False) as tif:
        array = tif.asarray(key=range(len(tif.pages))) if len(tif.pages) > 1 else tif.asarray()
    return ImageFile(path, "tiff", tuple(array.shape), None, _source=array)


def _ome_pixel_sizes(xml: str) -> dict[str, tuple[float, str]]:
    sizes: dict[str, tuple[float, str]] = {}
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return sizes
    pixels = next((e for e in root.iter() if e.tag.endswith("}Pixels")), None)
    if pixels is None:
        return sizes
    for axis in ("x", "y", "z"):
        value = pixels.get(f"PhysicalSize{axis.upper()}")
        if value is not None:
            unit = pixels.get(f"PhysicalSize{axis.upper()}Unit", "µm")
            sizes[axis] = (float(value), unit)
    if pixels.get("TimeIncrement") is not None:
        sizes["time"] = (
            float(pixels.get("TimeIncrement", 1)),
            pixels.get("TimeIncrementUnit", "s"),
        )
    return sizes


def _imagej_pixel_sizes(meta: dict[str, Any], page: Any) -> dict[str, tuple[float, str]]:
    unit = str(meta.get("unit", "")).replace("\\u00B5", "µ")
    sizes: dict[str, tuple[float, str]] = {}
    for axis, tag in (("x", "XResolution"), ("y", "YResolution")):
        resolution = page.tags.get(tag)
        if resolution is not None:
            num, den = resolution.value
            if num:
                sizes[axis] = (den / num, unit)
    if "spacing" in meta:
        sizes["z"] = (float(meta["spacing"]), unit)
    if "finterval" in meta:
        sizes["time"] = (float(meta["finterval"]), "s")
    return sizes


def _open_pillow(path: Path) -> ImageFile:
    from PIL import Image

    with Image.open(path) as image:
        mode, size = image.mode, image.size
    bands = {"RGB": 3, "RGBA": 4, "LA": 2, "P": 3, "PA": 4}.get(mode, 1)
    if bands > 1:
        return ImageFile(
            path, _kind(path), (size[1], size[0], bands), ("y", "x", "channel"), rgb=True
        )
    return ImageFile(path, _kind(path), (size[1], size[0]), ("y", "x"))


def _kind(path: Path) -> str:
    return "png" if full_suffix(path) == ".png" else "jpeg"


def _load(image: ImageFile) -> tuple[Any, Any]:
    """The pixels to index, and what to close when done."""
    if image.kind == "tiff":
        import tifffile
        import zarr

        # tifffile's zarr view of the series: a plane is read (and decoded) when indexed
        tif = tifffile.TiffFile(image.path)
        try:
            return zarr.open_array(tif.series[0].aszarr(), mode="r"), tif
        except BaseException:
            tif.close()
            raise
    from PIL import Image

    with Image.open(image.path) as opened:
        if opened.mode in ("P", "PA"):
            return np.asarray(opened.convert("RGBA" if opened.mode == "PA" else "RGB")), None
        return np.asarray(opened), None
