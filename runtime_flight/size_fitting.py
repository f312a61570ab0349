"""How an input of any size is fitted to a model: whole, padded or tiled.

* **whole**: every axis already has a valid size; the sample goes to the model as it is.
* **padded**: some space/time axis is smaller than, or between, the model's valid sizes (fixed
  size, or ``min + n*step``); it is padded *at the end* to the nearest valid size with the
  input's pad mode (``pad`` in the description, else symmetric), and outputs are cropped back to
  the size that corresponds to the original input. Padding at the end keeps output coordinates
  aligned with the input's origin for any output scale, so cropping is ``[0:size]``.
* **tiled**: the image is larger than any valid size (a fixed-size model), larger than
  ``max_tile_input_bytes``, or the client asked for a ``blocksize``: bioimageio.core's blockwise
  prediction runs, with block sizes capped at the (padded) image, so an image smaller than a
  block is padded to one block instead of failing (bioimageio.core refuses samples smaller than
  its blocks).

Output sizes come from each output axis' size reference and scales. An output axis whose size is
fixed to the same number as an input axis of the same id and type (CAREamics exports describe
their outputs like this) is treated as following that input axis, so such models can be padded
and tiled too.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from bioimageio.core.common import MemberId, PadWidth
from bioimageio.spec.model import v0_5

from modelrunner.errors import InvalidArgumentError

from .input_mapping import tensor_error

logger = logging.getLogger(__name__)

AxisKey = tuple[MemberId, v0_5.AxisId]
Shapes = Mapping[MemberId, Mapping[v0_5.AxisId, int]]

_SPATIAL = ("space", "time")


@dataclass(frozen=True)
class FitPlan:
    mode: Literal["whole", "padded", "tiled"]
    pad: dict[MemberId, dict[v0_5.AxisId, PadWidth]] = field(default_factory=dict)
    """End padding applied to the (preprocessed) sample before prediction."""
    ns: dict[AxisKey, int] = field(default_factory=dict)
    """``tiled``: bioimageio.core's block size parameter per parameterized input axis."""
    block_batch: int = 1
    """``tiled``: the batch size of one block."""
    output_sizes: dict[MemberId, dict[v0_5.AxisId, int]] = field(default_factory=dict)
    """Sizes the outputs are cropped to (only axes whose size follows an input)."""
    block_shape: dict[MemberId, dict[v0_5.AxisId, int]] = field(default_factory=dict)


def implied_references(descr: v0_5.ModelDescr) -> dict[AxisKey, AxisKey]:
    """Output space/time axes of fixed size that follow an input axis of the same id, type,
    scale and fixed size: (output, axis) -> (input, axis)."""
    implied: dict[AxisKey, AxisKey] = {}
    for out in descr.outputs:
        for a in out.axes:
            if a.type not in _SPATIAL or not isinstance(a.size, int):
                continue
            candidates = [
                (t.id, ia.id)
                for t in descr.inputs
                for ia in t.axes
                if ia.id == a.id
                and ia.type == a.type
                and isinstance(ia.size, int)
                and ia.size == a.size
                and ia.scale == a.scale
            ]
            if len(candidates) == 1:
                implied[(out.id, a.id)] = candidates[0]
    return implied


def valid_size(a: v0_5.InputAxis, size: int) -> int:
    """The smallest valid size of ``a`` that is at least ``size`` (references excluded)."""
    rule = a.size
    if isinstance(a, v0_5.BatchAxis):
        return 1 if rule == 1 else size
    if isinstance(a, v0_5.ChannelAxis):
        return size
    if isinstance(rule, int):
        return rule
    if isinstance(rule, v0_5.ParameterizedSize):
        return rule.get_size(max(0, rule.get_n(size)))
    raise AssertionError(f"no valid size rule for axis {a.id}")


def plan_fit(
    descr: v0_5.ModelDescr,
    shape: Shapes,
    *,
    blocksize: int | None,
    max_tile_input_bytes: int,
    itemsize: Mapping[MemberId, int],
) -> FitPlan:
    """Decide how to run a sample of ``shape`` (input id -> axis id -> size)."""
    inputs = {t.id: t for t in descr.inputs if t.id in shape}
    targets = _whole_targets(descr, inputs, shape)
    too_big = _too_big(inputs, shape)
    batch_split = any(
        isinstance(a, v0_5.BatchAxis) and a.size == 1 and shape[t][a.id] > 1
        for t, d in inputs.items()
        for a in d.axes
    )
    whole_bytes = _bytes(targets, itemsize)
    has_parameterized = any(
        isinstance(a.size, v0_5.ParameterizedSize) for d in inputs.values() for a in d.axes
    )
    wants_tiles = blocksize is not None or (
        whole_bytes > max_tile_input_bytes and has_parameterized
    )
    if too_big or batch_split or wants_tiles:
        problem = _untileable(descr)
        if problem is None:
            return _tiled_plan(descr, inputs, shape, blocksize, max_tile_input_bytes, itemsize)
        if too_big or batch_split:
            tensor, axis, size, limit = too_big or batch_split_info(inputs, shape)
            raise tensor_error(
                str(tensor),
                str(axis),
                f"at most {limit}",
                size,
                f"input '{tensor}' axis '{axis}' has size {size}, more than the model takes "
                + f"({limit}), and the model cannot be predicted tile by tile: {problem}",
            )
        if blocksize is not None:
            raise InvalidArgumentError(
                f"this model cannot be predicted tile by tile (blocksize {blocksize}): {problem}",
                details={"blocksize": blocksize},
            )
    pad = _end_padding(inputs, shape, targets)
    if not pad:
        return FitPlan(mode="whole")
    return FitPlan(mode="padded", pad=pad, output_sizes=output_sizes(descr, shape))


class PlanCache:
    """The plans of the input shapes a warm pipeline saw last (a microscope sends the same shape
    over and over): :func:`plan_fit` once per shape, blocksize and limit. Thread-safe."""

    SIZE = 16

    def __init__(self, descr: v0_5.ModelDescr, itemsize: Mapping[MemberId, int]) -> None:
        self._descr = descr
        self._itemsize = dict(itemsize)
        self._plans: OrderedDict[Hashable, FitPlan] = OrderedDict()
        self._lock = threading.Lock()

    def plan(self, shapes: Shapes, *, blocksize: int | None, max_tile_input_bytes: int) -> FitPlan:
        key = (
            tuple((m, tuple(sizes.items())) for m, sizes in shapes.items()),
            blocksize,
            max_tile_input_bytes,
        )
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                return plan
        plan = plan_fit(
            self._descr,
            shapes,
            blocksize=blocksize,
            max_tile_input_bytes=max_tile_input_bytes,
            itemsize=self._itemsize,
        )
        logger.debug("predicting %s as %s", dict(shapes), plan)
        with self._lock:
            self._plans[key] = plan
            while len(self._plans) > self.SIZE:
                self._plans.popitem(last=False)
        return plan


def batch_split_info(
    inputs: Mapping[MemberId, v0_5.InputTensorDescr], shape: Shapes
) -> tuple[MemberId, v0_5.AxisId, int, int]:
    for t, d in inputs.items():
        for a in d.axes:
            if isinstance(a, v0_5.BatchAxis) and shape[t][a.id] > 1:
                return t, a.id, shape[t][a.id], 1
    raise AssertionError("no batch axis to split")


def _whole_targets(
    descr: v0_5.ModelDescr, inputs: Mapping[MemberId, v0_5.InputTensorDescr], shape: Shapes
) -> dict[MemberId, dict[v0_5.AxisId, int]]:
    """The smallest valid size of every input axis that holds the given size (the whole image,
    batch excepted: a fixed batch of 1 is split, not padded)."""
    targets: dict[MemberId, dict[v0_5.AxisId, int]] = {}
    for t, d in inputs.items():
        targets[t] = {}
        for a in d.axes:
            size = shape[t][a.id]
            if isinstance(a, v0_5.BatchAxis) or a.type == "index":
                targets[t][a.id] = size
            elif not isinstance(a.size, v0_5.SizeReference):
                targets[t][a.id] = max(size, valid_size(a, size))
    all_axes = {t.id: {a.id: a for a in t.axes} for t in descr.inputs}
    for t, d in inputs.items():
        for a in d.axes:
            if not isinstance(a.size, v0_5.SizeReference) or a.id in targets[t]:
                continue
            ref = a.size
            ref_axis = all_axes[ref.tensor_id][ref.axis_id]
            ref_size = targets.get(ref.tensor_id, {}).get(ref.axis_id)
            if ref_size is None:
                targets[t][a.id] = shape[t][a.id]
                continue
            target = int(ref_size * ref_axis.scale / a.scale + ref.offset)
            size = shape[t][a.id]
            if size > target:
                raise tensor_error(
                    str(t),
                    str(a.id),
                    target,
                    size,
                    f"input '{t}' axis '{a.id}' has size {size}, but its size follows "
                    + f"'{ref.tensor_id}' axis '{ref.axis_id}': expected {target} (or less, "
                    + "to be padded)",
                )
            targets[t][a.id] = target
    return targets


def _too_big(
    inputs: Mapping[MemberId, v0_5.InputTensorDescr], shape: Shapes
) -> tuple[MemberId, v0_5.AxisId, int, int] | None:
    for t, d in inputs.items():
        for a in d.axes:
            if a.type in _SPATIAL and isinstance(a.size, int) and shape[t][a.id] > a.size:
                return t, a.id, shape[t][a.id], a.size
    return None


def _bytes(sizes: Mapping[MemberId, Mapping[v0_5.AxisId, int]], itemsize: Mapping) -> int:
    return sum(math.prod(s.values()) * itemsize.get(t, 4) for t, s in sizes.items())


def _end_padding(
    inputs: Mapping[MemberId, v0_5.InputTensorDescr],
    shape: Shapes,
    targets: Mapping[MemberId, Mapping[v0_5.AxisId, int]],
) -> dict[MemberId, dict[v0_5.AxisId, PadWidth]]:
    pad: dict[MemberId, dict[v0_5.AxisId, PadWidth]] = {}
    for t in inputs:
        for axis, target in targets[t].items():
            missing = target - shape[t][axis]
            if missing > 0:
                pad.setdefault(t, {})[axis] = PadWidth(0, missing)
    return pad


def _untileable(descr: v0_5.ModelDescr) -> str | None:
    """Why bioimageio.core's blockwise prediction cannot assemble this model's outputs, or None."""
    implied = implied_references(descr)
    for out in descr.outputs:
        for a in out.axes:
            if isinstance(a.size, v0_5.DataDependentSize):
                return f"output '{out.id}' axis '{a.id}' has a data-dependent size"
            if a.type in _SPATIAL and isinstance(a.size, int) and (out.id, a.id) not in implied:
                return f"output '{out.id}' axis '{a.id}' has the fixed size {a.size}"
    return None


def _tiled_plan(
    descr: v0_5.ModelDescr,
    inputs: Mapping[MemberId, v0_5.InputTensorDescr],
    shape: Shapes,
    blocksize: int | None,
    max_tile_input_bytes: int,
    itemsize: Mapping[MemberId, int],
) -> FitPlan:
    cover: dict[AxisKey, int] = {
        (t, a.id): max(0, a.size.get_n(shape[t][a.id]))
        for t, d in inputs.items()
        for a in d.axes
        if isinstance(a.size, v0_5.ParameterizedSize)
    }
    block_batch = max(
        (
            1 if a.size == 1 else shape[t][a.id]
            for t, d in inputs.items()
            for a in d.axes
            if isinstance(a, v0_5.BatchAxis)
        ),
        default=1,
    )

    def ns_for(m: int) -> dict[AxisKey, int]:
        return {k: min(m, n) for k, n in cover.items()}

    def block(m: int) -> dict[MemberId, dict[v0_5.AxisId, int]]:
        sizes = descr.get_tensor_sizes(ns_for(m), batch_size=block_batch).inputs
        return {t: dict(s) for t, s in sizes.items() if t in inputs}

    # bioimageio.spec guarantees blocks larger than twice the halo, for every n
    if blocksize is not None:
        m = blocksize
    else:
        top = max(cover.values(), default=0)
        m = _largest(0, top, lambda k: _bytes(block(k), itemsize) <= max_tile_input_bytes)
    blocks = block(m)
    targets = {t: {a: max(shape[t][a], s) for a, s in sizes.items()} for t, sizes in blocks.items()}
    return FitPlan(
        mode="tiled",
        pad=_end_padding(inputs, shape, targets),
        ns=ns_for(m),
        block_batch=block_batch,
        output_sizes=output_sizes(descr, shape),
        block_shape=blocks,
    )


def _largest(low: int, high: int, fits: Callable[[int], bool]) -> int:
    """The largest k in [low, high] with fits(k) (monotonic), else low."""
    if fits(high):
        return high
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return low


def _text(sizes: Mapping[MemberId, Mapping[v0_5.AxisId, object]]) -> str:
    return "; ".join(
        f"{t}: " + ", ".join(f"{a}={s}" for a, s in axes.items()) for t, axes in sizes.items()
    )


def axis_scales(descr: v0_5.ModelDescr) -> dict[MemberId, dict[v0_5.AxisId, float]]:
    """tensor id -> axis id -> scale, for inputs and outputs."""
    scales = {t.id: {a.id: a.scale for a in t.axes} for t in descr.inputs}
    scales.update({t.id: {a.id: a.scale for a in t.axes} for t in descr.outputs})
    return scales


def output_sizes(descr: v0_5.ModelDescr, shape: Shapes) -> dict[MemberId, dict[v0_5.AxisId, int]]:
    """The size of every output axis that follows an input axis, for inputs of ``shape``."""
    implied = implied_references(descr)
    scales = axis_scales(descr)
    sizes: dict[MemberId, dict[v0_5.AxisId, int]] = {}
    known: dict[MemberId, Mapping[v0_5.AxisId, int]] = dict(shape)
    # outputs may reference outputs that reference inputs: resolve in two rounds
    for _ in range(2):
        for out in descr.outputs:
            for a in out.axes:
                if isinstance(a.size, v0_5.SizeReference):
                    ref: AxisKey | None = (a.size.tensor_id, a.size.axis_id)
                    offset = a.size.offset
                else:
                    ref, offset = implied.get((out.id, a.id)), 0
                if ref is None or ref[1] not in known.get(ref[0], {}):
                    continue
                ratio = scales[ref[0]][ref[1]] / a.scale
                sizes.setdefault(out.id, {})[a.id] = (
                    math.floor(known[ref[0]][ref[1]] * ratio) + offset
                )
        known = {**dict(shape), **sizes}
    return sizes
