"""What bioimageio.core's blockwise prediction needs from a pipeline, shared by the assembled
(:mod:`.inference`) and the streamed (:mod:`.streamed_tiling`) tiled predictions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bioimageio.core import PredictionPipeline, Sample
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


def predict_blockwise(
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    sample: Sample,
    progress: Callable[[int, int], None] | None,
    *,
    ns: Any,
    batch_size: int | None = None,
    skip_preprocessing: bool,
    skip_postprocessing: bool,
) -> Sample:
    """bioimageio.core's own blockwise prediction of ``sample``, ``progress(done, total)`` after
    each block (where a cancelled call stops)."""
    follow_implied_references(pipeline, descr)
    total, intermediates = pipeline.predict_sample_with_blocking_yield_intermediates(
        sample,
        skip_preprocessing=skip_preprocessing,
        skip_postprocessing=skip_postprocessing,
        ns=ns,
        batch_size=batch_size,
    )
    last = None
    for done, intermediate in enumerate(intermediates, start=1):
        last = intermediate
        if progress is not None:
            progress(done, total)
    assert last is not None, "bioimageio.core predicted no blocks"
    return last.sample


def block_transform(pipeline: PredictionPipeline) -> BlockTransform | None:
    """The transform ``PredictionPipeline.predict_sample_block`` places output blocks with.

    bioimageio.core keeps it private (``_block_transform``); reading the pipeline's own object,
    rather than recomputing it from the description, keeps the implied references above and the
    streamed band schedule in step with what ``predict_sample_block`` does.
    """
    transform: Any = getattr(pipeline, "_block_transform", None)
    return transform if isinstance(transform, dict) else None
