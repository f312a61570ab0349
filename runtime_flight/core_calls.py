"""bioimageio.core's call sequence on a loaded ``PredictionPipeline``, written once: every
predict path that leaves a sample (or a block) to bioimageio.core goes through
:func:`core_predict` or :func:`core_predict_block`.

The sequence: inputs cast to the dtypes the network takes when preprocessing is skipped (as
the preprocessing's own ``ensure_dtype`` would), then bioimageio.core's own call, which runs
preprocessing, the network and postprocessing as asked:

- the whole sample: ``predict_sample_without_blocking``, without the halo padding and cropping
  (what ``bioimageio.core.test_model`` runs), or with them (``pad_halo``: what
  ``bioimageio.core.predict()`` runs by default);
- block by block: ``predict_sample_with_blocking_yield_intermediates`` (its blockwise
  prediction, progress after each block), or one block (``predict_sample_block``, for outputs
  that stream in bands).

Also here: what the pipeline's model description says about dtypes, and the predicted sample's
outputs as arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from bioimageio.core import PredictionPipeline, Sample
from bioimageio.core.common import MemberId
from bioimageio.core.proc_ops import EnsureDtype
from bioimageio.core.sample import SampleBlock
from bioimageio.spec.model import v0_5

from modelrunner.errors import FailedPreconditionError

from .core_blocks import follow_implied_references

BlockProgress = Callable[[int, int], None]
"""Called with (blocks done, blocks in total) during a blockwise prediction; it may raise (e.g.
CancelledError) to stop it."""


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


def network_dtypes(descr: v0_5.ModelDescr) -> dict[MemberId, str]:
    return {t.id: network_dtype(t) for t in descr.inputs}


def cast_to_network(sample: Sample, dtypes: Mapping[MemberId, str]) -> None:
    """Cast the sample's inputs to the dtypes the network takes (preprocessing skipped)."""
    sample.members = {
        m: t.astype(dtypes[m]) if m in dtypes and str(t.data.dtype) != dtypes[m] else t  # type: ignore[arg-type]
        for m, t in sample.members.items()
    }


def core_predict(
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    sample: Sample,
    *,
    skip_preprocessing: bool,
    skip_postprocessing: bool,
    network_dtypes: Mapping[MemberId, str] | None,
    ns: Any = None,
    batch_size: int | None = None,
    pad_halo: bool = False,
    progress: BlockProgress | None = None,
) -> Sample:
    """bioimageio.core's prediction of ``sample``: whole (``ns`` None) or blockwise with its
    blocksize parameter ``ns``. ``network_dtypes``: what to cast the inputs to when
    ``skip_preprocessing`` (None: they are cast already)."""
    if skip_preprocessing and network_dtypes is not None:
        cast_to_network(sample, network_dtypes)
    if ns is None:
        return pipeline.predict_sample_without_blocking(
            sample,
            skip_preprocessing=skip_preprocessing,
            skip_postprocessing=skip_postprocessing,
            skip_input_padding=not pad_halo,
            skip_output_cropping=not pad_halo,
        )
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


def core_predict_block(
    pipeline: PredictionPipeline,
    block: SampleBlock,
    *,
    skip_preprocessing: bool,
    skip_postprocessing: bool,
    network_dtypes: Mapping[MemberId, str],
) -> SampleBlock:
    """One block of a blockwise prediction (its sample-wise preprocessing ran before): the
    cast as :func:`core_predict` does it, with bioimageio.core's own operator, then
    ``predict_sample_block``."""
    if skip_preprocessing:
        for m, dtype in network_dtypes.items():
            if m in block.blocks and str(block.blocks[m].data.data.dtype) != dtype:
                EnsureDtype(input=m, output=m, dtype=dtype)(block)  # type: ignore[arg-type]
    return pipeline.predict_sample_block(
        block,
        skip_preprocessing=skip_preprocessing,
        skip_postprocessing=skip_postprocessing,
    )


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
