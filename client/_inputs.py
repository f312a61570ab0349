"""Normalise what a caller passes to ``predict`` into named numpy arrays (and axis names)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelrunner.errors import InvalidTensorError
from modelrunner.types import ModelInfo

TensorLike = Any
"""A numpy array, anything ``numpy.asarray`` takes, or an ``xarray.DataArray`` (its dims become
the tensor's axis names)."""
Inputs = TensorLike | Mapping[str, TensorLike]


def normalise_inputs(
    inputs: Inputs, model: ModelInfo | None
) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, ...]]]:
    """Arrays by input id, and the axis names of those given as labelled arrays."""
    if isinstance(inputs, Mapping):
        named = dict(inputs)
    else:
        if model is not None and len(model.inputs) != 1:
            ids = [t.id for t in model.inputs]
            raise InvalidTensorError(
                f"model {model.name!r} has {len(ids)} inputs {ids}: pass a dict by input id",
                details={"expected": ids, "got": "one array"},
            )
        name = model.inputs[0].id if model is not None else ""
        named = {name: inputs}
    arrays: dict[str, np.ndarray] = {}
    dims: dict[str, tuple[str, ...]] = {}
    for name, value in named.items():
        arrays[name], axis_names = _as_array(name, value)
        if axis_names:
            dims[name] = axis_names
    return arrays, dims


def _as_array(name: str, value: TensorLike) -> tuple[np.ndarray, tuple[str, ...]]:
    axis_names: Sequence[str] = ()
    if hasattr(value, "dims") and hasattr(value, "values") and not isinstance(value, np.ndarray):
        axis_names = tuple(str(d) for d in value.dims)
        value = value.values
    try:
        array = np.asarray(value)
    except Exception as e:
        raise InvalidTensorError(
            f"input {name!r} is not an array: {e}", details={"tensor": name}
        ) from e
    if array.dtype.kind not in "biuf":
        raise InvalidTensorError(
            f"input {name!r} has data type {array.dtype}, expected a numeric or boolean array",
            details={"tensor": name, "got": str(array.dtype)},
        )
    return array, tuple(axis_names)
