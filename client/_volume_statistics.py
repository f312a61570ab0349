"""Statistics of whole samples too large for memory, for the model's processing.

bioimageio.core normalises a sample with statistics of the whole sample (``zero_mean_unit_variance``
with its mean and standard deviation, ``scale_range`` with its percentiles), computed before the
sample is cut into blocks. A volume predicted block by block must give every block those same
numbers (``PredictCommand.block_of_sample``), so they are computed here first, in one pass over
the volume (a few more for percentiles of float data), slab by slab in bounded memory:

- mean, variance and standard deviation: per slab in float64 (mean, then squared deviations
  from it, as bioimageio.core computes them), merged exactly (Chan et al.'s pairwise update);
- percentiles, exactly as numpy's ``quantile`` (``linear``, and ``inverted_cdf`` for ``clip``):
  integers of 16 bits or less by a histogram of every value; other data by histograms that narrow
  in on the ranks wanted, then the distinct values left in the narrowest bin.

Which statistics a model needs comes from its processing steps in :class:`~modelrunner.types.
TensorSpec`; the runtime checks the list against bioimageio.core's own and refuses a block that
lacks one (``runtime_flight/sample_blocks.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelrunner import errors
from modelrunner.types import ModelInfo, SampleStatistic

from ._volume_reductions import HISTOGRAM_BINS, Moments, RankSearch

SLAB_BYTES = 32 * 1024**2
"""Input bytes read per task of a statistics pass."""

Region = tuple[slice, ...]
ReadRegion = Callable[[tuple[int, ...], Region], np.ndarray]
"""Reads a region of one sample (the index along the volume's loop axes) in the sent axes."""


@dataclass(frozen=True)
class RequiredMeasure:
    """A statistic the model's processing needs of the input (bioimageio.core's sample
    measures); ``axes`` are reduced, ``()`` meaning all of them."""

    name: str
    axes: tuple[str, ...]
    q: float = 0.0
    method: str = "linear"


def required_measures(info: ModelInfo, input_id: str) -> list[RequiredMeasure]:
    """The sample statistics of input ``input_id`` that the model's processing steps need,
    as bioimageio.core's processing operators define them. Statistics it cannot give (of
    outputs, of datasets) are left to the runtime, which refuses the model with a reason."""
    found: list[RequiredMeasure] = []
    for spec in (*info.inputs, *info.outputs):
        steps = spec.preprocessing if spec in info.inputs else spec.postprocessing
        for step in steps:
            for member, measure in _step_measures(step.id, step.kwargs, spec.id):
                if member == input_id and measure not in found:
                    found.append(measure)
    return found


def _step_measures(
    step: str, kwargs: Mapping[str, Any], tensor_id: str
) -> Iterable[tuple[str, RequiredMeasure]]:
    axes = kwargs.get("axes")
    if (
        not isinstance(axes, list)
        or "batch" in axes
        or kwargs.get("mode", "per_sample") not in ("per_sample",)
    ):
        return  # dataset statistics (no axes, or over the batch), fixed values, or v0.4 letters
    reduced = tuple(str(a) for a in axes)
    if step == "zero_mean_unit_variance":
        yield tensor_id, RequiredMeasure("mean", reduced)
        yield tensor_id, RequiredMeasure("std", reduced)
    elif step == "scale_range":
        member = str(kwargs.get("reference_tensor") or tensor_id)
        yield (
            member,
            RequiredMeasure("quantile", reduced, float(kwargs.get("min_percentile", 0.0)) / 100),
        )
        yield (
            member,
            RequiredMeasure("quantile", reduced, float(kwargs.get("max_percentile", 100)) / 100),
        )
    elif step == "clip":
        for bound in ("min", "max"):
            percentile = kwargs.get(f"{bound}_percentile")
            if kwargs.get(bound) is None and percentile is not None:
                yield (
                    tensor_id,
                    RequiredMeasure("quantile", reduced, float(percentile) / 100, "inverted_cdf"),
                )


@dataclass
class _Group:
    """The statistics that reduce the same axes, and what the passes gather for them."""

    reduced: tuple[str, ...]
    measures: list[RequiredMeasure]
    kept: tuple[str, ...] = ()
    kept_shape: tuple[int, ...] = ()
    count: int = 0
    """Values reduced into each statistic."""
    moments: Moments = field(default_factory=lambda: Moments(0))
    histogram: np.ndarray | None = None
    """Integers of 16 bits or less: the count of every value, per kept index."""
    extremes: tuple[np.ndarray, np.ndarray] | None = None
    search: RankSearch | None = None

    @property
    def ranks(self) -> list[int]:
        ranks: set[int] = set()
        for m in self.measures:
            if m.name == "quantile":
                ranks.update(_quantile_ranks(m, self.count))
        return sorted(ranks)


def _flat(
    chunk: np.ndarray, region: Region, dims: Sequence[str], group: _Group
) -> tuple[np.ndarray, np.ndarray]:
    """``chunk`` (of ``region``) as (kept index, values reduced), and the kept indices its rows
    are (a slab may hold a part of the kept axes)."""
    kept = [dims.index(a) for a in group.kept]
    rest = [i for i in range(chunk.ndim) if i not in kept]
    ranges = [range(*region[i].indices(group.kept_shape[j])) for j, i in enumerate(kept)]
    grid = np.meshgrid(*[np.asarray(r) for r in ranges], indexing="ij")
    rows = (
        np.ravel_multi_index([g.ravel() for g in grid], group.kept_shape)
        if kept
        else np.zeros(1, np.int64)
    )
    flat = chunk.transpose(kept + rest).reshape(len(rows), -1)
    return flat, np.asarray(rows, np.int64).ravel()


def _integer_offset(dtype: np.dtype) -> int | None:
    """What maps the dtype's values onto 0..65535 for an exact histogram; None: too wide."""
    if dtype.kind in "ub" and dtype.itemsize <= 2:
        return 0
    if dtype.kind == "i" and dtype.itemsize <= 2:
        return -int(np.iinfo(dtype).min)
    return None


class SampleStatistics:
    """The statistics of every sample of a volume, read slab by slab (at most ``slab_bytes``
    each, slab edges on the source's chunk edges) by a pool of threads."""

    def __init__(
        self,
        tensor_id: str,
        measures: Sequence[RequiredMeasure],
        dims: Sequence[str],
        shape: Sequence[int],
        dtype: Any,
        *,
        chunks: Sequence[int] | None = None,
        slab_bytes: int = SLAB_BYTES,
    ) -> None:
        self.tensor_id = tensor_id
        self.dims = tuple(dims)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self._offset = _integer_offset(self.dtype)
        self._groups: dict[tuple[str, ...], list[RequiredMeasure]] = {}
        for m in measures:
            key = tuple(a for a in self.dims if a in m.axes) if m.axes else self.dims
            self._groups.setdefault(key, []).append(m)
        self.regions = _slabs(self.shape, self.dtype.itemsize, slab_bytes, chunks)

    @property
    def needed(self) -> bool:
        return bool(self._groups)

    def compute(
        self,
        read: ReadRegion,
        samples: Sequence[tuple[int, ...]],
        *,
        workers: int = 2,
        progress: Callable[[int], None] | None = None,
    ) -> dict[tuple[int, ...], tuple[SampleStatistic, ...]]:
        """The statistics of each sample; ``progress(bytes)`` after each slab read."""
        if not self._groups:
            return {s: () for s in samples}
        results: dict[tuple[int, ...], tuple[SampleStatistic, ...]] = {}
        with ThreadPoolExecutor(workers, thread_name_prefix="modelrunner-stats") as pool:
            groups = {
                sample: [self._group(reduced, ms) for reduced, ms in self._groups.items()]
                for sample in samples
            }
            self._first_pass(pool, read, groups, progress)  # every sample's slabs in one go
            for sample in samples:
                searches = [g.search for g in groups[sample] if g.search is not None]
                while any(s.pending for s in searches):
                    self._search_pass(pool, read, sample, groups[sample], progress)
                results[sample] = tuple(s for g in groups[sample] for s in self._finish(g))
        return results

    def _group(self, reduced: tuple[str, ...], measures: list[RequiredMeasure]) -> _Group:
        kept = tuple(a for a in self.dims if a not in reduced)
        shape = tuple(self.shape[self.dims.index(a)] for a in kept)
        count = math.prod(self.shape[self.dims.index(a)] for a in reduced)
        return _Group(reduced, measures, kept, shape, count, Moments(math.prod(shape)))

    def _first_pass(
        self,
        pool: ThreadPoolExecutor,
        read: ReadRegion,
        by_sample: dict[tuple[int, ...], list[_Group]],
        progress: Callable[[int], None] | None,
    ) -> None:
        def task(sample: tuple[int, ...], region: Region) -> list[Any]:
            groups = by_sample[sample]
            chunk = np.asarray(read(sample, region))
            if self.dtype.kind == "f" and not np.all(np.isfinite(chunk)):
                raise errors.InvalidTensorError(
                    f"input {self.tensor_id!r} holds NaN or infinite values: its statistics "
                    "(and the model's output) would be NaN",
                    details={"tensor": self.tensor_id},
                )
            parts = []
            for g in groups:
                flat, rows = _flat(chunk, region, self.dims, g)
                histogram = extremes = None
                if g.ranks and self._offset is not None:
                    shifted = flat.astype(np.int64) + self._offset
                    histogram = np.stack(
                        [np.bincount(row, minlength=HISTOGRAM_BINS) for row in shifted]
                    )
                elif g.ranks:
                    extremes = (flat.min(axis=1), flat.max(axis=1))
                parts.append((rows, Moments.of(flat), histogram, extremes))
            if progress is not None:
                progress(chunk.nbytes)
            return parts

        tasks = [(sample, region) for sample in by_sample for region in self.regions]
        # in order: merged the same way every run
        samples = [sample for sample, _ in tasks]
        regions = [region for _, region in tasks]
        for sample, parts in zip(samples, pool.map(task, samples, regions), strict=True):
            groups = by_sample[sample]
            for g, (rows, moments, histogram, extremes) in zip(groups, parts, strict=True):
                g.moments.merge(moments, rows)
                if histogram is not None:
                    if g.histogram is None:
                        g.histogram = np.zeros((math.prod(g.kept_shape), HISTOGRAM_BINS), np.int64)
                    g.histogram[rows] += histogram
                if extremes is not None:
                    if g.extremes is None:
                        size = math.prod(g.kept_shape)
                        g.extremes = (np.full(size, np.inf), np.full(size, -np.inf))
                    np.minimum.at(g.extremes[0], rows, extremes[0].astype(np.float64))
                    np.maximum.at(g.extremes[1], rows, extremes[1].astype(np.float64))
        for groups in by_sample.values():
            for g in groups:
                if g.extremes is not None:
                    g.search = RankSearch(g.ranks, *g.extremes)

    def _search_pass(
        self,
        pool: ThreadPoolExecutor,
        read: ReadRegion,
        sample: tuple[int, ...],
        groups: list[_Group],
        progress: Callable[[int], None] | None,
    ) -> None:
        searching = [g for g in groups if g.search is not None and g.search.pending]

        def task(region: Region) -> list[Any]:
            chunk = np.asarray(read(sample, region))
            parts = [
                g.search.partial(*_flat(chunk, region, self.dims, g))  # type: ignore[union-attr]
                for g in searching
            ]
            if progress is not None:
                progress(chunk.nbytes)
            return parts

        totals: list[Any] = [None] * len(searching)
        for parts in pool.map(task, self.regions):
            for i, (g, part) in enumerate(zip(searching, parts, strict=True)):
                totals[i] = g.search.merge(totals[i], part)  # type: ignore[union-attr]
        for g, total in zip(searching, totals, strict=True):
            g.search.narrow(total)  # type: ignore[union-attr]

    def _finish(self, g: _Group) -> list[SampleStatistic]:
        out = []
        for m in g.measures:
            if m.name == "quantile":
                value = self._quantile(g, m)
            else:
                var = g.moments.m2 / g.moments.n
                value = {"mean": g.moments.mean, "var": var, "std": np.sqrt(var)}[m.name]
            out.append(
                SampleStatistic(
                    tensor_id=self.tensor_id,
                    name=m.name,  # type: ignore[arg-type]
                    axes=m.axes,
                    q=m.q,
                    method=m.method,  # type: ignore[arg-type]
                    dims=g.kept,
                    shape=g.kept_shape,
                    values=tuple(float(v) for v in np.asarray(value, np.float64).ravel()),
                )
            )
        return out

    def _quantile(self, g: _Group, m: RequiredMeasure) -> np.ndarray:
        """numpy's quantile from the values at its ranks (its ``_lerp`` for ``linear``)."""
        values = [self._value_at(g, r) for r in _quantile_ranks(m, g.count)]
        if len(values) == 1:
            return values[0]
        a, b = values
        h = (g.count - 1) * m.q
        t = h - math.floor(h)
        return np.asarray(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)

    def _value_at(self, g: _Group, rank: int) -> np.ndarray:
        if g.histogram is not None:
            assert self._offset is not None
            cumulative = np.cumsum(g.histogram, axis=1)
            return np.array(
                [np.searchsorted(row, rank, side="right") - self._offset for row in cumulative],
                np.float64,
            )
        assert g.search is not None
        return g.search.value(rank)


def _quantile_ranks(m: RequiredMeasure, n: int) -> list[int]:
    if m.method == "inverted_cdf":
        return [min(max(math.ceil(n * m.q) - 1, 0), n - 1)]
    h = (n - 1) * m.q
    low = math.floor(h)
    return [low] if low == h or low + 1 >= n else [low, low + 1]


def _slabs(
    shape: Sequence[int], itemsize: int, slab_bytes: int, chunks: Sequence[int] | None
) -> list[Region]:
    """Regions covering ``shape``: slabs along its first axis longer than 1 of at most about
    ``slab_bytes`` each, their edges on the chunk grid; where one chunk's slab is too large, that
    slab is cut along the next axes too."""
    full = tuple(slice(0, s) for s in shape)
    axis = next((i for i, s in enumerate(shape) if s > 1), None)
    if axis is None:
        return [full]
    row = math.prod(shape[axis + 1 :]) * itemsize
    chunk = chunks[axis] if chunks is not None and chunks[axis] > 0 else 1
    step = max(chunk, slab_bytes // max(1, row) // chunk * chunk)
    rest: list[Region] = [full[axis + 1 :]]
    if step * row > 2 * slab_bytes and axis + 1 < len(shape):
        rest = _slabs(
            shape[axis + 1 :], itemsize * step, slab_bytes, chunks[axis + 1 :] if chunks else None
        )
    return [
        (*full[:axis], slice(start, min(start + step, shape[axis])), *tail)
        for start in range(0, shape[axis], step)
        for tail in rest
    ]
