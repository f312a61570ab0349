"""bioimageio.core's own call on a sample exactly as it was sent (``PredictOptions.keep_shape``).

A client that is itself a bioimageio.core ``PredictionPipeline`` (:mod:`modelrunner.client.
core_pipeline`) has already decided how the sample is shaped: it padded it by the model's halo,
as ``bioimageio.core.predict`` does, or it is one block of a blockwise prediction. Fitting it to
the model's sizes again (:mod:`.size_fitting`) would give other numbers than bioimageio.core in
process, so this runs the call bioimageio.core would run, on the sample as it is:

- without a blocksize: ``predict_sample_without_blocking`` without halo padding or cropping
  (the caller pads and crops); with both processing steps skipped this is the network alone,
  what a bioimageio.core ``RemoteModelAdapter`` asks a server for;
- with blocksize ``n``: ``predict_sample_with_blocking(ns=n)``, bioimageio.core's blockwise
  prediction with its own padding of the blocks.

The fast path is not taken: it is checked against bioimageio.core only for the sizes the model
declares.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from bioimageio.core import PredictionPipeline, Sample
from bioimageio.core.common import MemberId
from bioimageio.spec.model import v0_5

from modelrunner.errors import ResourceExhaustedError

from .core_blocks import predict_blockwise
from .input_mapping import as_sample
from .options import PredictOptions
from .sample_blocks import predict_block_of_sample
from .streamed_tiling import Progress


def predict_kept_shape(
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    arrays: Mapping[MemberId, np.ndarray],
    options: PredictOptions,
    network_dtypes: Mapping[MemberId, str],
    progress: Progress | None = None,
) -> Sample:
    """The predicted sample (outputs in bioimageio.core's layout; the caller converts them).

    Raises:
        ResourceExhaustedError: the network input (the whole sample, or one block) would exceed
            ``max_tile_input_bytes``, the bound every other call is tiled under.
    """
    _check_network_input(descr, arrays, options, network_dtypes, pipeline)
    if options.block_statistics is not None:
        return predict_block_of_sample(
            pipeline, descr, arrays, options.block_statistics, options, network_dtypes
        )
    sample = as_sample(descr, arrays)
    if options.skip_preprocessing:
        # as for every call that skips preprocessing: the network gets its own dtype
        sample.members = {
            m: t.astype(network_dtypes[m]) if str(t.data.dtype) != network_dtypes[m] else t  # type: ignore[arg-type]
            for m, t in sample.members.items()
        }
    if options.blocksize is None:
        return pipeline.predict_sample_without_blocking(
            sample,
            skip_preprocessing=options.skip_preprocessing,
            skip_postprocessing=options.skip_postprocessing,
            skip_input_padding=True,
            skip_output_cropping=True,
        )
    return predict_blockwise(
        pipeline,
        descr,
        sample,
        progress,  # also where a cancelled call stops
        ns=options.blocksize,
        skip_preprocessing=options.skip_preprocessing,
        skip_postprocessing=options.skip_postprocessing,
    )


def _check_network_input(
    descr: v0_5.ModelDescr,
    arrays: Mapping[MemberId, np.ndarray],
    options: PredictOptions,
    network_dtypes: Mapping[MemberId, str],
    pipeline: PredictionPipeline,
) -> None:
    """Kept whole, a sample reaches the network as sent: bound it as tiles are bounded."""
    if options.blocksize is None:
        what = "the sample"
        sizes = {m: int(np.prod(a.shape)) for m, a in arrays.items()}
    else:
        # the blocksize bioimageio.core uses: it runs `ns or default`, so 0 is its default
        used = options.blocksize or pipeline._default_blocksize_parameter
        what = f"a block of blocksize {used}" + (
            ""
            if used == options.blocksize
            else f" (bioimageio.core's default for {options.blocksize})"
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
    if nbytes > options.max_tile_input_bytes:
        raise ResourceExhaustedError(
            f"{what} takes {nbytes} bytes at the network's input, more than this runtime's "
            f"{options.max_tile_input_bytes} (setting max_tile_input_bytes): predict it in "
            "smaller blocks",
            details={
                "got": nbytes,
                "limit": "max_tile_input_bytes",
                "limit_value": options.max_tile_input_bytes,
            },
        )
