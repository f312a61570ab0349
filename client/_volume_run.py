"""One volume run's state and its block I/O: reading a block's input (halo, padding) from the
source, the whole-sample statistics, creating the destinations after the first block, and
writing a block's owned region into each of them."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelrunner.images.axes import InputPlan, canonical_id, output_axes
from modelrunner.images.files import ImageFile
from modelrunner.types import ModelInfo, Progress, SampleStatistic, TensorSpec

from ._volume_blocks import Block, BlockGrid
from ._volume_calls import VolumeCalls
from ._volume_destination import OutputLayout, VolumeDestination
from ._volume_sources import source_chunks, source_dtype
from ._volume_statistics import SampleStatistics, required_measures

CHUNK_SIDE = {"z": 64, "y": 256, "x": 256, "time": 1}
"""Output chunk sides (at most; and at most a block's inner size): what viewers read well."""


@dataclass
class VolumeRun:
    """Everything the steps share."""

    client: VolumeCalls
    info: ModelInfo
    image: ImageFile
    plan: InputPlan
    spec: TensorSpec
    grid: BlockGrid
    sent: tuple[str, ...]
    """The model axis ids of the sent axes, in the source's order."""
    sent_index: tuple[int, ...]
    """Their positions in the source's axes."""
    identity: dict[str, Any]
    options: dict[str, Any]
    keep: tuple[str, ...]
    destinations: dict[str, Path]
    opened: dict[str, VolumeDestination] = field(default_factory=dict)
    statistics: dict[tuple[int, ...], tuple[SampleStatistic, ...]] = field(default_factory=dict)


def read_block(run: VolumeRun, block: Block) -> np.ndarray:
    """The block's input in the sent axes: the bounding box of its pixels read at once, then
    arranged (halo, padding) by index where the block reaches past the volume's edge (a block
    inside it is the box as read)."""
    indices = run.grid.read_indices(block)
    box: list[slice] = []
    local: list[np.ndarray] = []
    constant = padded = False
    for axis, i in zip(run.sent, run.sent_index, strict=True):
        wanted = indices.get(axis)
        if wanted is None:  # a channel axis: whole
            box.append(slice(None))
            local.append(np.arange(run.image.shape[i]))
            continue
        valid = wanted[wanted >= 0]
        low, high = int(valid.min()), int(valid.max()) + 1
        box.append(slice(low, high))
        constant = constant or bool((wanted < 0).any())
        padded = padded or len(wanted) != high - low or bool((np.diff(wanted) != 1).any())
        local.append(np.where(wanted >= 0, wanted - low, 0))
    data = run.image.read(_source_region(run, block.sample, tuple(box)))
    block_data = data[np.ix_(*local)] if padded else data
    if constant:
        mask = np.ones(block_data.shape, bool)
        for position, kept in enumerate(_sent_indices(run, indices)):
            shape = [1] * block_data.ndim
            shape[position] = -1
            mask &= (kept >= 0).reshape(shape)
        block_data = np.where(mask, block_data, np.asarray(run.grid.pad.value, block_data.dtype))
    return np.ascontiguousarray(block_data)


def _sent_indices(run: VolumeRun, indices: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    out = []
    for axis, i in zip(run.sent, run.sent_index, strict=True):
        wanted = indices.get(axis)
        out.append(np.arange(run.image.shape[i]) if wanted is None else wanted)
    return out


def compute_statistics(
    run: VolumeRun, todo: Sequence[Block], report: Callable[[Progress], None] | None
) -> None:
    """The whole-sample statistics the model's processing needs: from the destination when a
    run there already computed them, else computed now (and kept with the destination)."""
    measures = required_measures(run.info, run.spec.id)
    if not measures:
        return
    for d in run.opened.values():
        saved = d.load_statistics()
        if saved is not None:
            run.statistics = _statistics_from_json(saved)
            return
    if not todo:
        return
    samples = list(run.grid.samples_indices())
    shape = tuple(run.image.shape[i] for i in run.sent_index)
    chunks = source_chunks(run.image)
    dtype = source_dtype(run.image)
    stats = SampleStatistics(
        run.spec.id,
        measures,
        run.sent,
        shape,
        dtype,
        chunks=tuple(chunks[i] for i in run.sent_index) if chunks else None,
    )
    total = math.prod(shape) * dtype.itemsize * len(samples)
    done = [0]
    lock = threading.Lock()

    def read(sample: tuple[int, ...], region: tuple[slice, ...]) -> np.ndarray:
        return run.image.read(_source_region(run, sample, region))

    def advanced(nbytes: int) -> None:
        if report is not None:
            with lock:
                done[0] += nbytes
                report(Progress(stage="statistics", done=min(done[0], total), total=total))

    run.statistics = stats.compute(read, samples, progress=advanced)
    for d in run.opened.values():  # a resumed run whose statistics were not kept
        d.save_statistics(_statistics_to_json(run.statistics))


def _source_region(
    run: VolumeRun, sample: tuple[int, ...], region: tuple[slice, ...]
) -> tuple[int | slice, ...]:
    """The source's index of ``region`` (one slice per sent axis, in their order) in
    ``sample``: the sample's index on the axes looped over, 0 on those dropped."""
    at = dict(zip(run.plan.loop, sample, strict=True))
    out: list[int | slice] = []
    for i in range(len(run.image.shape)):
        if i in at:
            out.append(at[i])
        elif i in run.plan.drop:
            out.append(0)
        else:
            out.append(region[run.sent_index.index(i)])
    return tuple(out)


def _statistics_to_json(
    statistics: Mapping[tuple[int, ...], Sequence[SampleStatistic]],
) -> dict[str, Any]:
    return {
        json.dumps(list(sample)): [s.model_dump(mode="json") for s in stats]
        for sample, stats in statistics.items()
    }


def _statistics_from_json(
    saved: Mapping[str, Any],
) -> dict[tuple[int, ...], tuple[SampleStatistic, ...]]:
    return {
        tuple(json.loads(key)): tuple(SampleStatistic.model_validate(s) for s in stats)
        for key, stats in saved.items()
    }


def create_destinations(run: VolumeRun, outputs: Mapping[str, np.ndarray], blocks: int) -> None:
    """The destinations still to be made, shaped after the first block's outputs."""
    for spec in run.info.outputs:
        oid = spec.id
        if oid in run.opened:
            continue
        axes, _ = output_axes(run.plan, spec, outputs[oid].shape, run.keep)
        layout = _layout(run, spec, axes, outputs[oid])
        identity = {**run.identity, "output": oid}
        run.opened[oid] = VolumeDestination.create(run.destinations[oid], layout, identity, blocks)
        if run.statistics:
            run.opened[oid].save_statistics(_statistics_to_json(run.statistics))


def _output_order(spec: TensorSpec, axes: Sequence[str]) -> tuple[tuple[int, ...], list[int]]:
    """How a block's output (the model's axes) becomes the destination's: the axes to squeeze
    (singletons the destination has not), then the order of the rest."""
    model_axes = [canonical_id(a) for a in spec.axes]
    squeeze = tuple(i for i, a in enumerate(model_axes) if a not in axes)
    kept = [a for i, a in enumerate(model_axes) if i not in squeeze]
    return squeeze, [kept.index(a) for a in axes if a in kept]


def _layout(
    run: VolumeRun, spec: TensorSpec, axes: tuple[str, ...], array: np.ndarray
) -> OutputLayout:
    image = run.image
    loop_axes = {image.axes[i]: image.shape[i] for i in run.plan.loop}  # type: ignore[index]
    spatial = {canonical_id(next(a for a in spec.axes if a.id == g.axis)): g for g in run.grid.axes}
    plane = {canonical_id(a): s for a, s in zip(spec.axes, array.shape, strict=True)}
    shape, chunks = [], []
    for axis in axes:
        if axis in loop_axes:
            shape.append(loop_axes[axis])
            chunks.append(1)
        elif axis in spatial:
            g = spatial[axis]
            shape.append(g.size)
            chunks.append(max(1, min(g.inner, CHUNK_SIDE.get(axis, 256))))
        else:
            shape.append(plane[axis])
            chunks.append(plane[axis])
    version = image.zarr_version if image.kind == "zarr" else "0.4"
    path = run.destinations[spec.id]
    name = path.name[: -len(".ome.zarr")] if path.name.endswith(".ome.zarr") else path.stem
    return OutputLayout(
        output_id=spec.id,
        shape=tuple(shape),
        dtype=str(array.dtype),
        axes=axes,
        chunks=tuple(chunks),
        downsampled=tuple(a for a in axes if a in spatial),
        scale=tuple(image.pixel_sizes.get(a, (1.0, ""))[0] for a in axes),
        units=tuple(image.pixel_sizes.get(a, (1.0, ""))[1] for a in axes),
        translation=tuple(image.translation.get(a, 0.0) for a in axes),
        name=name,
        version="0.5" if version.startswith("0.5") else "0.4",
    )


def write_block(run: VolumeRun, block: Block, outputs: Mapping[str, np.ndarray]) -> None:
    """The block's owned region of every output, then the block recorded finished."""
    owned = run.grid.owned(block)
    within = run.grid.owned_in_block(block)
    for spec in run.info.outputs:
        oid = spec.id
        destination = run.opened[oid]
        squeeze, order = _output_order(spec, destination.layout.axes)
        index = tuple(within.get(a.id, slice(None)) for a in spec.axes)
        plane = np.squeeze(outputs[oid][index], axis=squeeze).transpose(order)
        at = dict(zip(run.plan.loop, block.sample, strict=True))
        loop_names = {run.image.axes[i]: v for i, v in at.items()}  # type: ignore[index]
        spatial = {
            canonical_id(next(a for a in spec.axes if a.id == g.axis)): owned[g.axis]
            for g in run.grid.axes
        }
        region: list[int | slice] = []
        for axis in destination.layout.axes:
            if axis in loop_names:
                region.append(loop_names[axis])
            elif axis in spatial:
                region.append(slice(*spatial[axis]))
            else:
                region.append(slice(None))
        destination.write(tuple(region), plane)
    for d in run.opened.values():
        d.record_done([block.index])
