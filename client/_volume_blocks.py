"""The block grid of a volume prediction: which input region each block reads (with the model's
halo), how it is padded at the volume's edges, and which output region it writes.

The grid is bioimageio.core's (``block_meta.split_shape_into_blocks``) on the volume padded at its
end to at least one block, as the runtime tiles an image itself (``runtime_flight/size_fitting.py``):

- along each of the model's space/time axes a block has the model's input size for the block size
  parameter ``n`` (``min + n * step``; a fixed size as it is), capped at the smallest valid size
  that covers the axis; the input halo is the outputs' halo in input pixels
  (``digest_spec.get_input_halo``);
- inner regions step by ``block - 2 * halo`` from 0; the last one is moved back to end at the
  volume's end, so every block has the full size; where a block reaches past the volume it is
  padded with the model's pad mode (``pad``, symmetric by default), reflecting the data the block
  holds, as bioimageio.core pads its blocks;
- bioimageio.core writes the blocks in order, each over its inner region, so where the last inner
  region overlaps the one before, the last block's values stay. Here each output pixel has one
  owner, that same block: blocks may then finish and be written in any order, by several
  runtimes, and the stitched result is bioimageio.core's.

Pure index arithmetic over the model's :class:`~modelrunner.types.TensorSpec`, no I/O.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelrunner import errors
from modelrunner.types import ParameterizedSize, SizeReference, TensorSpec

PAD_MODES = ("symmetric", "reflect", "edge", "constant")
BLOCKED_TYPES = ("space", "time")


@dataclass(frozen=True)
class PadMode:
    mode: str = "symmetric"
    value: float = 0.0

    @classmethod
    def from_description(cls, pad: Any) -> PadMode:
        """An input's ``pad`` as the description (the RDF) has it: None is bioimageio.core's
        default (symmetric); a mapping without ``mode`` reads back as constant padding."""
        if pad is None:
            return cls()
        if not isinstance(pad, Mapping):
            raise errors.InvalidArgumentError(f"the model's input pad {pad!r} is not a mapping")
        mode = str(pad.get("mode", "constant"))
        if mode not in PAD_MODES:
            raise errors.FailedPreconditionError(
                f"the model pads its input with mode {mode!r}, which block-wise prediction does "
                f"not know (it knows {', '.join(PAD_MODES)})"
            )
        return cls(mode, float(pad.get("value", 0.0) or 0.0))


@dataclass(frozen=True)
class AxisGrid:
    """One blocked axis: the volume's size, the block size and the halo on each side."""

    axis: str
    """The model's axis id."""
    size: int
    block: int
    halo: int

    @property
    def padded(self) -> int:
        """The volume padded at its end to one block, where it is smaller."""
        return max(self.size, self.block)

    @property
    def inner(self) -> int:
        return self.block - 2 * self.halo

    def starts(self) -> list[int]:
        """Start of each block's inner region (bioimageio.core's, on the padded axis)."""
        return [min(p, self.padded - self.inner) for p in range(0, self.padded, self.inner)]

    def owned(self, index: int) -> tuple[int, int]:
        """The output range block ``index`` writes, cropped to the volume: its inner range less
        the part the next block (which bioimageio.core writes later) covers."""
        starts = self.starts()
        start = starts[index]
        stop = starts[index + 1] if index + 1 < len(starts) else self.padded
        stop = min(stop, start + self.inner)
        return min(start, self.size), min(stop, self.size)

    def read_indices(self, index: int, pad: PadMode) -> np.ndarray:
        """The volume index each of the block's pixels along this axis comes from, as bioimageio
        .core pads a block (its data reflected) on the volume padded at its end; -1 for a
        constant-padded pixel."""
        start = self.starts()[index]
        outer_start = max(0, min(start - self.halo, self.padded - self.inner - self.halo))
        outer_stop = min(self.padded, start + self.inner + self.halo)
        left = self.halo - (start - outer_start)
        right = self.halo - (outer_stop - start - self.inner)
        end_padded = _pad_indices(np.arange(self.size), (0, self.padded - self.size), pad)
        outer = end_padded[outer_start:outer_stop]
        return _pad_indices(outer, (left, right), pad)


def _pad_indices(indices: np.ndarray, widths: tuple[int, int], pad: PadMode) -> np.ndarray:
    """numpy's own padding, of the indices instead of the values (-1: the constant)."""
    if widths == (0, 0):
        return indices
    if pad.mode == "constant":
        return np.pad(indices, widths, mode="constant", constant_values=-1)
    return np.pad(indices, widths, mode=pad.mode)  # type: ignore[call-overload]


@dataclass(frozen=True)
class Block:
    """One block of one sample (``sample``: the index along the volume's loop axes)."""

    index: int
    """0-based over the whole run, samples in order."""
    sample: tuple[int, ...]
    grid_index: tuple[int, ...]


@dataclass(frozen=True)
class BlockGrid:
    """The blocks of every sample of a volume. ``axes`` are the blocked model axes in the order
    they appear in the sent array (the file's order)."""

    axes: tuple[AxisGrid, ...]
    samples: tuple[int, ...]
    """Sizes of the loop axes (every index is one sample)."""
    pad: PadMode

    @property
    def per_sample(self) -> int:
        return math.prod(len(a.starts()) for a in self.axes)

    @property
    def total(self) -> int:
        return self.per_sample * math.prod(self.samples)

    def block(self, index: int) -> Block:
        if not 0 <= index < self.total:
            raise IndexError(index)
        sample_index, within = divmod(index, self.per_sample)
        sample = np.unravel_index(sample_index, self.samples) if self.samples else ()
        grid = np.unravel_index(within, [len(a.starts()) for a in self.axes])
        return Block(index, tuple(int(i) for i in sample), tuple(int(i) for i in grid))

    def blocks(self) -> Iterator[Block]:
        for i in range(self.total):
            yield self.block(i)

    def samples_indices(self) -> Iterator[tuple[int, ...]]:
        return itertools.product(*(range(n) for n in self.samples))

    def owned(self, block: Block) -> dict[str, tuple[int, int]]:
        """Output range per blocked axis (in output pixels: outputs follow the input 1:1)."""
        return {a.axis: a.owned(i) for a, i in zip(self.axes, block.grid_index, strict=True)}

    def owned_in_block(self, block: Block) -> dict[str, slice]:
        """Where the owned range lies in the block's output, which has the input's halo on
        each side (bioimageio.core crops the input halo from outputs too)."""
        out: dict[str, slice] = {}
        for a, i in zip(self.axes, block.grid_index, strict=True):
            start, stop = a.owned(i)
            local = a.halo + start - a.starts()[i]
            out[a.axis] = slice(local, local + stop - start)
        return out

    def is_empty(self, block: Block) -> bool:
        """The block writes nothing: its inner region lies in the padding past the volume's
        end (a volume smaller than one block along an axis)."""
        return any(stop <= start for start, stop in self.owned(block).values())

    def read_indices(self, block: Block) -> dict[str, np.ndarray]:
        return {
            a.axis: a.read_indices(i, self.pad)
            for a, i in zip(self.axes, block.grid_index, strict=True)
        }


def input_halo(spec: TensorSpec, outputs: Sequence[TensorSpec]) -> dict[str, int]:
    """The input halo per axis id, from the outputs' halos (``digest_spec.get_input_halo``:
    scaled by the axes' scales; where several outputs declare one, the last)."""
    scales = {a.id: a.scale for a in spec.axes}
    halo: dict[str, int] = {}
    for out in outputs:
        for a in out.axes:
            if not a.halo:
                continue
            size = a.size
            if not isinstance(size, SizeReference) or size.tensor_id != spec.id:
                raise errors.FailedPreconditionError(
                    f"output {out.id!r} axis {a.id!r} has a halo but its size does not follow "
                    f"input {spec.id!r}: it cannot be predicted block by block"
                )
            value = a.halo * a.scale / scales[size.axis_id]
            if value != int(value):
                raise errors.FailedPreconditionError(
                    f"output {out.id!r} axis {a.id!r}: its halo is {value} input pixels, not a "
                    "whole number"
                )
            halo[a.id] = int(value)
    return halo


def check_outputs_follow(spec: TensorSpec, outputs: Sequence[TensorSpec]) -> None:
    """Every output space/time axis must be the input axis of the same id, pixel for pixel: an
    output block is then placed where its input block is."""
    inputs = {a.id: a for a in spec.axes}
    for out in outputs:
        for a in out.axes:
            if a.type not in BLOCKED_TYPES:
                continue
            source = inputs.get(a.id)
            size = a.size
            follows = (
                isinstance(size, SizeReference)
                and size.tensor_id == spec.id
                and size.axis_id == a.id
                and size.offset == 0
            ) or (
                isinstance(size, int) and source is not None and source.size == size
            )  # a fixed output mirroring a fixed input (CAREamics exports)
            if not follows or source is None or source.scale != a.scale:
                raise errors.FailedPreconditionError(
                    f"output {out.id!r} axis {a.id!r} is not the input's axis {a.id!r} pixel "
                    "for pixel: block-wise prediction writes outputs of the input's size only",
                    details={"output": out.id, "axis": a.id},
                )


def _cover(size: ParameterizedSize, volume: int) -> int:
    """The ``n`` of the smallest valid size that is at least ``volume``."""
    if volume <= size.min or not size.step:
        return 0
    return -(-(volume - size.min) // size.step)


def valid_block(axis_size: Any, n: int, volume: int) -> int:
    """The block size along an axis for block size parameter ``n``, capped at the smallest
    valid size that covers ``volume`` (what the runtime's tiling does: ``ns = min(n, cover)``)."""
    if isinstance(axis_size, int):
        return axis_size
    if isinstance(axis_size, ParameterizedSize):
        return axis_size.min + min(n, _cover(axis_size, volume)) * axis_size.step
    raise errors.FailedPreconditionError(
        f"an input axis of size {axis_size!r} cannot be cut into blocks (a size that follows "
        "another input's is not supported)"
    )


def choose_n(spec: TensorSpec, sizes: Mapping[str, int], target_voxels: int) -> int:
    """The largest useful ``n`` whose blocks hold at most ``target_voxels`` voxels per channel
    (0, the model's smallest block, when none does)."""
    blocked = [a for a in spec.axes if a.type in BLOCKED_TYPES and a.id in sizes]

    def voxels(n: int) -> int:
        return math.prod(valid_block(a.size, n, sizes[a.id]) for a in blocked)

    top = max(
        (_cover(a.size, sizes[a.id]) for a in blocked if isinstance(a.size, ParameterizedSize)),
        default=0,
    )
    low, high = 0, top
    if voxels(high) <= target_voxels:
        return high
    while high - low > 1:
        mid = (low + high) // 2
        if voxels(mid) <= target_voxels:
            low = mid
        else:
            high = mid
    return low


def plan_grid(
    spec: TensorSpec,
    outputs: Sequence[TensorSpec],
    sizes: Mapping[str, int],
    samples: Sequence[int],
    *,
    n: int,
    pad: PadMode,
    order: Sequence[str],
) -> BlockGrid:
    """The grid over the blocked axes of ``spec`` present in ``sizes`` (model axis id -> volume
    size), in ``order`` (the sent array's axis ids)."""
    check_outputs_follow(spec, outputs)
    halo = input_halo(spec, outputs)
    by_id = {a.id: a for a in spec.axes}
    axes: list[AxisGrid] = []
    for axis_id in order:
        a = by_id[axis_id]
        if a.type not in BLOCKED_TYPES:
            continue
        block = valid_block(a.size, n, sizes[axis_id])
        h = halo.get(axis_id, 0)
        if block <= 2 * h:
            raise errors.FailedPreconditionError(
                f"input axis {axis_id!r}: a block of {block} is no larger than twice its halo {h}"
            )
        axes.append(AxisGrid(axis_id, sizes[axis_id], block, h))
    missing = [
        a.id for a in spec.axes if a.type in BLOCKED_TYPES and a.id not in sizes and a.size != 1
    ]
    if missing:
        raise errors.InvalidArgumentError(
            f"the volume has no axis {missing[0]!r} of the model's input {spec.id!r}"
        )
    return BlockGrid(tuple(axes), tuple(samples), pad)
