"""Sample mean, variance and standard deviation computed in bounded memory.

bioimageio.core computes sample statistics with full-size temporaries: its
``MeanVarStdCalculator`` subtracts the mean from the whole tensor (``c = (tensor - mean).data``, a
float64 copy for integer images: 4x a uint16 input), and xarray's NaN-skipping mean allocates more.
For a large image that is more memory than the rest of a tiled prediction needs. This module
computes the same measures chunk by chunk (at most :data:`_CHUNK_BYTES` of float64 temporaries),
in two passes like bioimageio.core (the mean, then the squared deviations from it), accumulating
in float64; the values are cast to the dtype bioimageio.core gives them (the input's float type,
float64 for integers), so the blockwise operators that use them compute the same way.

It applies when the pipeline's sample-wise preprocessing is only bioimageio.core's
``UpdateStats`` and every measure the model needs is a sample mean, variance or standard
deviation of an input (``zero_mean_unit_variance``, the common case). Anything else -- quantiles
(``scale_range``), dataset statistics, statistics of outputs -- returns None, and the caller lets
bioimageio.core compute them: such models need a full-size temporary or more on top of the input.
Inputs with NaN or infinite values also go to bioimageio.core, whose NaN-skipping mean the chunks
do not imitate.

This is the one place the runtime computes something bioimageio.core also computes (the memory
target forces it); the tests hold its values to bioimageio.core's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from bioimageio.core import PredictionPipeline, Sample, Tensor
from bioimageio.core.common import MemberId
from bioimageio.core.proc_ops import UpdateStats
from bioimageio.core.proc_setup import get_requried_measures
from bioimageio.core.stat_measures import (
    Measure,
    MeasureValue,
    SampleMean,
    SampleStd,
    SampleVar,
)
from bioimageio.spec.model import v0_5

from modelrunner.units import MiB

_CHUNK_BYTES = 4 * MiB
"""Largest float64 temporary of one chunk."""

LeanMeasure = SampleMean | SampleVar | SampleStd
_LEAN = (SampleMean, SampleVar, SampleStd)


def lean_sample_stats(
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    sample: Sample,
    *,
    chunk_bytes: int = _CHUNK_BYTES,
) -> dict[Measure, MeasureValue] | None:
    """The sample statistics the pipeline's sample-wise preprocessing would put into
    ``sample.stat``, or None when this module cannot compute them (see the module docstring).

    With the result in ``sample.stat``, bioimageio.core's blockwise pre- and postprocessing
    (``predict_sample_block``) runs as after its own ``UpdateStats``.
    """
    measures = lean_measures(pipeline, descr, sample)
    if measures is None:
        return None
    groups: dict[tuple[MemberId, tuple[v0_5.AxisId, ...] | None], list[LeanMeasure]] = {}
    for m in measures:
        groups.setdefault((m.member_id, m.axes), []).append(m)
    stats: dict[Measure, MeasureValue] = {}
    for (member, axes), wanted in groups.items():
        values = mean_var_std(sample.members[member], axes, chunk_bytes=chunk_bytes)
        if values is None:
            return None
        for m in wanted:
            stats[m] = values[m.name]
    return stats


def lean_measures(
    pipeline: PredictionPipeline, descr: v0_5.ModelDescr, sample: Sample
) -> set[LeanMeasure] | None:
    """The measures to compute, when all of them are lean ones; else None.

    bioimageio.core's pipeline keeps its sample-wise preprocessing in a private list; a pipeline
    without that attribute is not one this module knows, so it is left to bioimageio.core.
    """
    ops = getattr(pipeline, "_samplewise_preprocessing", None)
    if not isinstance(ops, list):
        return None
    for op in ops:
        if not isinstance(op, UpdateStats) or op.stats_calculator.dataset_calculators:
            return None
    # bioimageio.core's UpdateStats computes exactly what pre- and postprocessing require
    required = get_requried_measures(descr)
    measures: set[LeanMeasure] = set()
    for m in required.pre | required.post:
        if not isinstance(m, _LEAN) or m.member_id not in sample.members:
            return None
        measures.add(m)
    if measures and not ops:
        return None  # the pipeline gets them some other way (statistics given at its creation)
    return measures


def mean_var_std(
    tensor: Tensor,
    axes: Sequence[v0_5.AxisId] | None,
    *,
    chunk_bytes: int = _CHUNK_BYTES,
) -> dict[str, Tensor] | None:
    """Mean, (population) variance and standard deviation of ``tensor`` over ``axes`` (None:
    all), keyed ``mean``/``var``/``std``, with the dims and dtype bioimageio.core gives them.
    None when the tensor holds NaN or infinite values (or ``axes`` are not its axes)."""
    data = np.asarray(tensor.data.data)
    dims = [str(d) for d in tensor.dims]
    reduced = dims if axes is None else [str(a) for a in axes]
    if not set(reduced) <= set(dims):
        return None
    reduce_idx = tuple(i for i, d in enumerate(dims) if d in reduced)
    count = math.prod(data.shape[i] for i in reduce_idx)
    if count == 0:
        return None
    chunks = _Chunks(data.shape, reduce_idx, chunk_bytes)

    total = chunks.zeros()
    for along, part in chunks.slices():
        chunks.accumulate(
            total, along, np.sum(data[part], axis=reduce_idx, dtype=np.float64, keepdims=True)
        )
    mean = total / count
    if not np.all(np.isfinite(mean)):
        return None
    squares = chunks.zeros()
    for along, part in chunks.slices():
        deviation = data[part].astype(np.float64)
        deviation -= mean[chunks.kept(along)]
        np.square(deviation, out=deviation)
        chunks.accumulate(squares, along, np.sum(deviation, axis=reduce_idx, keepdims=True))
        del deviation  # before the next slab's copy, so two never coexist
    var = squares / count
    dtype = data.dtype if data.dtype.kind == "f" else np.dtype(np.float64)
    kept_dims = [d for i, d in enumerate(dims) if i not in reduce_idx]
    return {
        name: Tensor(np.squeeze(values, axis=reduce_idx).astype(dtype), dims=kept_dims)
        for name, values in (("mean", mean), ("var", var), ("std", np.sqrt(var)))
    }


class _Chunks:
    """Slabs of an array along its longest axis, each at most ``chunk_bytes`` in float64."""

    def __init__(
        self, shape: tuple[int, ...], reduce_idx: tuple[int, ...], chunk_bytes: int
    ) -> None:
        self.shape = shape
        self.reduce_idx = reduce_idx
        self.axis = int(np.argmax(shape))
        slab = math.prod(shape) // max(1, shape[self.axis]) * 8
        self.step = max(1, chunk_bytes // max(1, slab))

    def zeros(self) -> np.ndarray:
        return np.zeros(
            [1 if i in self.reduce_idx else s for i, s in enumerate(self.shape)], np.float64
        )

    def slices(self) -> list[tuple[slice, tuple[slice, ...]]]:
        """(range along the chunk axis, index of the slab) for every slab."""
        out = []
        for start in range(0, self.shape[self.axis], self.step):
            along = slice(start, min(start + self.step, self.shape[self.axis]))
            index = [slice(None)] * len(self.shape)
            index[self.axis] = along
            out.append((along, tuple(index)))
        return out

    def kept(self, along: slice) -> tuple[slice, ...]:
        """The part of a reduced (keepdims) result that belongs to the slab ``along``."""
        index = [slice(None)] * len(self.shape)
        if self.axis not in self.reduce_idx:
            index[self.axis] = along
        return tuple(index)

    def accumulate(self, total: np.ndarray, along: slice, part: np.ndarray | np.floating) -> None:
        total[self.kept(along)] += part
