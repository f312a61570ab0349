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

from collections.abc import Callable, Mapping

import numpy as np
from bioimageio.core import PredictionPipeline, Sample
from bioimageio.core.common import MemberId
from bioimageio.spec.model import v0_5

from .core_blocks import follow_implied_references
from .input_mapping import as_sample
from .options import PredictOptions

Progress = Callable[[int, int], None]


def predict_kept_shape(
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    arrays: Mapping[MemberId, np.ndarray],
    options: PredictOptions,
    network_dtypes: Mapping[MemberId, str],
    progress: Progress | None = None,
) -> Sample:
    """The predicted sample (outputs in bioimageio.core's layout; the caller converts them)."""
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
    follow_implied_references(pipeline, descr)
    total, intermediates = pipeline.predict_sample_with_blocking_yield_intermediates(
        sample,
        skip_preprocessing=options.skip_preprocessing,
        skip_postprocessing=options.skip_postprocessing,
        ns=options.blocksize,
    )
    last = None
    for done, intermediate in enumerate(intermediates, start=1):
        last = intermediate
        if progress is not None:
            progress(done, total)  # also where a cancelled call stops
    assert last is not None, "bioimageio.core predicted no blocks"
    return last.sample
