"""Several samples at once (e.g. frames of a stream): stacked along the model's batch axis when
that changes nothing, else one by one."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal, overload

import numpy as np
from bioimageio.spec.model import v0_5

from modelrunner.errors import ModelRunnerError

from .batch_split import Mapped
from .inference import mapped_inputs, predict_mapped
from .prediction import Predicted, Prediction, check_cancelled

logger = logging.getLogger(__name__)
Frame = Mapping[str, np.ndarray]
"""A sample's arrays by input id ("": the only input); their dim names are the request's."""


@overload
def predict_batch(
    call: Prediction, samples: Sequence[Frame], *, return_errors: Literal[False] = ...
) -> list[Predicted]: ...


@overload
def predict_batch(
    call: Prediction, samples: Sequence[Frame], *, return_errors: Literal[True]
) -> list[Predicted | ModelRunnerError]: ...


def predict_batch(
    call: Prediction, samples: Sequence[Frame], *, return_errors: bool = False
) -> list[Predicted] | list[Predicted | ModelRunnerError]:
    """Predict several samples (e.g. frames of a stream) with the call's request, in order.

    Consecutive samples of equal shapes and dtypes are stacked along the model's batch axis, at
    most ``request.max_batch_size`` at a time (0: no limit), when the model takes any batch size
    and no pre/postprocessing step computes statistics across the batch axis (then stacking
    would change the results). Otherwise, samples run one by one. ``call.cancelled`` is asked
    between stacks and samples.

    Args:
        return_errors: put a failed sample's error in its place in the result and go on,
            instead of raising it.
    """
    descr = call.descr
    results: list[Predicted | ModelRunnerError | None] = [None] * len(samples)
    built: list[tuple[int, Mapped]] = []
    for i, inputs in enumerate(samples):
        try:
            built.append(
                (i, mapped_inputs(replace(call, request=call.request.with_inputs(inputs))))
            )
        except ModelRunnerError as e:
            if not return_errors:
                raise
            results[i] = e

    def run_one(i: int, arrays: Mapped) -> None:
        check_cancelled(call.cancelled)
        try:
            results[i] = predict_mapped(call, arrays)
        except ModelRunnerError as e:
            if not return_errors:
                raise
            results[i] = e

    limit = call.request.max_batch_size or len(samples)
    groups = _groups(built, limit) if stackable(descr) else [[s] for s in built]
    for group in groups:
        if len(group) == 1:
            run_one(*group[0])
            continue
        check_cancelled(call.cancelled)
        try:
            stacked = predict_mapped(call, _stack(descr, group))
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
    descr: v0_5.ModelDescr, outputs: Predicted, group: list[tuple[int, Mapped]]
) -> list[Predicted]:
    first = next(t for t in descr.inputs if t.id in group[0][1])
    sizes = [arrays[first.id].shape[_batch_index(first.axes)] for _, arrays in group]
    parts = [Predicted.of({}, outputs.path) for _ in group]
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
