"""OME-Zarr (NGFF) images, read and written block by block with zarr.

Reads NGFF 0.4 (zarr v2, ``multiscales`` in the group's attributes) and 0.5 (zarr v3, under
``ome``): the first multiscale's full-resolution level, its axes and pixel sizes. Writes one
full-resolution level with the same metadata, version 0.4 unless the input was 0.5, chunked one
plane per chunk so that planes are written as they are predicted. The ``ome-zarr`` package
would bring dask and an HTTP stack for this; the metadata is a few keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelrunner.errors import InvalidArgumentError
from modelrunner.images.axes import UNKNOWN

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
    translation: dict[str, float] = field(default_factory=dict)
    """The level's ``translation`` transform by axis (physical units), where it has one."""


def read_ome_zarr(path: Path, *, forced_axes: bool = False, level: int = 0) -> OmeZarrImage:
    """The full-resolution level of ``path`` (or the pyramid's ``level``); with
    ``forced_axes`` (``--axes``) the metadata's axes need not match the array."""
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as e:  # zarr raises many kinds for a folder that is no zarr group
        raise InvalidArgumentError(f"{path}: not a zarr group ({e})") from e
    try:
        return _read_level(path, group, forced_axes=forced_axes, level=level)
    except (AttributeError, TypeError, ValueError, IndexError) as e:
        raise InvalidArgumentError(f"{path}: malformed OME-Zarr metadata ({e})") from e


def _read_level(path: Path, group: Any, *, forced_axes: bool, level: int) -> OmeZarrImage:
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
    if not 0 <= level < len(datasets):
        raise InvalidArgumentError(
            f"{path.name}: no pyramid level {level}; it has levels 0 to {len(datasets) - 1}",
            details={"level": level, "levels": len(datasets)},
        )
    dataset = datasets[level]
    try:
        array = group[str(dataset["path"])]
    except KeyError as e:
        raise InvalidArgumentError(f"{path}: no array {dataset['path']!r}") from e
    if not isinstance(array, zarr.Array):
        raise InvalidArgumentError(f"{path}: {dataset['path']!r} is not an array")
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
    translation: dict[str, float] = {}
    for transform in dataset.get("coordinateTransformations") or []:
        if transform.get("type") == "scale" and len(transform.get("scale", ())) == len(axes):
            for axis, raw, value in zip(axes, raw_axes, transform["scale"], strict=True):
                if axis in ("z", "y", "x", "time"):
                    unit = raw.get("unit", "") if isinstance(raw, dict) else ""
                    sizes[axis] = (float(value), str(unit))
        elif transform.get("type") == "translation" and len(
            transform.get("translation", ())
        ) == len(axes):
            for axis, value in zip(axes, transform["translation"], strict=True):
                if axis in ("z", "y", "x", "time"):
                    translation[axis] = float(value)
    return OmeZarrImage(array, axes, sizes, version, translation)


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

    check_ngff_axes(path, axes)
    v05 = version.startswith("0.5")
    group = zarr.open_group(str(path), mode="w-", zarr_format=3 if v05 else 2)
    chunks = tuple(
        size if axis in ("y", "x", "channel") else 1 for axis, size in zip(axes, shape, strict=True)
    )
    array = group.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    scale = [pixel_sizes.get(a, (1.0, ""))[0] for a in axes]
    write_multiscales(group, axes, pixel_sizes, [("0", scale, None)], name=name, version=version)
    return array


def check_ngff_axes(path: Path, axes: tuple[str, ...]) -> None:
    unknown = [a for a in axes if a not in _NGFF_TYPE]
    if unknown:
        raise InvalidArgumentError(
            f"{path.name}: OME-Zarr holds time, channel, z, y and x axes, not {unknown}; "
            "write .npy instead"
        )


def write_multiscales(
    group: Any,
    axes: tuple[str, ...],
    pixel_sizes: dict[str, tuple[float, str]],
    datasets: Sequence[tuple[str, list[float], list[float] | None]],
    *,
    name: str,
    version: str,
    extra: dict[str, Any] | None = None,
) -> None:
    """The group's NGFF ``multiscales`` (0.4: in its attributes; 0.5: under ``ome``): the axes
    with their units, and per level (path, scale, translation or None)."""
    ngff_axes: list[dict[str, str]] = []
    for axis in axes:
        entry = {"name": _NGFF_NAME.get(axis, axis), "type": _NGFF_TYPE[axis]}
        unit = pixel_sizes.get(axis, (1.0, ""))[1]
        if unit:
            entry["unit"] = UNIT_NAMES.get(unit, unit)
        ngff_axes.append(entry)
    entries = []
    for path, scale, translation in datasets:
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
        if translation is not None:
            transforms.append({"type": "translation", "translation": translation})
        entries.append({"path": path, "coordinateTransformations": transforms})
    multiscale: dict[str, Any] = {
        "axes": ngff_axes,
        "datasets": entries,
        "name": name,
        **(extra or {}),
    }
    if version.startswith("0.5"):
        group.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}
    else:
        group.attrs["multiscales"] = [{"version": "0.4", **multiscale}]
