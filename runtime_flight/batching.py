"""Several samples at once (e.g. frames of a stream): stacked along the model's batch axis when
that changes nothing, else one by one."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np
from bioimageio.core import PredictionPipeline
from bioimageio.core.common import MemberId
from bioimageio.spec.model import v0_5

from modelrunner.errors import ModelRunnerError

from .inference import Cancelled, Outputs, check_cancelled, model_descr, predict_mapped
from .input_mapping import DimNames, Inputs, map_inputs
from .options import PredictOptions

logger = logging.getLogger(__name__)
Mapped = dict[MemberId, np.ndarray]
"""A sample's input arrays as :func:`~.input_mapping.map_inputs` gives them."""


@overload
def predict_batch(
    pipeline: PredictionPipeline,
    samples: Sequence[Inputs],
    dim_names: DimNames | None = ...,
    options: PredictOptions | None = ...,
    *,
    return_errors: Literal[False] = ...,
    cancelled: Cancelled | None = ...,
) -> list[Outputs]: ...


@overload
def predict_batch(
    pipeline: PredictionPipeline,
    samples: Sequence[Inputs],
    dim_names: DimNames | None = ...,
    options: PredictOptions | None = ...,
    *,
    return_errors: Literal[True],
    cancelled: Cancelled | None = ...,
) -> list[Outputs | ModelRunnerError]: ...


def predict_batch(
    pipeline: PredictionPipeline,
    samples: Sequence[Inputs],
    dim_names: DimNames | None = None,
    options: PredictOptions | None = None,
    *,
    return_errors: bool = False,
    cancelled: Cancelled | None = None,
) -> list[Outputs] | list[Outputs | ModelRunnerError]:
    """Predict several samples (e.g. frames of a stream), in order.

    Consecutive samples of equal shapes and dtypes are stacked along the model's batch axis, at
    most ``options.max_batch_size`` at a time (0: no limit), when the model takes any batch size
    and no pre/postprocessing step computes statistics across the batch axis (then stacking
    would change the results). Otherwise, samples run one by one.

    Args:
        return_errors: put a failed sample's error in its place in the result and go on,
            instead of raising it.
        cancelled: polled between stacks and samples; True stops with CancelledError.
    """
    options = options or PredictOptions()
    descr = model_descr(pipeline)
    results: list[Outputs | ModelRunnerError | None] = [None] * len(samples)
    built: list[tuple[int, Mapped]] = []
    for i, inputs in enumerate(samples):
        try:
            built.append((i, map_inputs(descr, inputs, dim_names, nan_policy=options.nan_policy)))
        except ModelRunnerError as e:
            if not return_errors:
                raise
            results[i] = e

    def run_one(i: int, arrays: Mapped) -> None:
        check_cancelled(cancelled)
        try:
            results[i] = predict_mapped(pipeline, descr, arrays, options)
        except ModelRunnerError as e:
            if not return_errors:
                raise
            results[i] = e

    limit = options.max_batch_size or len(samples)
    groups = _groups(built, limit) if stackable(descr) else [[s] for s in built]
    for group in groups:
        if len(group) == 1:
            run_one(*group[0])
            continue
        check_cancelled(cancelled)
        try:
            stacked = predict_mapped(pipeline, descr, _stack(descr, group), options)
        except ModelRunnerError as e:
            logger.info("stacked batch of %d failed (%s); predicting one by one", len(group), e)
            for item in group:
                run_one(*item)
            continue
        for (i, _), outputs in zip(group, _split(descr, stacked, group), strict=True):
            results[i] = outputs
    return [r for r in results if r is not None]


def stackable(descr: v0_5.ModelDescr) -> bool:
    """Whether samples may be stacked along the batch axis without changing the results."""
    for t in descr.inputs:
        batch = [a for a in t.axes if isinstance(a, v0_5.BatchAxis)]
        if not batch or batch[0].size is not None:
            return False
    for out in descr.outputs:
        if not any(isinstance(a, v0_5.BatchAxis) for a in out.axes):
            return False
    steps: list[Any] = [p for t in descr.inputs for p in t.preprocessing]
    steps += [p for t in descr.outputs for p in t.postprocessing]
    for step in steps:
        kwargs = getattr(step, "kwargs", None)
        if kwargs is None or "axes" not in type(kwargs).model_fields:
            continue
        axes = kwargs.axes
        if axes is None or v0_5.AxisId("batch") in axes:
            return False
    return True


def _signature(arrays: Mapped) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    return tuple((str(m), a.shape, str(a.dtype)) for m, a in sorted(arrays.items()))


def _groups(built: list[tuple[int, Mapped]], limit: int) -> list[list[tuple[int, Mapped]]]:
    groups: list[list[tuple[int, Mapped]]] = []
    for item in built:
        if (
            groups
            and len(groups[-1]) < limit
            and _signature(groups[-1][0][1]) == _signature(item[1])
        ):
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _batch_index(axes: Sequence[Any]) -> int:
    return next(i for i, a in enumerate(axes) if isinstance(a, v0_5.BatchAxis))


def _stack(descr: v0_5.ModelDescr, group: list[tuple[int, Mapped]]) -> Mapped:
    return {
        t.id: np.concatenate([arrays[t.id] for _, arrays in group], axis=_batch_index(t.axes))
        for t in descr.inputs
        if t.id in group[0][1]
    }


def _split(
    descr: v0_5.ModelDescr, outputs: Outputs, group: list[tuple[int, Mapped]]
) -> list[Outputs]:
    first = next(t for t in descr.inputs if t.id in group[0][1])
    sizes = [arrays[first.id].shape[_batch_index(first.axes)] for _, arrays in group]
    parts = [Outputs.of({}, outputs.path) for _ in group]
    for out in descr.outputs:
        array = outputs.get(str(out.id))
        if array is None:
            continue
        axis = _batch_index(out.axes)
        start = 0
        for part, size in zip(parts, sizes, strict=True):
            index = [slice(None)] * array.ndim
            index[axis] = slice(start, start + size)
            part[str(out.id)] = np.ascontiguousarray(array[tuple(index)])
            start += size
    return parts
