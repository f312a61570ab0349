"""A sample whose batch is larger than the model's fixed batch size (bioimage.io batch axes are
either free or fixed at 1) is predicted sample by sample and the outputs stacked: the model
never sees a batch it was not made for (fed one anyway, a fixed-batch network mixes the samples
or fails), and the result equals predicting each sample on its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from bioimageio.core.common import MemberId
from bioimageio.spec.model import v0_5

from .input_mapping import tensor_error

Mapped = Mapping[MemberId, np.ndarray]


def _batch_axis(axes: Sequence[object]) -> tuple[int, v0_5.BatchAxis] | None:
    for i, a in enumerate(axes):
        if isinstance(a, v0_5.BatchAxis):
            return i, a
    return None


def split_batch(descr: v0_5.ModelDescr, arrays: Mapped) -> list[dict[MemberId, np.ndarray]] | None:
    """One-sample views of ``arrays`` when an input's batch exceeds its fixed size, else None.

    Raises:
        InvalidTensorError: the inputs' batch sizes differ, or an output has no batch axis to
            stack the samples' outputs on.
    """
    batches: dict[MemberId, tuple[int, int]] = {}
    too_big = False
    for t in descr.inputs:
        found = _batch_axis(t.axes) if t.id in arrays else None
        if found is None:
            continue
        index, axis = found
        size = arrays[t.id].shape[index]
        batches[t.id] = (index, size)
        too_big |= axis.size is not None and size > axis.size
    if not too_big:
        return None
    sizes = {size for _, size in batches.values()}
    if len(sizes) > 1:
        listed = ", ".join(f"'{m}': {size}" for m, (_, size) in batches.items())
        raise tensor_error(
            str(next(iter(batches))),
            "batch",
            "the same batch size for every input",
            listed,
            f"the inputs' batch sizes differ ({listed}); the model takes one sample at a time",
        )
    for out in descr.outputs:
        if _batch_axis(out.axes) is None:
            tensor, (_, size) = next(iter(batches.items()))
            raise tensor_error(
                str(tensor),
                "batch",
                1,
                size,
                f"input '{tensor}' has a batch of {size} on axis 'batch', but the model takes "
                + f"one sample at a time and its output '{out.id}' has no batch axis to stack "
                + "the results on: send the samples one by one",
            )
    (count,) = sizes
    parts: list[dict[MemberId, np.ndarray]] = []
    for i in range(count):
        part: dict[MemberId, np.ndarray] = {}
        for m, array in arrays.items():
            if m in batches:
                where: list[slice] = [slice(None)] * array.ndim
                where[batches[m][0]] = slice(i, i + 1)
                part[m] = array[tuple(where)]
            else:
                part[m] = array
        parts.append(part)
    return parts


def stack_outputs(
    descr: v0_5.ModelDescr, parts: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The samples' outputs concatenated along each output's batch axis."""
    stacked: dict[str, np.ndarray] = {}
    for out in descr.outputs:
        name = str(out.id)
        if name not in parts[0]:
            continue
        found = _batch_axis(out.axes)
        assert found is not None, "split_batch refuses outputs without a batch axis"
        stacked[name] = np.concatenate([p[name] for p in parts], axis=found[0])
    return stacked
