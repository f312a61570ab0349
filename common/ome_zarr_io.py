"""OME-Zarr (NGFF) images, read and written block by block with zarr.

Reads NGFF 0.4 (zarr v2, ``multiscales`` in the group's attributes) and 0.5 (zarr v3, under
``ome``): the first multiscale's full-resolution level, its axes and pixel sizes. Writes one
full-resolution level with the same metadata, version 0.4 unless the input was 0.5, chunked one
plane per chunk so that planes are written as they are predicted. The ``ome-zarr`` package
would bring dask and an HTTP stack for this; the metadata is a few keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelrunner.errors import InvalidArgumentError
from modelrunner.image_axes import UNKNOWN

_NAMES = {"t": "time", "c": "channel"}
_NGFF_NAME = {"time": "t", "channel": "c"}
_NGFF_TYPE = {"time": "time", "channel": "channel", "z": "space", "y": "space", "x": "space"}
UNIT_NAMES = {
    "µm": "micrometer",
    "um": "micrometer",
    "micron": "micrometer",
    "nm": "nanometer",
    "mm": "millimeter",
    "s": "second",
    "ms": "millisecond",
}
"""OME-TIFF and ImageJ unit symbols by their OME-Zarr (UDUNITS) names."""


def is_zarr(path: Path) -> bool:
    return path.suffix.lower() == ".zarr"


@dataclass
class OmeZarrImage:
    array: Any
    """The full-resolution ``zarr.Array``: indexing it reads only the chunks it touches."""
    axes: tuple[str, ...]
    pixel_sizes: dict[str, tuple[float, str]] = field(default_factory=dict)
    version: str = "0.4"


def read_ome_zarr(path: Path, *, forced_axes: bool = False) -> OmeZarrImage:
    """The full-resolution level of ``path``; with ``forced_axes`` (``--axes``) the metadata's
    axes need not match the array."""
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as e:  # zarr raises many kinds for a folder that is no zarr group
        raise InvalidArgumentError(f"{path}: not a zarr group ({e})") from e
    try:
        return _read_level0(path, group, forced_axes=forced_axes)
    except (AttributeError, TypeError, ValueError, IndexError) as e:
        raise InvalidArgumentError(f"{path}: malformed OME-Zarr metadata ({e})") from e


def _read_level0(path: Path, group: Any, *, forced_axes: bool) -> OmeZarrImage:
    import zarr

    attrs: dict[str, Any] = dict(group.attrs)
    ome: dict[str, Any] | None = attrs["ome"] if isinstance(attrs.get("ome"), dict) else None
    version = str((ome or {}).get("version", "0.5" if ome else "0.4"))
    multiscales = (ome or attrs).get("multiscales")
    if not isinstance(multiscales, list) or not multiscales:
        raise InvalidArgumentError(
            f"{path}: a zarr group without OME-Zarr 'multiscales' metadata; write it as "
            "OME-Zarr (NGFF 0.4 or 0.5)"
        )
    scale0: dict[str, Any] = multiscales[0]
    datasets = scale0.get("datasets") or []
    if not datasets or "path" not in datasets[0]:
        raise InvalidArgumentError(f"{path}: OME-Zarr multiscales without datasets")
    try:
        array = group[str(datasets[0]["path"])]
    except KeyError as e:
        raise InvalidArgumentError(f"{path}: no array {datasets[0]['path']!r}") from e
    if not isinstance(array, zarr.Array):
        raise InvalidArgumentError(f"{path}: {datasets[0]['path']!r} is not an array")
    raw_axes = scale0.get("axes") or []
    axes = tuple(_axis_name(a) for a in raw_axes)
    if len(axes) != array.ndim:
        if not forced_axes:
            raise InvalidArgumentError(
                f"{path.name}: its metadata names {len(axes)} axes but the array has "
                f"{array.ndim} (shape {tuple(array.shape)}); give its axes with --axes"
            )
        return OmeZarrImage(array, (), {}, version)
    sizes: dict[str, tuple[float, str]] = {}
    for transform in datasets[0].get("coordinateTransformations") or []:
        if transform.get("type") == "scale" and len(transform.get("scale", ())) == len(axes):
            for axis, raw, value in zip(axes, raw_axes, transform["scale"], strict=True):
                if axis in ("z", "y", "x", "time"):
                    unit = raw.get("unit", "") if isinstance(raw, dict) else ""
                    sizes[axis] = (float(value), str(unit))
    return OmeZarrImage(array, axes, sizes, version)


def _axis_name(axis: Any) -> str:
    name = str(axis.get("name", "") if isinstance(axis, dict) else axis).lower()
    kind = axis.get("type", "") if isinstance(axis, dict) else ""
    if kind in ("time", "channel"):
        return str(kind)
    name = _NAMES.get(name, name)
    return name if name in ("time", "channel", "z", "y", "x") else UNKNOWN


def create_ome_zarr(
    path: Path,
    shape: tuple[int, ...],
    dtype: Any,
    axes: tuple[str, ...],
    pixel_sizes: dict[str, tuple[float, str]],
    *,
    name: str,
    version: str = "0.4",
) -> Any:
    """An empty OME-Zarr image at ``path`` (a new folder) with one level; returns its array,
    chunked one 2-D plane (all channels) per chunk, for the caller to fill plane by plane."""
    import zarr

    unknown = [a for a in axes if a not in _NGFF_TYPE]
    if unknown:
        raise InvalidArgumentError(
            f"{path.name}: OME-Zarr holds time, channel, z, y and x axes, not {unknown}; "
            "write .npy instead"
        )
    v05 = version.startswith("0.5")
    group = zarr.open_group(str(path), mode="w-", zarr_format=3 if v05 else 2)
    chunks = tuple(
        size if axis in ("y", "x", "channel") else 1 for axis, size in zip(axes, shape, strict=True)
    )
    array = group.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    ngff_axes: list[dict[str, str]] = []
    for axis in axes:
        entry = {"name": _NGFF_NAME.get(axis, axis), "type": _NGFF_TYPE[axis]}
        unit = pixel_sizes.get(axis, (1.0, ""))[1]
        if unit:
            entry["unit"] = UNIT_NAMES.get(unit, unit)
        ngff_axes.append(entry)
    scale = [pixel_sizes.get(a, (1.0, ""))[0] for a in axes]
    multiscale: dict[str, Any] = {
        "axes": ngff_axes,
        "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        ],
        "name": name,
    }
    if v05:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}
    else:
        group.attrs["multiscales"] = [{"version": "0.4", **multiscale}]
    return array
