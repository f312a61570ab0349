"""A bioimage.io model description (format 0.5, from bioimageio.spec) as a ``types.ModelInfo``.

The caller imports bioimageio.spec; this module only reads the description's attributes, so it
imports nothing heavy itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelrunner import types

if TYPE_CHECKING:
    from bioimageio.spec.model.v0_5 import InputTensorDescr, ModelDescr, OutputTensorDescr

logger = logging.getLogger(__name__)


def model_info(
    descr: ModelDescr,
    *,
    model_id: str,
    package_dir: Path,
    format_version: str,
    source: str,
    size_bytes: int,
) -> types.ModelInfo:
    """The registry's view of a model: typed tensors, authors, weight formats."""
    return types.ModelInfo(
        id=model_id,
        name=descr.name,
        description=descr.description,
        authors=tuple(_author(a) for a in descr.authors),
        tags=tuple(str(t) for t in descr.tags),
        license=str(descr.license or ""),
        format_version=format_version,
        bioimageio_id=str(descr.id or ""),
        version=str(descr.version or ""),
        weight_formats=tuple(descr.weights.available_formats),
        inputs=tuple(tensor_spec(t, package_dir) for t in descr.inputs),
        outputs=tuple(tensor_spec(t, package_dir) for t in descr.outputs),
        source=source,
        size_bytes=size_bytes,
    )


def _author(author: Any) -> types.Author:
    return types.Author(
        name=str(author.name or ""),
        affiliation=str(author.affiliation or ""),
        email=str(author.email or ""),
        github_user=str(author.github_user or ""),
        orcid=str(author.orcid or ""),
    )


def tensor_spec(
    tensor: InputTensorDescr | OutputTensorDescr, package_dir: Path
) -> types.TensorSpec:
    return types.TensorSpec(
        id=str(tensor.id),
        description=tensor.description,
        axes=tuple(axis_spec(a) for a in tensor.axes),
        dtype=str(tensor.dtype),
        preprocessing=_steps(getattr(tensor, "preprocessing", ())),
        postprocessing=_steps(getattr(tensor, "postprocessing", ())),
        optional=bool(getattr(tensor, "optional", False)),
        test_shape=_test_shape(tensor, package_dir),
    )


def axis_spec(axis: Any) -> types.AxisSpec:
    kind = str(axis.type)
    if kind == "channel":
        size: types.AxisSize | None = len(axis.channel_names)
    else:
        size = axis_size(getattr(axis, "size", None))
    unit = getattr(axis, "unit", None)
    return types.AxisSpec(
        id=str(axis.id),
        type=kind,  # type: ignore[arg-type]
        size=size,
        halo=int(getattr(axis, "halo", 0) or 0),
        scale=float(getattr(axis, "scale", 1.0) or 1.0),
        unit="" if unit is None else str(unit),
        channel_names=tuple(str(n) for n in getattr(axis, "channel_names", ()) or ()),
        concatenable=bool(getattr(axis, "concatenable", False)),
    )


def axis_size(size: Any) -> types.AxisSize | None:
    """bioimageio.spec's size rule as ours: by the attributes each kind of rule has."""
    if size is None:
        return None
    if isinstance(size, int):
        return size
    if hasattr(size, "step"):
        return types.ParameterizedSize(min=int(size.min), step=int(size.step))
    if hasattr(size, "tensor_id"):
        return types.SizeReference(
            tensor_id=str(size.tensor_id), axis_id=str(size.axis_id), offset=int(size.offset)
        )
    if hasattr(size, "min"):
        return types.DataDependentSize(
            min=int(size.min), max=None if size.max is None else int(size.max)
        )
    raise TypeError(f"unknown axis size rule {size!r}")


def _steps(steps: Sequence[Any] | None) -> tuple[types.ProcessingStep, ...]:
    result = []
    for step in steps or ():
        kwargs = getattr(step, "kwargs", None)
        dumped = kwargs.model_dump(mode="json", exclude_unset=False) if kwargs is not None else {}
        result.append(types.ProcessingStep(id=str(step.id), kwargs=dumped))
    return tuple(result)


def _test_shape(tensor: Any, package_dir: Path) -> tuple[int, ...]:
    """The test tensor's shape from its .npy header, without reading the data."""
    test_tensor = getattr(tensor, "test_tensor", None)
    if test_tensor is None:
        return ()
    source = str(test_tensor.source)
    if not source.endswith(".npy") or source.startswith(("http://", "https://")):
        return ()
    path = package_dir / source
    try:
        return npy_shape(path)
    except (OSError, ValueError) as exc:
        logger.warning("cannot read the shape of test tensor %s: %s", path, exc)
        return ()


def npy_shape(path: Path) -> tuple[int, ...]:
    from numpy.lib import format as npy_format

    with path.open("rb") as f:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            shape, _, _ = npy_format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, _ = npy_format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    return tuple(int(s) for s in shape)
