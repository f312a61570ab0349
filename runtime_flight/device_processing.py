"""bioimage.io pre- and postprocessing as torch operations on the model's device.

bioimageio.core applies every processing step to xarray objects in numpy, on one CPU core, one
sample at a time. Here the same steps run as torch operations on the tensors the network takes
and gives, on the pipeline's device (a GPU, or every CPU core), without xarray objects.

The steps are read from bioimageio.core's own interpretation of a description
(:func:`bioimageio.core.proc_setup.setup_pre_and_postprocessing`), so axes, statistics, quantile
methods and defaults are those of the reference; each of its operators maps to one small step
here. Semantics mirrored on purpose:

* sample statistics of an input are computed on the input as it arrives, before any
  preprocessing (bioimageio.core computes them in its first operator, ``UpdateStats``);
  statistics of an output on the output when a step first needs them;
* means skip NaN values and variances do not (xarray's ``mean`` and ``dot``); quantiles skip NaN
  values and use numpy's ``linear`` or ``inverted_cdf`` method, as bioimageio.core asks for;
* per-axis parameters (``scale_linear``, ``binarize``, ``fixed_zero_mean_unit_variance`` along
  an axis) broadcast along that axis.

What has no device form here (dataset statistics, which bioimageio.core accumulates across every
sample a pipeline sees; custom or model-specific operators; steps that create new members) makes
:func:`processing_for` raise :class:`Unsupported` with the reason, and the model is served by
bioimageio.core's pipeline instead (:mod:`.fast_path`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from bioimageio.core import proc_ops
from bioimageio.core.proc_setup import setup_pre_and_postprocessing
from bioimageio.core.stat_measures import (
    SampleMean,
    SampleQuantile,
    SampleStd,
    SampleVar,
)
from bioimageio.spec.model import v0_5

Tensors = dict[str, torch.Tensor]


class Unsupported(Exception):
    """A description whose processing has no device form here; the message says why."""


@dataclass(frozen=True)
class Measure:
    """A sample statistic of one member, reduced over some of its axes (all when None)."""

    member: str
    kind: str
    """"mean", "var", "std" or "quantile"."""
    dims: tuple[int, ...] | None
    q: float = 0.0
    method: str = "linear"


@dataclass
class Statistics:
    """The statistics of one call, computed once each when a step first asks for them."""

    measures: Mapping[Any, Measure]
    raw_inputs: Tensors
    """Inputs as they arrived: input statistics are computed on these."""
    nan_possible: bool
    current: Tensors = field(default_factory=dict)
    """Members as they are now (outputs, once the network has run)."""
    _values: dict[Measure, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, key: Any) -> torch.Tensor:
        measure = self.measures[key]
        value = self._values.get(measure)
        if value is None:
            source = self.raw_inputs.get(measure.member)
            if source is None:
                source = self.current[measure.member]
            value = self._values[measure] = _compute(measure, source, self.nan_possible)
        return value


Step = Callable[[torch.Tensor, Statistics], torch.Tensor]


@dataclass(frozen=True)
class MemberSteps:
    member: str
    steps: tuple[Step, ...]
    names: tuple[str, ...]
    cast_to: str | None = None
    """The dtype the steps end in when every one of them is an ``ensure_dtype``."""


@dataclass(frozen=True)
class Processing:
    """A model's preprocessing (per input) and postprocessing (per output) as device steps."""

    pre: tuple[MemberSteps, ...]
    post: tuple[MemberSteps, ...]
    measures: Mapping[Any, Measure]

    def statistics(self, raw_inputs: Tensors, *, nan_possible: bool) -> Statistics:
        return Statistics(self.measures, raw_inputs, nan_possible)

    def preprocess(self, inputs: Tensors, stats: Statistics) -> Tensors:
        out = dict(inputs)
        for member in self.pre:
            x = out[member.member]
            for step in member.steps:
                x = step(x, stats)
            out[member.member] = x
        return out

    def casts(self) -> tuple[dict[str, str], dict[str, str]] | None:
        """When every step only ensures a dtype (no statistics): the dtype of each input and
        output they end in, so numpy can do them; None otherwise."""
        members = (*self.pre, *self.post)
        if self.measures or any(m.cast_to is None for m in members):
            return None
        return (
            {m.member: m.cast_to for m in self.pre if m.cast_to is not None},
            {m.member: m.cast_to for m in self.post if m.cast_to is not None},
        )

    def postprocess(self, outputs: Tensors, stats: Statistics) -> Tensors:
        out = dict(outputs)
        stats.current = out
        for member in self.post:
            if member.member not in out:
                continue
            x = out[member.member]
            for step in member.steps:
                x = step(x, stats)
            out[member.member] = x
        return out


def processing_for(descr: v0_5.ModelDescr, device: torch.device) -> Processing:
    """The description's processing as device steps.

    Raises:
        Unsupported: a step or statistic has no device form here.
    """
    tensors: list[Any] = [*descr.inputs, *descr.outputs]
    axes = {str(t.id): [str(a.id) for a in t.axes] for t in tensors}
    setup = setup_pre_and_postprocessing(descr, dataset_for_initial_statistics=())
    measures: dict[Any, Measure] = {}
    builder = _StepBuilder(axes, measures, device)
    pre = builder.members(setup.pre)
    post = builder.members(setup.post)
    return Processing(pre=pre, post=post, measures=measures)


class _StepBuilder:
    def __init__(
        self, axes: Mapping[str, list[str]], measures: dict[Any, Measure], device: torch.device
    ) -> None:
        self.axes, self.measures, self.device = axes, measures, device

    def members(self, ops: Sequence[Any]) -> tuple[MemberSteps, ...]:
        steps: dict[str, list[tuple[str, Step]]] = {}
        casts: dict[str, str | None] = {}
        for op in ops:
            if isinstance(op, proc_ops.UpdateStats):
                continue  # statistics are computed on demand (:class:`Statistics`)
            name = type(op).__name__
            member = str(getattr(op, "input", ""))
            if not member or str(getattr(op, "output", "")) != member:
                raise Unsupported(f"processing step {name} creates or renames a tensor")
            if member not in self.axes:
                raise Unsupported(f"processing step {name} refers to unknown tensor {member!r}")
            steps.setdefault(member, []).append((name, self.step(op, member)))
            cast = str(op.dtype) if isinstance(op, proc_ops.EnsureDtype) else None
            # a member's steps are casts only when every one is: the last dtype wins
            casts[member] = cast if cast is not None and casts.get(member, "") is not None else None
        return tuple(
            MemberSteps(m, tuple(s for _, s in pairs), tuple(n for n, _ in pairs), casts.get(m))
            for m, pairs in steps.items()
        )

    def step(self, op: Any, member: str) -> Step:
        if isinstance(op, proc_ops.EnsureDtype):
            dtype = _torch_dtype(str(op.dtype))
            return lambda x, s: x if x.dtype == dtype else x.to(dtype)
        if isinstance(op, proc_ops.Sigmoid):
            return lambda x, s: torch.sigmoid(_floating(x))
        if isinstance(op, proc_ops.Softmax):
            dim = self.dim(member, str(op.axis))
            return lambda x, s: torch.softmax(_floating(x), dim=dim)
        if isinstance(op, proc_ops.Binarize):
            threshold = self.along(member, op.threshold, op.axis)
            return lambda x, s: x > threshold
        # one new tensor per step: the first operation makes it, the rest work on it in place
        if isinstance(op, proc_ops.ScaleLinear):
            gain = self.parameter(member, op.gain)
            offset = self.parameter(member, op.offset)
            return lambda x, s: torch.mul(_floating(x), gain).add_(offset)
        if isinstance(op, proc_ops.FixedZeroMeanUnitVariance):
            mean = self.parameter(member, op.mean)
            std = self.parameter(member, op.std)
            eps = op.eps
            return lambda x, s: torch.sub(_floating(x), mean).div_(std + eps)
        if isinstance(op, proc_ops.ZeroMeanUnitVariance):
            mean, std, eps = self.measure(member, op.mean), self.measure(member, op.std), op.eps
            return lambda x, s: torch.sub(_floating(x), s[mean]).div_(s[std] + eps)
        if isinstance(op, proc_ops.ScaleRange):
            lower, upper = self.measure(member, op.lower), self.measure(member, op.upper)
            eps = op.eps
            return lambda x, s: torch.sub(_floating(x), s[lower]).div_(s[upper] - s[lower] + eps)
        if isinstance(op, proc_ops.ScaleMeanVariance):
            m, sd = self.measure(member, op.mean), self.measure(member, op.std)
            rm, rsd = self.measure(member, op.ref_mean), self.measure(member, op.ref_std)
            eps = op.eps
            return lambda x, s: (_floating(x) - s[m]) / (s[sd] + eps) * (s[rsd] + eps) + s[rm]
        if isinstance(op, proc_ops.Clip):
            return self.clip(member, op.min, op.max)
        raise Unsupported(f"processing step {type(op).__name__} has no device implementation")

    # -- parameters and statistics ---------------------------------------------------------

    def dim(self, member: str, axis: str) -> int:
        try:
            return self.axes[member].index(axis)
        except ValueError:
            raise Unsupported(f"tensor {member!r} has no axis {axis!r}") from None

    def parameter(self, member: str, value: Any) -> torch.Tensor | float:
        """A float, or an ``xarray.DataArray`` along one axis, broadcastable to the member."""
        if isinstance(value, (int, float)):
            return float(value)
        dims = tuple(str(d) for d in getattr(value, "dims", ()))
        data = np.asarray(getattr(value, "values", value), dtype=np.float64)
        if not dims:
            return float(data)
        if len(dims) != 1:
            raise Unsupported(f"a parameter of {member!r} varies along several axes {dims}")
        return self.along(member, data.tolist(), dims[0])

    def along(self, member: str, values: Any, axis: Any) -> torch.Tensor | float:
        if axis is None:
            values = values[0] if isinstance(values, Sequence) else values
            return float(values)
        dim = self.dim(member, str(axis))
        shape = [1] * len(self.axes[member])
        shape[dim] = -1
        return torch.tensor(values, dtype=torch.float32, device=self.device).reshape(shape)

    def clip(self, member: str, low: Any, high: Any) -> Step:
        """Constant bounds clip (NaN stays NaN); quantile bounds replace what is not within
        them, NaN included, as bioimageio.core's ``where`` does."""
        low_key = (
            None if low is None or isinstance(low, (int, float)) else self.measure(member, low)
        )
        high_key = (
            None if high is None or isinstance(high, (int, float)) else self.measure(member, high)
        )
        low_value = float(low) if isinstance(low, (int, float)) else None
        high_value = float(high) if isinstance(high, (int, float)) else None

        def clip(x: torch.Tensor, s: Statistics) -> torch.Tensor:
            if low_key is not None:
                bound = s[low_key]
                x = torch.where(x >= bound, x, bound.to(x.dtype))
            if high_key is not None:
                bound = s[high_key]
                x = torch.where(x <= bound, x, bound.to(x.dtype))
            if low_value is not None or high_value is not None:
                x = torch.clamp(x, low_value, high_value)
            return x

        return clip

    def measure(self, member: str, m: Any) -> Any:
        """Register bioimageio.core's measure ``m`` (used on ``member``); returns its key."""
        if m in self.measures:
            return m
        source = str(m.member_id)
        if source not in self.axes:
            raise Unsupported(f"a statistic refers to unknown tensor {source!r}")
        if source != member and self.axes[source] != self.axes[member]:
            raise Unsupported(
                f"a statistic of {source!r} is applied to {member!r}, whose axes differ"
            )
        if isinstance(m, SampleMean):
            kind = "mean"
        elif isinstance(m, SampleVar):
            kind = "var"
        elif isinstance(m, SampleStd):
            kind = "std"
        elif isinstance(m, SampleQuantile):
            kind = "quantile"
        else:
            raise Unsupported(
                f"{type(m).__name__} of {source!r}: dataset statistics accumulate across every "
                + "sample a bioimageio.core pipeline sees"
            )
        dims = None if m.axes is None else tuple(self.dim(source, str(a)) for a in m.axes)
        self.measures[m] = Measure(
            member=source,
            kind=kind,
            dims=dims,
            q=float(getattr(m, "q", 0.0)),
            method=str(getattr(m, "method", "linear")),
        )
        return m


# -- operations ------------------------------------------------------------------------------

_DTYPES = {
    "bool": torch.bool,
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint8": torch.uint8,
    "uint16": torch.uint16,
    "uint32": torch.uint32,
    "uint64": torch.uint64,
}


def _torch_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise Unsupported(f"dtype {name!r} has no torch equivalent") from None


def _floating(x: torch.Tensor) -> torch.Tensor:
    """Arithmetic on integer data happens in floating point, as numpy's would."""
    return x if x.is_floating_point() else x.to(torch.float64)


def _compute(measure: Measure, x: torch.Tensor, nan_possible: bool) -> torch.Tensor:
    dims = tuple(range(x.ndim)) if measure.dims is None else measure.dims
    x = _floating(x)
    if measure.kind == "quantile":
        if nan_possible and bool(torch.isnan(x).any()):
            return _nan_quantile(x, measure.q, dims, measure.method)
        return quantile(x, measure.q, dims, measure.method)
    mean = torch.nanmean(x, dim=dims, keepdim=True) if nan_possible else None
    if measure.kind == "mean":
        return mean if mean is not None else x.mean(dim=dims, keepdim=True)
    if mean is None:
        var, _ = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
    else:
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    return var if measure.kind == "var" else torch.sqrt(var)


def quantile(x: torch.Tensor, q: float, dims: Sequence[int], method: str) -> torch.Tensor:
    """numpy's ``quantile(x, q, axis=dims, method=method, keepdims=True)`` for ``linear`` and
    ``inverted_cdf``, by selection (no sort of the whole tensor, and no size limit, unlike
    ``torch.quantile``)."""
    keep = [d for d in range(x.ndim) if d not in dims]
    flat = x.permute(*keep, *dims).reshape(-1, math.prod(x.shape[d] for d in dims))
    n = flat.shape[-1]
    if method == "inverted_cdf":
        k = min(max(math.ceil(n * q) - 1, 0), n - 1)
        value = torch.stack([_order_statistics(row, (k,))[0] for row in flat])
    elif method == "linear":
        position = q * (n - 1)
        low = min(math.floor(position), n - 1)
        high = min(low + 1, n - 1)
        t = position - low
        pairs = [_order_statistics(row, (low, high)) for row in flat]
        below = torch.stack([p[0] for p in pairs])
        above = torch.stack([p[1] for p in pairs])
        # numpy's lerp, exact at both ends
        value = above - (above - below) * (1 - t) if t >= 0.5 else below + (above - below) * t
    else:
        raise Unsupported(f"quantile method {method!r} has no device implementation")
    shape = [1 if d in dims else x.shape[d] for d in range(x.ndim)]
    return value.reshape(shape)


_SAMPLE = 1 << 14
"""Rows longer than four samples select their order statistics within a band bounded by a
sample of this many values (on the CPU)."""


def _order_statistics(row: torch.Tensor, ks: Sequence[int]) -> list[torch.Tensor]:
    """The ``ks``-th smallest values of a 1-D tensor (0-based; ``ks`` close together).

    On a GPU, ``kthvalue`` selects over the whole row. On the CPU it runs on one core and moves
    the data several times, so a long row instead gives a sample (every m-th value) whose order
    statistics bound the wanted ones with a wide margin; one pass takes the values within the
    band (counting those below it), and the selection runs on that small array. When the bounds
    turn out not to hold (the count says so), the whole row is selected: the result is exact
    either way. numpy does these passes faster than torch here.
    """
    n = row.numel()
    if row.device.type != "cpu" or n <= 4 * _SAMPLE:
        return [torch.kthvalue(row, k + 1).values for k in ks]
    values = _select_in_band(row.contiguous().numpy(), ks)
    return [torch.as_tensor(v) for v in values]


def _select_in_band(row: np.ndarray, ks: Sequence[int]) -> list[Any]:
    n = row.size
    sample = np.sort(row[:: n // _SAMPLE])
    m = sample.size
    margin = 6 * math.sqrt(m) + 16
    first = int(min(ks) / n * m - margin)
    last = int(max(ks) / n * m + margin)
    if first > 0 or last < m - 1:
        # a band open at one end when the wanted ranks are near that end of the row
        if first <= 0:
            below, inside = 0, row <= sample[last]
        elif last >= m - 1:
            inside = row >= sample[first]
            below = n - int(np.count_nonzero(inside))
        else:
            inside = row >= sample[first]
            below = n - int(np.count_nonzero(inside))
            inside &= row <= sample[last]
        band = row[inside]
        if below <= min(ks) and max(ks) < below + band.size:
            selected = np.partition(band, [k - below for k in ks])
            return [selected[k - below] for k in ks]
    selected = np.partition(row, list(ks))
    return [selected[k] for k in ks]


def _nan_quantile(x: torch.Tensor, q: float, dims: Sequence[int], method: str) -> torch.Tensor:
    """With NaN values present, numpy's own ``nanquantile`` (rare: inputs with NaN are refused
    unless the caller allows them)."""
    values = np.nanquantile(
        x.detach().cpu().numpy(),
        q,
        axis=tuple(dims),
        method=method,  # type: ignore[call-overload]
        keepdims=True,
    )
    return torch.as_tensor(values, device=x.device)
