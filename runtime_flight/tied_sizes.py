"""The sample as a whole, checked before anything runs: sizes a model description ties across
tensors. The inputs' batch axes hold one batch size; a sample that goes to the network as sent
(``keep_shape``, ``input_padding="halo"``) has every size the description derives from another
input's axis (a fitted sample is padded to them, :mod:`.size_fitting`). A refusal is
INVALID_ARGUMENT naming both tensors and axes: without it, the network fails in its own words
(a multi-input network concatenating tensors of two sizes)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from bioimageio.core.common import MemberId
from bioimageio.spec.model import v0_5

from .input_mapping import input_shapes, tensor_error


def check_tied_sizes(
    descr: v0_5.ModelDescr, arrays: Mapping[MemberId, np.ndarray], *, as_sent: bool
) -> None:
    """InvalidTensorError when the inputs' sizes break a tie between tensors: two batch sizes,
    or (``as_sent``: the sample is not fitted to the model) an axis whose size the description
    derives from another input's axis with another size."""
    shapes = input_shapes(descr, arrays)
    batches = [
        (t.id, a.id, shapes[t.id][a.id])
        for t in descr.inputs
        if t.id in shapes
        for a in t.axes
        if isinstance(a, v0_5.BatchAxis)
    ]
    for tensor, axis, size in batches[1:]:
        first, first_axis, first_size = batches[0]
        if size != first_size:
            raise tensor_error(
                str(tensor),
                str(axis),
                first_size,
                size,
                f"input '{tensor}' axis '{axis}' has size {size} and input '{first}' axis "
                f"'{first_axis}' has size {first_size}: every input of a sample has the same "
                "batch size",
            )
    if not as_sent:
        return
    all_axes = {t.id: {a.id: a for a in t.axes} for t in descr.inputs}
    for t in descr.inputs:
        for a in t.axes:
            ref = a.size
            if t.id not in shapes or not isinstance(ref, v0_5.SizeReference):
                continue
            ref_size = shapes.get(ref.tensor_id, {}).get(ref.axis_id)
            if ref_size is None:
                continue
            ref_axis = all_axes[ref.tensor_id][ref.axis_id]
            expected = int(ref_size * ref_axis.scale / a.scale + ref.offset)
            size = shapes[t.id][a.id]
            if size != expected:
                raise tensor_error(
                    str(t.id),
                    str(a.id),
                    expected,
                    size,
                    f"input '{t.id}' axis '{a.id}' has size {size}, but its size follows input "
                    f"'{ref.tensor_id}' axis '{ref.axis_id}' (size {ref_size}): expected "
                    f"{expected}",
                )
