"""Inference with a warm bioimageio.core ``PredictionPipeline``, for images of any size.

Same semantics as bioimageio.core with the same weights. An input that is valid for the model as
given runs exactly as bioimageio.core's own model test runs it::

    pipeline.predict_sample_without_blocking(
        sample, skip_input_padding=True, skip_output_cropping=True
    )

(bioimageio.core's plain ``predict()`` instead pads inputs by the output halo, which breaks
fixed-size models: it feeds 576x576 to the 512x512 ``unet2d_nuclei_broad``.) Other sizes are
padded or tiled (:mod:`.size_fitting`). Tiling an image at least one block large is exactly
bioimageio.core's blockwise prediction. When padding is needed, preprocessing runs on the
original sample first (so sample statistics are those of the image, not of the padding), and
postprocessing on the cropped output.

:func:`start_prediction` is :func:`predict` for callers that send outputs on as they come (the
Flight server): a large tiled prediction then returns a :class:`.streamed_tiling.TileStream`
whose outputs arrive in bands of rows, so the whole output is never held (see
:mod:`.streamed_tiling`).

Nothing here locks: callers serialise calls per pipeline (:class:`.pipelines.WarmPipeline`).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Generator, Hashable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from bioimageio.core import PredictionPipeline, Sample, Tensor
from bioimageio.core.common import MemberId
from bioimageio.spec.model import v0_5

from modelrunner.errors import (
    CancelledError,
    FailedPreconditionError,
    InternalError,
    ModelRunnerError,
    ResourceExhaustedError,
)

from .batch_split import split_batch, stack_outputs
from .core_blocks import predict_blockwise
from .input_mapping import DimNames, Inputs, as_sample, input_shapes, map_inputs
from .options import PredictOptions
from .serving_paths import NOT_CHECKED, PathName, ServingPath
from .size_fitting import FitPlan, Shapes, plan_fit
from .streamed_tiling import Bands, Cancelled, Progress, TileStream, stream_tiles

if TYPE_CHECKING:
    from .fast_path import FastPath

logger = logging.getLogger(__name__)


class Outputs(dict[str, np.ndarray]):
    """Output arrays by id, and which path computed them (see :mod:`.fast_path`)."""

    path: PathName = "reference"

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray], path: PathName) -> Outputs:
        outputs = cls(arrays)
        outputs.path = path
        return outputs


def predict(
    pipeline: PredictionPipeline,
    inputs: Inputs,
    dim_names: DimNames | None = None,
    options: PredictOptions | None = None,
    *,
    progress: Progress | None = None,
    cancelled: Cancelled | None = None,
) -> Outputs:
    """Predict one sample.

    Args:
        pipeline: a loaded pipeline of a v0.5 model description.
        inputs: arrays by input id, or one array for a single-input model.
        dim_names: axis ids of each array (e.g. from the wire); None: arrays are in the model's
            axis order, possibly without singleton axes.
        options: pre/postprocessing, tiling and NaN handling.
        progress: called after each block of a tiled prediction.
        cancelled: polled before the prediction and after each block; when it returns True the
            prediction stops with CancelledError.

    Returns:
        C-contiguous arrays by output id, in each output's axis order.

    Raises:
        InvalidTensorError: an input does not fit the model (the message says how).
        ResourceExhaustedError: out of memory.
        CancelledError: ``cancelled`` said so.
        InternalError: the model failed.
    """
    options = options or PredictOptions()
    descr = model_descr(pipeline)
    arrays = map_inputs(descr, inputs, dim_names, nan_policy=options.nan_policy)
    check_cancelled(cancelled)
    if options.keep_shape or options.block_statistics is not None:
        return _predict_kept_shape(pipeline, descr, arrays, options, _polling(progress, cancelled))
    return predict_mapped(
        pipeline, descr, arrays, options, _polling(progress, cancelled), cancelled=cancelled
    )


def _predict_kept_shape(
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    arrays: Mapping[MemberId, np.ndarray],
    options: PredictOptions,
    progress: Progress | None,
) -> Outputs:
    from .kept_shape import predict_kept_shape

    dtypes = _memo(pipeline, descr).network_dtypes
    try:
        output = predict_kept_shape(pipeline, descr, arrays, options, dtypes, progress)
    except ModelRunnerError:
        raise
    except Exception as e:
        shapes = input_shapes(descr, arrays)
        fitted = options.blocksize is None and options.block_statistics is None
        if fitted and _plan(pipeline, descr, shapes, options).mode != "whole":
            # A shape outside the model's sizes that its network refuses (bioimageio.core's
            # halo padding of a fixed-size ONNX model fails in process too): fitted instead.
            logger.info("the network refused %s (%s): fitting it to the model", shapes, e)
            return predict_mapped(
                pipeline, descr, arrays, replace(options, keep_shape=False), progress
            )
        raise _translate(e, descr) from e
    return Outputs.of(output_arrays(descr, output), "reference")


def predict_mapped(
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    arrays: Mapping[MemberId, np.ndarray],
    options: PredictOptions,
    progress: Progress | None = None,
    *,
    cancelled: Cancelled | None = None,
) -> Outputs:
    """:func:`predict` of arrays that :func:`~.input_mapping.map_inputs` checked and mapped.
    A batch larger than the model's fixed batch size is predicted sample by sample
    (:mod:`.batch_split`), ``cancelled`` asked between samples."""
    parts = split_batch(descr, arrays)
    if parts is not None:
        return _predict_parts(pipeline, descr, parts, options, progress, cancelled)
    plan, sample = _planned(pipeline, descr, arrays, options)
    if not isinstance(sample, Sample):
        return sample  # the fast path's outputs
    return _predict_planned(pipeline, descr, sample, plan, options, progress)


def _predict_parts(
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    parts: list[dict[MemberId, np.ndarray]],
    options: PredictOptions,
    progress: Progress | None,
    cancelled: Cancelled | None,
) -> Outputs:
    """The one-sample parts of a split batch, predicted one by one, outputs stacked."""
    outputs = []
    for part in parts:
        check_cancelled(cancelled)
        outputs.append(predict_mapped(pipeline, descr, part, options, progress))
    return Outputs.of(stack_outputs(descr, outputs), outputs[0].path)


def start_prediction(
    pipeline: PredictionPipeline,
    inputs: Inputs,
    dim_names: DimNames | None = None,
    options: PredictOptions | None = None,
    *,
    progress: Progress | None = None,
    cancelled: Cancelled | None = None,
) -> Outputs | TileStream:
    """:func:`predict`, except that a large tiled prediction may come back as a
    :class:`~.streamed_tiling.TileStream`: its first block predicted, its outputs' rows to be
    read band by band (see :mod:`.streamed_tiling`), so that no whole output is ever held.

    The caller must keep the pipeline to itself until the stream is exhausted or closed. Errors
    while reading the bands are translated like those of :func:`predict`.
    """
    options = options or PredictOptions()
    descr = model_descr(pipeline)
    arrays = map_inputs(descr, inputs, dim_names, nan_policy=options.nan_policy)
    check_cancelled(cancelled)
    if options.keep_shape or options.block_statistics is not None:
        return _predict_kept_shape(pipeline, descr, arrays, options, _polling(progress, cancelled))
    parts = split_batch(descr, arrays)
    if parts is not None:
        # sample by sample, whole outputs: a split batch is not streamed band by band
        return _predict_parts(
            pipeline, descr, parts, options, _polling(progress, cancelled), cancelled
        )
    plan, sample = _planned(pipeline, descr, arrays, options)
    del arrays
    if not isinstance(sample, Sample):
        return sample  # the fast path's outputs
    report = _polling(progress, cancelled)
    try:
        stream = stream_tiles(
            pipeline,
            descr,
            sample,
            plan,
            options,
            report,
            network_dtypes=_memo(pipeline, descr).network_dtypes,
            cancelled=cancelled,
        )
    except ModelRunnerError:
        raise
    except Exception as e:
        raise _translate(e, descr) from e
    if stream is None:
        return _predict_planned(pipeline, descr, sample, plan, options, report)
    stream.bands = _translated(stream.bands, descr)
    return stream


def _planned(
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    arrays: Mapping[MemberId, np.ndarray],
    options: PredictOptions,
) -> tuple[FitPlan, Sample | Outputs]:
    """The plan for the mapped inputs' shapes, and the sample to predict; or already the
    outputs, when the fast path took the call (no xarray object is made then)."""
    plan = _plan(pipeline, descr, input_shapes(descr, arrays), options)
    fast = _fast_outputs(pipeline, descr, arrays, plan, options)
    if fast is not None:
        return plan, fast
    return plan, as_sample(descr, arrays)


def _translated(
    bands: Generator[Bands, None, None], descr: v0_5.ModelDescr
) -> Generator[Bands, None, None]:
    try:
        yield from bands
    except ModelRunnerError:
        raise
    except Exception as e:
        raise _translate(e, descr) from e
    finally:
        bands.close()


class _PipelineMemo:
    """What every call on one pipeline would otherwise work out again: its fast path once
    checked (see :mod:`.fast_path`), the dtypes its network takes, and the plans of the input
    shapes it saw last (a microscope sends the same shape over and over)."""

    PLANS = 16

    def __init__(self, pipeline: PredictionPipeline, descr: v0_5.ModelDescr) -> None:
        self.fast: FastPath | None = None
        self.serving = NOT_CHECKED
        self.serving_weights = ""
        self.network_dtypes = _network_dtypes(descr)
        self.itemsize = {m: np.dtype(d).itemsize for m, d in self.network_dtypes.items()}
        self.plans: OrderedDict[Hashable, FitPlan] = OrderedDict()
        self.lock = threading.Lock()


_MEMOS: weakref.WeakKeyDictionary[PredictionPipeline, _PipelineMemo] = weakref.WeakKeyDictionary()
_MEMOS_LOCK = threading.Lock()


def _memo(pipeline: PredictionPipeline, descr: v0_5.ModelDescr) -> _PipelineMemo:
    with _MEMOS_LOCK:
        memo = _MEMOS.get(pipeline)
        if memo is None:
            memo = _MEMOS[pipeline] = _PipelineMemo(pipeline, descr)
        return memo


def prepare_fast_path(
    pipeline: PredictionPipeline, weight_format: str, device: str, *, enabled: bool = True
) -> ServingPath:
    """Build the pipeline's fast path and check it against bioimageio.core on the package's
    test inputs (:func:`.fast_path.choose_serving_path`); calls take it from then on where it
    applies. Call once, after loading."""
    from .fast_path import choose_serving_path

    descr = model_descr(pipeline)
    fast, serving = choose_serving_path(pipeline, descr, weight_format, device, enabled=enabled)
    memo = _memo(pipeline, descr)
    memo.fast, memo.serving, memo.serving_weights = fast, serving, weight_format
    return serving


def release_fast_path(pipeline: PredictionPipeline) -> None:
    """Drop the pipeline's fast path (before unloading it: its buffers go with it)."""
    memo = _memo(pipeline, model_descr(pipeline))
    memo.fast = None
    memo.serving = NOT_CHECKED


def fast_path(pipeline: PredictionPipeline) -> FastPath | None:
    """The pipeline's checked fast path, if it has one (see :func:`prepare_fast_path`)."""
    return _memo(pipeline, model_descr(pipeline)).fast


def serving_path(pipeline: PredictionPipeline) -> ServingPath:
    """Which path serves the pipeline's calls, and why."""
    return _memo(pipeline, model_descr(pipeline)).serving


def _fast_outputs(
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    arrays: Mapping[MemberId, np.ndarray],
    plan: FitPlan,
    options: PredictOptions,
) -> Outputs | None:
    """The outputs through the fast path, or None when this call needs bioimageio.core's
    pipeline: no checked fast path, the reference asked for, processing skipped, or an input
    that must be padded or tiled."""
    memo = _memo(pipeline, descr)
    fast = memo.fast
    by_name = {str(m): a for m, a in arrays.items()}
    why_not = (
        "the input must be padded or tiled"
        if plan.mode != "whole"
        else "processing is skipped"
        if options.skip_preprocessing or options.skip_postprocessing
        else f"bioimageio.core serves this model ({memo.serving.reason})"
        if fast is None
        else "an input is missing"
        if not fast.accepts(by_name)
        else ""
    )
    if options.reference_path or (why_not and not options.precision):
        return None
    failed = fast.precision_failures.get(options.precision) if fast is not None else None
    if failed is not None:
        raise FailedPreconditionError(
            f"{options.precision} precision fails on this model: {failed}",
            details={"precision": options.precision, "model": descr.name},
        )
    if why_not or (fast is not None and options.precision not in ("", *fast.precisions)):
        raise FailedPreconditionError(
            f"{options.precision} precision runs on the fast path with PyTorch or TorchScript "
            + "weights only, and this call cannot take it: "
            + (why_not or f"the {memo.serving_weights} network has no reduced precision"),
            details={"precision": options.precision, "model": descr.name},
        )
    assert fast is not None
    if options.precision:
        try:
            fast.measure_precision(options.precision)
        except Exception as e:
            raise FailedPreconditionError(
                f"{options.precision} precision fails on this model: {type(e).__name__}: {e}",
                details={"precision": options.precision, "model": descr.name},
            ) from e
    try:
        return Outputs.of(
            fast.predict(
                by_name,
                nan_possible=options.nan_policy != "reject",
                precision=options.precision or None,
            ),
            "fast",
        )
    except Exception as e:
        raise _translate(e, descr) from e


def check_cancelled(cancelled: Cancelled | None) -> None:
    if cancelled is not None and cancelled():
        raise CancelledError("the prediction was cancelled")


def _polling(progress: Progress | None, cancelled: Cancelled | None) -> Progress | None:
    """``progress``, checking ``cancelled`` first (called after each block)."""
    if cancelled is None:
        return progress

    def report(done: int, total: int) -> None:
        check_cancelled(cancelled)
        if progress is not None:
            progress(done, total)

    return report


def model_descr(pipeline: PredictionPipeline) -> v0_5.ModelDescr:
    descr = pipeline.model_description
    if not isinstance(descr, v0_5.ModelDescr):
        raise FailedPreconditionError(
            f"model description format {descr.format_version} is not supported: load it with "
            + "format_version='latest' to convert it to 0.5",
        )
    return descr


def network_dtype(t: v0_5.InputTensorDescr) -> str:
    """The dtype the network takes: that of the last ``ensure_dtype`` preprocessing step."""
    for step in reversed(t.preprocessing):
        if isinstance(step, v0_5.EnsureDtypeDescr):
            return str(step.kwargs.dtype)
    data = t.data if not isinstance(t.data, Sequence) else t.data[0]
    return str(data.type)


def _network_dtypes(descr: v0_5.ModelDescr) -> dict[MemberId, str]:
    return {t.id: network_dtype(t) for t in descr.inputs}


def _plan(
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    shapes: Shapes,
    options: PredictOptions,
) -> FitPlan:
    memo = _memo(pipeline, descr)
    key = (
        tuple((m, tuple(sizes.items())) for m, sizes in shapes.items()),
        options.blocksize,
        options.max_tile_input_bytes,
    )
    with memo.lock:
        plan = memo.plans.get(key)
        if plan is not None:
            memo.plans.move_to_end(key)
            return plan
    plan = plan_fit(
        descr,
        shapes,
        blocksize=options.blocksize,
        max_tile_input_bytes=options.max_tile_input_bytes,
        itemsize=memo.itemsize,
    )
    logger.debug("predicting %s as %s", dict(shapes), plan)
    with memo.lock:
        memo.plans[key] = plan
        while len(memo.plans) > memo.PLANS:
            memo.plans.popitem(last=False)
    return plan


def _predict_planned(
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    sample: Sample,
    plan: FitPlan,
    options: PredictOptions,
    progress: Progress | None,
) -> Outputs:
    fast = _fast_around_blocks(pipeline, descr, sample, plan, options)
    if fast is not None:
        try:
            return _predict_fast_around_blocks(
                fast, pipeline, descr, sample, plan, options, progress
            )
        except ModelRunnerError:
            raise
        except Exception as e:
            raise _translate(e, descr) from e
    if options.skip_preprocessing:
        dtypes = _memo(pipeline, descr).network_dtypes
        sample.members = {
            m: t.astype(dtypes[m]) if str(t.data.dtype) != dtypes[m] else t  # type: ignore[arg-type]
            for m, t in sample.members.items()
        }
    try:
        output = _run(pipeline, descr, sample, plan, options, progress)
    except ModelRunnerError:
        raise
    except Exception as e:
        raise _translate(e, descr) from e
    return Outputs.of(output_arrays(descr, output), "reference")


def _fast_around_blocks(
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    sample: Sample,
    plan: FitPlan,
    options: PredictOptions,
) -> FastPath | None:
    """The fast path's processing for a padded or tiled prediction, when it applies: all of the
    processing then runs on the whole sample as torch operations, and in between the padded
    sample goes through bioimageio.core's network call, or the blocks through the fast path's
    network in stacks (:mod:`.device_tiles`). bioimageio.core applies elementwise
    preprocessing to each padded block instead; the two agree for every padding but a constant
    one (a step changes the pad value), which stays with bioimageio.core when tiling."""
    if (
        plan.mode == "whole"
        or options.reference_path
        or options.skip_preprocessing
        or options.skip_postprocessing
    ):
        return None
    fast = _memo(pipeline, descr).fast
    if fast is None or not fast.accepts(str(m) for m in sample.members):
        return None
    constant = any(isinstance(m, v0_5.ConstantPadding) for m in pipeline.pad_mode.values())
    if plan.mode == "tiled" and not plan.pad and constant:
        return None
    return fast


def _predict_fast_around_blocks(
    fast: FastPath,
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    sample: Sample,
    plan: FitPlan,
    options: PredictOptions,
    progress: Progress | None,
) -> Outputs:
    arrays = {str(m): t.data.to_numpy() for m, t in sample.members.items()}
    prepared, stats = fast.preprocess(arrays, nan_possible=options.nan_policy != "reject")
    del arrays
    preprocessed = as_sample(descr, {MemberId(k): v for k, v in prepared.items()})
    if plan.mode == "tiled" and not plan.pad:
        from .device_tiles import predict_blocks

        raw = predict_blocks(fast, pipeline, descr, preprocessed, plan, progress)
    else:
        network_only = replace(options, skip_preprocessing=True, skip_postprocessing=True)
        raw = _run(pipeline, descr, preprocessed, plan, network_only, progress)
    del prepared
    return Outputs.of(fast.postprocess(output_arrays(descr, raw), stats), "fast")


def _run(
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    sample: Sample,
    plan: FitPlan,
    options: PredictOptions,
    progress: Progress | None,
) -> Sample:
    if plan.mode == "whole":
        return pipeline.predict_sample_without_blocking(
            sample,
            skip_preprocessing=options.skip_preprocessing,
            skip_postprocessing=options.skip_postprocessing,
            skip_input_padding=True,
            skip_output_cropping=True,
        )
    if plan.mode == "tiled" and not plan.pad:
        # exactly bioimageio.core's blockwise prediction, processing included
        return _predict_tiles(
            pipeline,
            descr,
            sample,
            plan,
            progress,
            skip_preprocessing=options.skip_preprocessing,
            skip_postprocessing=options.skip_postprocessing,
        )
    # Preprocessing runs before padding, so sample statistics are those of the image; pad
    # values are thus in the network's input space (bioimageio.core's blockwise path applies
    # element-wise steps after padding: the same, except for constant padding).
    if not options.skip_preprocessing:
        pipeline.apply_preprocessing(sample)
    padded = Sample(
        members={
            m: t.pad(plan.pad[m], mode=pipeline.pad_mode.get(m, "symmetric"))
            if m in plan.pad
            else t
            for m, t in sample.members.items()
        },
        stat=sample.stat,
        id=sample.id,
    )
    if plan.mode == "padded":
        raw = pipeline.predict_sample_without_blocking(
            padded,
            skip_preprocessing=True,
            skip_postprocessing=True,
            skip_input_padding=True,
            skip_output_cropping=True,
        )
    else:
        raw = _predict_tiles(
            pipeline,
            descr,
            padded,
            plan,
            progress,
            skip_preprocessing=True,
            skip_postprocessing=True,
        )
    output = Sample(
        members={m: _crop(t, plan.output_sizes.get(m, {})) for m, t in raw.members.items()},
        stat=sample.stat,
        id=sample.id,
    )
    if not options.skip_postprocessing:
        pipeline.apply_postprocessing(output)
    return output


def _predict_tiles(
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    sample: Sample,
    plan: FitPlan,
    progress: Progress | None,
    *,
    skip_preprocessing: bool,
    skip_postprocessing: bool,
) -> Sample:
    return predict_blockwise(
        pipeline,
        descr,
        sample,
        progress,
        ns=plan.ns,
        batch_size=plan.block_batch,
        skip_preprocessing=skip_preprocessing,
        skip_postprocessing=skip_postprocessing,
    )


def _crop(tensor: Tensor, sizes: Mapping[v0_5.AxisId, int]) -> Tensor:
    slices = {a: slice(0, s) for a, s in sizes.items() if a in tensor.sizes and tensor.sizes[a] > s}
    return tensor[slices] if slices else tensor


def output_arrays(descr: v0_5.ModelDescr, sample: Sample) -> dict[str, np.ndarray]:
    """A predicted sample's outputs as C-contiguous arrays in each output's axis order."""
    arrays: dict[str, np.ndarray] = {}
    for out in descr.outputs:
        tensor = sample.members.get(out.id)
        if tensor is None:
            continue
        data = tensor.data
        order = [a.id for a in out.axes]
        if list(data.dims) != order and set(data.dims) == set(order):
            data = data.transpose(*order)
        arrays[str(out.id)] = np.ascontiguousarray(data.to_numpy())
    return arrays


def _translate(error: Exception, descr: v0_5.ModelDescr) -> ModelRunnerError:
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, MemoryError) or "out of memory" in str(error).lower():
        return ResourceExhaustedError(
            f"out of memory while predicting with '{descr.name}': {text}",
            details={"model": descr.name},
        )
    return InternalError(
        f"prediction with '{descr.name}' failed: {text}", details={"model": descr.name}
    )
