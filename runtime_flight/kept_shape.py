"""bioimageio.core's own call on a sample exactly as it was sent (``PredictRequest.keep_shape``,
and ``input_padding="halo"``).

A client that is itself a bioimageio.core ``PredictionPipeline`` (:mod:`modelrunner.client.
core_pipeline`) has already decided how the sample is shaped: it padded it by the model's halo,
as ``bioimageio.core.predict`` does, or it is one block of a blockwise prediction. Fitting it to
the model's sizes again (:mod:`.size_fitting`) would give other numbers than bioimageio.core in
process, so this runs the call bioimageio.core would run, on the sample as it is:

- without a blocksize: ``predict_sample_without_blocking`` without halo padding or cropping
  (the caller pads and crops); with both processing steps skipped this is the network alone,
  what a bioimageio.core ``RemoteModelAdapter`` asks a server for;
- with blocksize ``n``: ``predict_sample_with_blocking(ns=n)``, bioimageio.core's blockwise
  prediction with its own padding of the blocks;
- with ``input_padding="halo"`` and no blocksize: ``predict_sample_without_blocking`` with its
  halo padding and cropping, what ``bioimageio.core.predict()`` runs;
- a block of a larger sample (``block_statistics``): its blockwise processing with the whole
  sample's statistics around the network (:mod:`.sample_blocks`).

The fast path is not taken: it is checked against bioimageio.core only for the sizes the model
declares.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from bioimageio.core import PredictionPipeline, Sample
from bioimageio.core.common import Halo, MemberId
from bioimageio.core.digest_spec import get_input_halo
from bioimageio.spec.model import v0_5

from modelrunner.errors import ResourceExhaustedError
from modelrunner.predict_request import PredictRequest

from .core_calls import BlockProgress, core_predict
from .input_mapping import as_sample
from .sample_blocks import predict_block_of_sample


def predict_kept_shape(
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    arrays: Mapping[MemberId, np.ndarray],
    request: PredictRequest,
    network_dtypes: Mapping[MemberId, str],
    max_tile_input_bytes: int,
    progress: BlockProgress | None = None,
) -> Sample:
    """The predicted sample (outputs in bioimageio.core's layout; the caller converts them).

    Raises:
        ResourceExhaustedError: the network input (the whole sample, or one block) would exceed
            ``max_tile_input_bytes``, the bound every other call is tiled under.
    """
    _check_network_input(descr, arrays, request, network_dtypes, pipeline, max_tile_input_bytes)
    if request.block_statistics is not None:
        return predict_block_of_sample(
            pipeline, descr, arrays, request.block_statistics, request, network_dtypes
        )
    return core_predict(
        pipeline,
        descr,
        as_sample(descr, arrays),
        skip_preprocessing=request.skip_preprocessing,
        skip_postprocessing=request.skip_postprocessing,
        network_dtypes=network_dtypes,
        ns=request.blocksize,
        pad_halo=request.input_padding == "halo",
        progress=progress,  # also where a cancelled call stops
    )


def _check_network_input(
    descr: v0_5.ModelDescr,
    arrays: Mapping[MemberId, np.ndarray],
    request: PredictRequest,
    network_dtypes: Mapping[MemberId, str],
    pipeline: PredictionPipeline,
    limit: int,
) -> None:
    """Kept whole, a sample reaches the network as sent: bound it as tiles are bounded."""
    if request.blocksize is None:
        what = "the sample"
        halo = input_halo(descr) if request.input_padding == "halo" else {}
        sizes = {
            m: math.prod(
                n + sum(halo.get(m, {}).get(axis, (0, 0)))
                for axis, n in zip(_axis_ids(descr, m), a.shape, strict=True)
            )
            for m, a in arrays.items()
        }
    else:
        # the blocksize bioimageio.core uses: it runs `ns or default`, so 0 is its default
        used = request.blocksize or pipeline._default_blocksize_parameter
        what = f"a block of blocksize {used}" + (
            ""
            if used == request.blocksize
            else f" (bioimageio.core's default for {request.blocksize})"
        )
        ns = (
            used
            if isinstance(used, Mapping)
            else {
                (t.id, a.id): used
                for t in descr.inputs
                for a in t.axes
                if isinstance(a.size, v0_5.ParameterizedSize)
            }
        )
        # these are the network's input shapes, halo included: bioimageio.core's blocks are
        # this shape, their inner part this minus the halo (block_meta.split_shape_into_blocks)
        shapes = descr.get_tensor_sizes(ns, pipeline._default_batch_size).inputs
        sizes = {m: int(np.prod(list(shape.values()))) for m, shape in shapes.items()}
    nbytes = sum(n * np.dtype(network_dtypes[m]).itemsize for m, n in sizes.items())
    if nbytes > limit:
        raise ResourceExhaustedError(
            f"{what} takes {nbytes} bytes at the network's input, more than this runtime's "
            f"{limit} (setting max_tile_input_bytes): predict it in smaller blocks",
            details={
                "got": nbytes,
                "limit": "max_tile_input_bytes",
                "limit_value": limit,
            },
        )


def _axis_ids(descr: v0_5.ModelDescr, member: MemberId) -> list[v0_5.AxisId]:
    return next([a.id for a in t.axes] for t in descr.inputs if t.id == member)


def input_halo(descr: v0_5.ModelDescr) -> dict[MemberId, dict[v0_5.AxisId, Halo]]:
    """The padding ``bioimageio.core.predict()`` adds to each input: the input halo that the
    outputs' halo implies."""
    output_halo = {
        t.id: {a.id: Halo(a.halo, a.halo) for a in t.axes if isinstance(a, v0_5.WithHalo)}
        for t in descr.outputs
    }
    return get_input_halo(descr, output_halo)
