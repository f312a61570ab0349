"""What bioimageio.core's blockwise prediction needs from a pipeline, shared by the assembled
(:mod:`.core_calls`), the streamed (:mod:`.streamed_tiling`) and the fast path's
(:mod:`.device_tiles`) tiled predictions."""

from __future__ import annotations

from typing import Any

from bioimageio.core import PredictionPipeline
from bioimageio.core.sample import LinearSampleAxisTransform
from bioimageio.spec.model import v0_5

from .size_fitting import axis_scales, implied_references

BlockTransform = dict[Any, dict[Any, LinearSampleAxisTransform | int]]
"""Output id -> axis id -> how the axis follows an input axis (or its fixed size)."""


def follow_implied_references(pipeline: PredictionPipeline, descr: v0_5.ModelDescr) -> None:
    """Tell bioimageio.core that fixed-size outputs which mirror a fixed-size input follow it.

    bioimageio.core places output blocks by the outputs' size references; an output axis with a
    plain size would make every block overwrite the whole output. Idempotent.
    """
    transform = block_transform(pipeline)
    if transform is None:
        return
    scales = axis_scales(descr)
    for (out, axis), (inp, in_axis) in implied_references(descr).items():
        axes = transform.get(out)
        if axes is not None and isinstance(axes.get(axis), int):
            axes[axis] = LinearSampleAxisTransform(
                axis=in_axis,
                scale=scales[inp][in_axis] / scales[out][axis],
                offset=0,
                member=inp,
            )


def block_transform(pipeline: PredictionPipeline) -> BlockTransform | None:
    """The transform ``PredictionPipeline.predict_sample_block`` places output blocks with.

    bioimageio.core keeps it private (``_block_transform``); reading the pipeline's own object,
    rather than recomputing it from the description, keeps the implied references above and the
    streamed band schedule in step with what ``predict_sample_block`` does.
    """
    transform: Any = getattr(pipeline, "_block_transform", None)
    return transform if isinstance(transform, dict) else None
