"""How one sample of any size is predicted with a warm pipeline's parts (:class:`Prediction`),
with bioimageio.core's semantics and the same weights.

An input that is valid for the model as given runs exactly as bioimageio.core's own model test
runs it (``predict_sample_without_blocking`` without halo padding, :mod:`.core_calls`). Other
sizes are padded or tiled (:mod:`.size_fitting`); tiling an image at least one block large is
exactly bioimageio.core's blockwise prediction. When padding is needed, preprocessing runs on
the original sample first (so sample statistics are those of the image, not of the padding),
and postprocessing on the cropped output. A sample kept as sent (``keep_shape``,
``input_padding="halo"``) goes to bioimageio.core's call as it is (:mod:`.kept_shape`). Where the
checked fast path applies (:mod:`.fast_path`), it computes the outputs.

:func:`start` is :func:`predict` for callers that send outputs on as they come (the Flight
edge): a large tiled prediction then returns a :class:`.streamed_tiling.TileStream` whose
outputs arrive in bands of rows, so the whole output is never held.

These are functions over a :class:`Prediction`, which :class:`.warm_pipeline.WarmPipeline`
builds per call: nothing here locks, keeps state or knows the warm pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from bioimageio.core import Sample, Tensor
from bioimageio.core.common import MemberId
from bioimageio.spec.model import v0_5

from modelrunner.errors import FailedPreconditionError, ModelRunnerError

from .batch_split import split_batch, stack_outputs
from .core_calls import core_predict, output_arrays
from .failures import failure
from .input_mapping import AxisRecipe, as_sample, map_inputs, name_the_only_input
from .prediction import Mapped, Predicted, Prediction, check_cancelled, polling
from .repeated_inputs import Prepared, signature
from .size_fitting import FitPlan
from .streamed_tiling import Bands, TileStream, stream_tiles
from .tied_sizes import check_tied_sizes

if TYPE_CHECKING:
    from .fast_path import FastPath

logger = logging.getLogger(__name__)


def mapped_inputs(call: Prediction) -> dict[MemberId, np.ndarray]:
    """The request's arrays checked one by one and as a whole, in the model's axis order."""
    return prepared_inputs(call)[0]


def prepared_inputs(call: Prediction) -> tuple[dict[MemberId, np.ndarray], FitPlan | None]:
    """:func:`mapped_inputs`, and the plan of a sample that needs no splitting into single
    samples (None otherwise). Inputs of a signature the pipeline saw lately are mapped as it
    mapped them then (:mod:`.repeated_inputs`): only their values are checked again."""
    request = call.request
    inputs, dims = name_the_only_input(call.descr, request.inputs, request.dim_names)
    key = signature(
        inputs,
        dims,
        request.nan_policy,
        request.as_sent,
        request.blocksize,
        call.limits.max_tile_input_bytes,
    )
    kept = call.prepared.get(key) if key is not None else None
    if kept is not None:
        return {r.member: r.apply(name, inputs[name]) for name, r in kept.recipes.items()}, (
            kept.plan
        )
    recipes: dict[str, AxisRecipe] = {}
    arrays = map_inputs(call.descr, inputs, dims, nan_policy=request.nan_policy, recipes=recipes)
    check_tied_sizes(call.descr, arrays, as_sent=request.as_sent)
    if request.as_sent or split_batch(call.descr, arrays) is not None:
        return arrays, None
    plan = call.plan(arrays)
    if key is not None:
        call.prepared.put(key, Prepared(recipes, plan))
    return arrays, plan


def predict(call: Prediction) -> Predicted:
    """Predict the request's sample: C-contiguous arrays by output id, in each output's axis
    order.

    Raises:
        InvalidTensorError: an input does not fit the model (the message says how).
        ResourceExhaustedError: out of memory.
        CancelledError: ``cancelled`` said so.
        InternalError: the model failed (the message names the model, the input shapes and
            the framework's reason).
    """
    arrays, plan = prepared_inputs(call)
    check_cancelled(call.cancelled)
    if call.request.as_sent:
        return _predict_as_sent(call, arrays)
    if plan is None:
        return predict_mapped(call, arrays)
    return _predict_one(call, arrays, plan)


def start(call: Prediction) -> Predicted | TileStream:
    """:func:`predict`, except that a large tiled prediction may come back as a
    :class:`~.streamed_tiling.TileStream`: its first block predicted, its outputs' rows to be
    read band by band (see :mod:`.streamed_tiling`), so that no whole output is ever held.

    The caller must keep the pipeline to itself until the stream is exhausted or closed. Errors
    while reading the bands are translated like those of :func:`predict`.
    """
    arrays, plan = prepared_inputs(call)
    check_cancelled(call.cancelled)
    if call.request.as_sent:
        return _predict_as_sent(call, arrays)
    if plan is None:
        # a batch split into single samples: predicted one by one, whole outputs (not
        # streamed band by band)
        return predict_mapped(call, arrays)
    fast = _fast_outputs(call, arrays, plan)
    if fast is not None:
        return fast
    shapes = _shapes_text(arrays)
    sample = as_sample(call.descr, arrays)
    del arrays
    try:
        stream = stream_tiles(
            call.pipeline,
            call.descr,
            sample,
            plan,
            call.request,
            polling(call),
            network_dtypes=call.network_dtypes,
            stream_tiles_min_bytes=call.limits.stream_tiles_min_bytes,
            cancelled=call.cancelled,
        )
    except ModelRunnerError:
        raise
    except Exception as e:
        raise failure(e, call.descr, shapes) from e
    if stream is None:
        return _predict_planned(call, sample, plan, shapes)
    stream.bands = _translated(stream.bands, call.descr, shapes)
    return stream


def predict_mapped(call: Prediction, arrays: Mapped) -> Predicted:
    """:func:`predict` of arrays that :func:`mapped_inputs` checked and mapped. A batch larger
    than the model's fixed batch size is predicted sample by sample (:mod:`.batch_split`)."""
    parts = split_batch(call.descr, arrays)
    if parts is not None:
        return _predict_parts(call, parts)
    return _predict_one(call, arrays, call.plan(arrays))


def _predict_one(call: Prediction, arrays: Mapped, plan: FitPlan) -> Predicted:
    fast = _fast_outputs(call, arrays, plan)
    if fast is not None:
        return fast
    return _predict_planned(call, as_sample(call.descr, arrays), plan, _shapes_text(arrays))


def _predict_parts(call: Prediction, parts: list[dict[MemberId, np.ndarray]]) -> Predicted:
    """The one-sample parts of a split batch, predicted one by one, outputs stacked."""
    outputs = []
    for part in parts:
        check_cancelled(call.cancelled)
        outputs.append(predict_mapped(call, part))
    return Predicted.of(stack_outputs(call.descr, outputs), outputs[0].path)


def _predict_as_sent(call: Prediction, arrays: Mapped) -> Predicted:
    from .kept_shape import predict_kept_shape

    shapes = _shapes_text(arrays)
    try:
        output = predict_kept_shape(
            call.pipeline,
            call.descr,
            arrays,
            call.request,
            call.network_dtypes,
            call.limits.max_tile_input_bytes,
            polling(call),
        )
    except ModelRunnerError:
        raise
    except Exception as e:
        request = call.request
        fits = request.blocksize is None and request.block_statistics is None
        if fits and request.input_padding == "none":
            plan = call.plan(arrays)
            if plan.mode != "whole":
                # A shape outside the model's sizes that its network refuses (bioimageio.core's
                # halo padding of a fixed-size ONNX model fails in process too): fitted instead.
                logger.info("the network refused %s (%s): fitting it to the model", shapes, e)
                fitted = replace(call, request=replace(request, keep_shape=False))
                return predict_mapped(fitted, arrays)
        raise failure(e, call.descr, shapes) from e
    return Predicted.of(output_arrays(call.descr, output), "reference")


def _translated(
    bands: Generator[Bands, None, None], descr: v0_5.ModelDescr, shapes: str
) -> Generator[Bands, None, None]:
    try:
        yield from bands
    except ModelRunnerError:
        raise
    except Exception as e:
        raise failure(e, descr, shapes) from e
    finally:
        bands.close()


def _fast_outputs(call: Prediction, arrays: Mapped, plan: FitPlan) -> Predicted | None:
    """The outputs through the fast path, or None when this call needs bioimageio.core's
    pipeline: no checked fast path, the reference asked for, processing skipped, or an input
    that must be padded or tiled."""
    request, fast, descr = call.request, call.fast, call.descr
    by_name = {str(m): a for m, a in arrays.items()}
    why_not = (
        "the input must be padded or tiled"
        if plan.mode != "whole"
        else "processing is skipped"
        if request.skip_preprocessing or request.skip_postprocessing
        else f"bioimageio.core serves this model ({call.serving.reason})"
        if fast is None
        else "an input is missing"
        if not fast.accepts(by_name)
        else ""
    )
    precision = request.precision
    if request.reference_path or (why_not and not precision):
        return None
    failed = fast.precision_failures.get(precision) if fast is not None else None
    if failed is not None:
        raise FailedPreconditionError(
            f"{precision} precision fails on this model: {failed}",
            details={"precision": precision, "model": descr.name},
        )
    if why_not or (fast is not None and precision not in ("", *fast.precisions)):
        raise FailedPreconditionError(
            f"{precision} precision runs on the fast path with PyTorch or TorchScript "
            + "weights only, and this call cannot take it: "
            + (why_not or f"the {call.weight_format} network has no reduced precision"),
            details={"precision": precision, "model": descr.name},
        )
    assert fast is not None
    if precision:
        try:
            fast.measure_precision(precision)
        except Exception as e:
            raise FailedPreconditionError(
                f"{precision} precision fails on this model: {type(e).__name__}: {e}",
                details={"precision": precision, "model": descr.name},
            ) from e
    try:
        return Predicted.of(
            fast.predict(
                by_name,
                nan_possible=request.nan_policy != "reject",
                precision=precision or None,
            ),
            "fast",
        )
    except Exception as e:
        raise failure(e, descr, _shapes_text(arrays)) from e


def _predict_planned(call: Prediction, sample: Sample, plan: FitPlan, shapes: str) -> Predicted:
    try:
        fast = _fast_around_blocks(call, sample, plan)
        if fast is not None:
            return _predict_fast_around_blocks(fast, call, sample, plan)
        output = _run(call, sample, plan)
    except ModelRunnerError:
        raise
    except Exception as e:
        raise failure(e, call.descr, shapes) from e
    return Predicted.of(output_arrays(call.descr, output), "reference")


def _fast_around_blocks(call: Prediction, sample: Sample, plan: FitPlan) -> FastPath | None:
    """The fast path's processing for a padded or tiled prediction, when it applies: all of the
    processing then runs on the whole sample as torch operations, and in between the padded
    sample goes through bioimageio.core's network call, or the blocks through the fast path's
    network in stacks (:mod:`.device_tiles`). bioimageio.core applies elementwise
    preprocessing to each padded block instead; the two agree for every padding but a constant
    one (a step changes the pad value), which stays with bioimageio.core when tiling."""
    request, fast = call.request, call.fast
    if (
        plan.mode == "whole"
        or request.reference_path
        or request.skip_preprocessing
        or request.skip_postprocessing
    ):
        return None
    if fast is None or not fast.accepts(str(m) for m in sample.members):
        return None
    constant = any(isinstance(m, v0_5.ConstantPadding) for m in call.pipeline.pad_mode.values())
    if plan.mode == "tiled" and not plan.pad and constant:
        return None
    return fast


def _predict_fast_around_blocks(
    fast: FastPath, call: Prediction, sample: Sample, plan: FitPlan
) -> Predicted:
    arrays = {str(m): t.data.to_numpy() for m, t in sample.members.items()}
    nan_possible = call.request.nan_policy != "reject"
    prepared, stats = fast.preprocess(arrays, nan_possible=nan_possible)
    del arrays
    preprocessed = as_sample(call.descr, {MemberId(k): v for k, v in prepared.items()})
    if plan.mode == "tiled" and not plan.pad:
        from .device_tiles import predict_blocks

        raw = predict_blocks(fast, call.pipeline, call.descr, preprocessed, plan, polling(call))
    else:
        raw = _run(call, preprocessed, plan, network_only=True)
    del prepared
    return Predicted.of(fast.postprocess(output_arrays(call.descr, raw), stats), "fast")


def _run(call: Prediction, sample: Sample, plan: FitPlan, *, network_only: bool = False) -> Sample:
    skip_pre = network_only or call.request.skip_preprocessing
    skip_post = network_only or call.request.skip_postprocessing
    padded = bool(plan.pad)
    if padded:
        # Preprocessing runs before padding, so sample statistics are those of the image; pad
        # values are thus in the network's input space (bioimageio.core's blockwise path
        # applies element-wise steps after padding: the same, except for constant padding).
        if not skip_pre:
            call.pipeline.apply_preprocessing(sample)
        pad_mode = call.pipeline.pad_mode
        sample = Sample(
            members={
                m: t.pad(plan.pad[m], mode=pad_mode.get(m, "symmetric")) if m in plan.pad else t
                for m, t in sample.members.items()
            },
            stat=sample.stat,
            id=sample.id,
        )
    tiled = plan.mode == "tiled"
    # the whole sample, or (tiled) exactly bioimageio.core's blockwise prediction; a padded
    # sample is processed around it
    raw = core_predict(
        call.pipeline,
        call.descr,
        sample,
        skip_preprocessing=skip_pre or padded,
        skip_postprocessing=skip_post or padded,
        network_dtypes=None if network_only else call.network_dtypes,
        ns=plan.ns if tiled else None,
        batch_size=plan.block_batch if tiled else None,
        progress=polling(call),
    )
    if not padded:
        return raw
    output = Sample(
        members={m: _crop(t, plan.output_sizes.get(m, {})) for m, t in raw.members.items()},
        stat=sample.stat,
        id=sample.id,
    )
    if not skip_post:
        call.pipeline.apply_postprocessing(output)
    return output


def _crop(tensor: Tensor, sizes: Mapping[v0_5.AxisId, int]) -> Tensor:
    slices = {a: slice(0, s) for a, s in sizes.items() if a in tensor.sizes and tensor.sizes[a] > s}
    return tensor[slices] if slices else tensor


def _shapes_text(arrays: Mapped) -> str:
    return ", ".join(f"'{m}' {tuple(a.shape)}" for m, a in arrays.items())
