"""Tiled prediction whose network runs on batches of blocks through the fast path.

bioimageio.core's blockwise prediction calls its model adapter once per block: on a GPU every
block then makes its own trip from numpy to the device and back, and the device idles in
between. Here the blocks are bioimageio.core's own (``Sample.split_into_blocks`` with the
pipeline's block shape, halo and padding, placed back by the pipeline's block transform, as
``predict_sample_block`` does), but the network sees several blocks at once, stacked along the
batch axis where the model's batch axis is free, through the fast path
(:meth:`.fast_path.FastPath.run_network`). The processing is done before and after, on the whole
sample (:func:`.inference._predict_fast_around_blocks`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from bioimageio.core import PredictionPipeline, Sample, Tensor
from bioimageio.core.common import Halo
from bioimageio.core.digest_spec import get_input_halo
from bioimageio.spec.model import v0_5

from .core_blocks import block_transform, follow_implied_references
from .fast_path import FastPath
from .size_fitting import FitPlan

BLOCKS_PER_CALL = 8
"""Blocks stacked into one network call when the batch axis is free."""
BYTES_PER_CALL = 256 * 1024**2
"""...and at most this many input bytes per call."""


def predict_blocks(
    fast: FastPath,
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    sample: Sample,
    plan: FitPlan,
    progress: Callable[[int, int], None] | None = None,
) -> Sample:
    """The network's outputs for a preprocessed ``sample``, predicted in ``plan``'s blocks."""
    follow_implied_references(pipeline, descr)
    transform = block_transform(pipeline)
    if transform is None:
        raise RuntimeError("the pipeline has no block transform")
    output_halo = {
        t.id: {a.id: Halo(a.halo, a.halo) for a in t.axes if isinstance(a, v0_5.WithHalo)}
        for t in descr.outputs
    }
    total, blocks = sample.split_into_blocks(
        plan.block_shape,
        halo=get_input_halo(descr, output_halo),
        pad_mode=pipeline.pad_mode,
    )
    batch_axes = _batch_axes(descr)
    predicted: Sample | None = None
    done = 0
    for group in _groups(blocks, batch_axes is not None):
        outputs = _predict_group(fast, descr, group, batch_axes)
        for block, block_outputs in zip(group, outputs, strict=True):
            meta = block.get_transformed_meta(transform)
            out = meta.with_data(block_outputs, stat=block.stat)
            if predicted is None:
                predicted = Sample.from_blocks([out], fill_value=float("nan"))
            else:
                predicted.set_block(out)
            done += 1
            if progress is not None:
                progress(done, total)
    if predicted is None:
        raise RuntimeError("the sample split into no blocks")
    return predicted


def _batch_axes(descr: v0_5.ModelDescr) -> dict[str, int] | None:
    """The batch axis's index in each input and output, when every tensor has a batch axis of
    any size (the processing, which could mix batch items, has run on the whole sample)."""
    axes: dict[str, int] = {}
    tensors: list[Any] = [*descr.inputs, *descr.outputs]
    for t in tensors:
        batch = [(i, a) for i, a in enumerate(t.axes) if isinstance(a, v0_5.BatchAxis)]
        if not batch or batch[0][1].size is not None:
            return None
        axes[str(t.id)] = batch[0][0]
    return axes


def _groups(blocks: Iterable[Any], stack: bool) -> Iterable[list[Any]]:
    group: list[Any] = []
    size = 0
    for block in blocks:
        nbytes = sum(t.data.nbytes for t in block.members.values())
        if group and (not stack or len(group) >= BLOCKS_PER_CALL or size + nbytes > BYTES_PER_CALL):
            yield group
            group, size = [], 0
        group.append(block)
        size += nbytes
    if group:
        yield group


def _predict_group(
    fast: FastPath,
    descr: v0_5.ModelDescr,
    group: list[Any],
    batch_axes: dict[str, int] | None,
) -> list[dict[Any, Tensor]]:
    """Each block's outputs, as bioimageio.core Tensors in each output's axis order."""
    inputs = {
        str(t.id): _stack([b.members[t.id] for b in group], t, batch_axes) for t in descr.inputs
    }
    outputs = fast.run_network(inputs)
    parts: list[dict[Any, Tensor]] = [{} for _ in group]
    for t in descr.outputs:
        array = outputs.get(str(t.id))
        if array is None:
            continue
        dims = [a.id for a in t.axes]
        pieces = (
            np.split(array, len(group), axis=batch_axes[str(t.id)])
            if batch_axes is not None
            else [array]
        )
        for part, piece in zip(parts, pieces, strict=True):
            part[t.id] = Tensor(piece, dims=dims)
    return parts


def _stack(
    tensors: list[Tensor], t: v0_5.InputTensorDescr, batch_axes: dict[str, int] | None
) -> np.ndarray:
    order = [a.id for a in t.axes]
    arrays = [x.data.transpose(*order).to_numpy() for x in tensors]
    if batch_axes is None:
        (array,) = arrays
        return np.ascontiguousarray(array)
    return np.concatenate(arrays, axis=batch_axes[str(t.id)])
