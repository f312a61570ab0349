"""One block of a larger sample (``PredictCommand.block_of_sample``): predicted as sent, its
pre- and postprocessing using statistics of the whole sample that the client computed.

A volume larger than memory reaches the runtime one block at a time (the client's
``predict_volume``). bioimageio.core's blockwise prediction computes the sample's statistics
once, on the whole sample (its ``UpdateStats``, the only sample-wise preprocessing of most
models), then predicts each block with the blockwise operators only
(``PredictionPipeline.predict_sample_block``). This does the same for a block that arrives
alone: the given statistics go into ``sample.stat`` where ``UpdateStats`` would have put them,
so a block here gives the numbers the same block gives inside bioimageio.core's blockwise
prediction of the whole sample.

Refused (FailedPreconditionError, naming what is missing) where that cannot hold: the model needs
a statistic the client did not give, a statistic of an output or of a dataset, or processing
that is not blockwise other than ``UpdateStats`` (sample-wise postprocessing works on the whole
predicted sample).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from bioimageio.core import PredictionPipeline, Sample, Tensor
from bioimageio.core.common import MemberId
from bioimageio.core.proc_ops import UpdateStats
from bioimageio.core.proc_setup import get_requried_measures
from bioimageio.core.stat_measures import (
    Measure,
    MeasureValue,
    SampleMean,
    SampleQuantile,
    SampleStd,
    SampleVar,
)
from bioimageio.spec.model import v0_5

from modelrunner.errors import FailedPreconditionError, InvalidArgumentError, clip
from modelrunner.predict_request import PredictRequest
from modelrunner.types import SampleStatistic

from .input_mapping import as_sample

_NAMES: dict[type, str] = {
    SampleMean: "mean",
    SampleVar: "var",
    SampleStd: "std",
    SampleQuantile: "quantile",
}
Q_TOLERANCE = 1e-9


def predict_block_of_sample(
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    arrays: Mapping[MemberId, np.ndarray],
    statistics: Sequence[SampleStatistic],
    request: PredictRequest,
    network_dtypes: Mapping[MemberId, str],
) -> Sample:
    """The predicted block (outputs in bioimageio.core's layout, halo included: the caller
    crops). Raises FailedPreconditionError (see the module docstring) or InvalidArgumentError
    (a statistic that does not fit the sample)."""
    _check_blockwise(pipeline)
    sample = as_sample(descr, arrays)
    sample.stat = dict(sample_stat(descr, sample, statistics))
    if request.skip_preprocessing:
        sample.members = {
            m: t.astype(network_dtypes[m]) if str(t.data.dtype) != network_dtypes[m] else t  # type: ignore[arg-type]
            for m, t in sample.members.items()
        }
    else:
        pipeline._apply_blockwise_preprocessing(sample)
    output = pipeline.predict_sample_without_blocking(
        sample,
        skip_preprocessing=True,
        skip_postprocessing=True,
        skip_input_padding=True,
        skip_output_cropping=True,
    )
    output.stat = sample.stat
    if not request.skip_postprocessing:
        pipeline._apply_blockwise_postprocessing(output)
    return output


def _check_blockwise(pipeline: PredictionPipeline) -> None:
    """bioimageio.core keeps its split of the processing into sample-wise and blockwise
    operators private; a pipeline without it is not one this module knows."""
    pre: Any = getattr(pipeline, "_samplewise_preprocessing", None)
    post: Any = getattr(pipeline, "_samplewise_postprocessing", None)
    if not isinstance(pre, list) or not isinstance(post, list):
        raise FailedPreconditionError("this model's pipeline cannot predict blocks of a sample")
    for op in pre:
        if not isinstance(op, UpdateStats):
            raise FailedPreconditionError(
                f"the model's preprocessing step {type(op).__name__} works on the whole sample: "
                "it cannot be predicted block by block"
            )
        if op.stats_calculator.dataset_calculators:
            raise FailedPreconditionError(
                "the model's processing uses dataset statistics: it cannot be predicted block "
                "by block with statistics of one sample"
            )
    if post:
        raise FailedPreconditionError(
            f"the model's postprocessing ({', '.join(type(op).__name__ for op in post)}) works "
            "on the whole predicted sample: it cannot be predicted block by block"
        )


def sample_stat(
    descr: v0_5.ModelDescr, sample: Sample, given: Sequence[SampleStatistic]
) -> dict[Measure, MeasureValue]:
    """The required measures, from the given statistics, as bioimageio.core's ``UpdateStats``
    would have put them into ``sample.stat``."""
    required = get_requried_measures(descr)
    stat: dict[Measure, MeasureValue] = {}
    for measure in sorted(required.pre | required.post, key=str):
        name = _NAMES.get(type(measure))
        if name is None or measure.member_id not in sample.members:
            raise FailedPreconditionError(
                f"the model's processing needs {_describe(measure)}, which is no statistic of "
                "an input over one sample: it cannot be predicted block by block",
                details={"statistic": clip(str(measure))},
            )
        found = _find(measure, name, sample, given)
        if found is None:
            raise FailedPreconditionError(
                f"the model's processing needs {_describe(measure)} of the whole sample, which "
                "the request does not give",
                details={"statistic": clip(str(measure))},
            )
        stat[measure] = _value(measure, name, sample.members[measure.member_id], found)
    return stat


def _describe(measure: Measure) -> str:
    name = _NAMES.get(type(measure), type(measure).__name__)
    q = f" {measure.q:g}" if isinstance(measure, SampleQuantile) else ""
    axes = getattr(measure, "axes", None)
    over = "all axes" if axes is None else "axes " + ", ".join(str(a) for a in axes)
    return f"the {name}{q} of '{getattr(measure, 'member_id', '?')}' over {over}"


def _axes(axes: Sequence[Any] | None, tensor: Tensor) -> frozenset[str]:
    return frozenset(str(d) for d in tensor.dims) if not axes else frozenset(map(str, axes))


def _find(
    measure: Measure, name: str, sample: Sample, given: Sequence[SampleStatistic]
) -> SampleStatistic | None:
    tensor = sample.members[measure.member_id]
    wanted = _axes(getattr(measure, "axes", None), tensor)
    for s in given:
        if s.tensor_id != str(measure.member_id) or s.name != name:
            continue
        if _axes(s.axes, tensor) != wanted:
            continue
        if isinstance(measure, SampleQuantile) and (
            measure.method != s.method or abs(s.q - measure.q) > Q_TOLERANCE
        ):
            continue
        return s
    return None


def _value(measure: Measure, name: str, tensor: Tensor, given: SampleStatistic) -> Tensor:
    """The given values as the Tensor bioimageio.core would compute: over the tensor's axes not
    reduced (in its order, size-1 ones added where left out), in the dtype it gives them."""
    reduced = _axes(getattr(measure, "axes", None), tensor)
    kept = [str(d) for d in tensor.dims if str(d) not in reduced]
    sizes = {str(d): int(s) for d, s in zip(tensor.dims, tensor.data.shape, strict=True)}
    where = f"sample statistic {name} of {clip(given.tensor_id)!r}"
    unknown = [d for d in given.dims if d not in kept]
    if unknown:
        raise InvalidArgumentError(
            f"{where}: its dims {clip(list(given.dims))} are not among the axes it keeps ({kept})",
            details={"tensor": clip(given.tensor_id), "statistic": name},
        )
    values = np.asarray(given.values, np.float64).reshape(given.shape)
    for axis, size in zip(given.dims, given.shape, strict=True):
        if size != sizes[axis]:
            raise InvalidArgumentError(
                f"{where}: axis {axis} has {size} values, the sample has {sizes[axis]}",
                details={"tensor": clip(given.tensor_id), "statistic": name, "axis": axis},
            )
    dims = list(given.dims)
    for axis in kept:
        if axis not in dims:
            if sizes[axis] != 1:
                raise InvalidArgumentError(
                    f"{where}: axis {axis} (size {sizes[axis]}) is left out",
                    details={"tensor": clip(given.tensor_id), "statistic": name, "axis": axis},
                )
            values = values[..., np.newaxis]
            dims.append(axis)
    values = values.transpose([dims.index(a) for a in kept])
    dtype = tensor.data.dtype
    if name == "quantile" or dtype.kind != "f":
        dtype = np.dtype(np.float64)
    return Tensor(values.astype(dtype), dims=kept)
