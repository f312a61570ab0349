"""Tiled prediction that hands its outputs on band by band instead of assembling them whole.

bioimageio.core's blockwise prediction (``predict_sample_with_blocking``) writes every block into
a full-size output (``Sample.from_blocks``), and its ``UpdateStats`` makes full-size temporaries,
so a tiled prediction holds the input, the whole output and those temporaries at once: 2-3x the
input, more for integer images. Here the same blocks go through the same bioimageio.core calls in
the same order -- ``Sample.split_into_blocks`` with the model's input halo and pad modes, then
``PredictionPipeline.predict_sample_block`` (blockwise preprocessing, the network, blockwise
postprocessing) -- and each output is written into a buffer of a few rows instead: a *band* of
rows of its first tiled axis is handed on as soon as no later block writes into it, and the buffer
forgets it. Sample statistics come from :mod:`.lean_stats` when it can compute them, else from
bioimageio.core's own sample-wise preprocessing (models that need quantiles or dataset statistics
thus take a full-size temporary more).

:func:`stream_tiles` applies when all of these hold, and returns None otherwise (the caller then
assembles whole outputs with bioimageio.core):

* the plan tiles the sample without padding it, and the inputs take at least
  ``stream_tiles_min_bytes`` (:class:`.limits.RuntimeLimits`);
* the model has no sample-wise postprocessing (it needs the whole output) and no input that is
  another model's output;
* every output has only singleton axes before its first tiled axis, so that a band of rows is a
  contiguous range of the output in C order (what the chunked wire format sends), and all outputs
  finish their rows alike, block for block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
from bioimageio.core import PredictionPipeline, Sample
from bioimageio.core.block import Block
from bioimageio.core.block_meta import split_multiple_shapes_into_blocks
from bioimageio.core.common import MemberId
from bioimageio.core.digest_spec import get_input_halo
from bioimageio.core.sample import SampleBlock, sample_block_meta_generator
from bioimageio.spec.model import v0_5

from modelrunner.errors import CancelledError, InternalError
from modelrunner.predict_request import PredictRequest

from .core_blocks import block_transform, follow_implied_references
from .core_calls import BlockProgress, core_predict_block
from .lean_stats import lean_sample_stats
from .size_fitting import FitPlan

logger = logging.getLogger(__name__)

Cancelled = Callable[[], bool]
"""Returns True once the client has gone: the prediction stops at the next block or sample."""
Bands = dict[str, np.ndarray]
"""Output id -> the next rows of that output (C-contiguous, in the output's axis order)."""


@dataclass
class TileStream:
    """A started streamed prediction: the outputs' shapes and dtypes are known (the first block
    is predicted), the bands come as the remaining blocks finish. Exhaust or close ``bands`` to
    release the input."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]
    blocks: int
    bands: Generator[Bands, None, None]

    def close(self) -> None:
        self.bands.close()


@dataclass(frozen=True)
class BandSchedule:
    """Where the blocks of one output land along its band axis (from bioimageio.core's block
    metadata, before anything is predicted)."""

    axes: tuple[v0_5.AxisId, ...]
    """The output's axes in its description's order."""
    shape: tuple[int, ...]
    band_axis: int
    """The first axis the blocks split (0 when they split none); those before are singletons."""
    rows: tuple[tuple[int, int], ...]
    """Per block: the rows ``[start, stop)`` of its inner part along the band axis."""
    final: tuple[int, ...]
    """Per block: rows below this are complete once that block is written."""


def stream_tiles(
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    sample: Sample,
    plan: FitPlan,
    request: PredictRequest,
    progress: BlockProgress | None,
    *,
    network_dtypes: Mapping[MemberId, str],
    stream_tiles_min_bytes: int,
    cancelled: Cancelled | None = None,
) -> TileStream | None:
    """Start predicting ``sample`` tile by tile with outputs in bands (see the module docstring);
    None when that does not apply. Runs the sample-wise preprocessing and the first block.

    Args:
        network_dtypes: the dtype each input is cast to when ``request.skip_preprocessing``.
        stream_tiles_min_bytes: smaller inputs are not streamed.
        progress: called with (blocks done, blocks in total) after each block; it may raise
            (e.g. CancelledError) to stop the prediction.
        cancelled: asked while the bands are planned (seconds for thousands of blocks, before
            the first block's progress), CancelledError when it says so.
    """
    reason = _not_applicable(pipeline, descr, sample, plan, request, stream_tiles_min_bytes)
    schedules = None
    if reason is None:
        follow_implied_references(pipeline, descr)
        schedules = plan_bands(pipeline, descr, sample, plan, cancelled)
    if schedules is None:
        logger.debug(
            "assembling whole outputs: %s", reason or "the outputs cannot be cut into bands"
        )
        return None
    if not request.skip_preprocessing:
        _samplewise_preprocessing(pipeline, descr, sample)
    total, blocks = sample.split_into_blocks(
        plan.block_shape, halo=get_input_halo(descr), pad_mode=pipeline.pad_mode
    )
    blocks_left = iter(blocks)
    del blocks
    first = _predict_block(pipeline, next(blocks_left), request, network_dtypes)
    if progress is not None:
        progress(1, total)
    dtypes = {m: np.dtype(first.blocks[m].data.data.dtype) for m in schedules}
    assemblers = {m: _RowBands(s, dtypes[m]) for m, s in schedules.items()}
    bands = _bands(
        pipeline, first, blocks_left, assemblers, request, network_dtypes, progress, total
    )
    return TileStream(
        shapes={str(m): s.shape for m, s in schedules.items()},
        dtypes={str(m): d for m, d in dtypes.items()},
        blocks=total,
        bands=bands,
    )


def plan_bands(
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    sample: Sample,
    plan: FitPlan,
    cancelled: Cancelled | None = None,
) -> dict[MemberId, BandSchedule] | None:
    """Each output's band schedule, or None when an output cannot stream in bands of rows."""
    transform = block_transform(pipeline)
    if transform is None:
        return None
    _, metas = split_multiple_shapes_into_blocks(
        shapes=sample.shape, block_shapes=plan.block_shape, halo=get_input_halo(descr)
    )
    out_metas = []
    for meta in sample_block_meta_generator(metas, sample_shape=sample.shape, sample_id=sample.id):
        if cancelled is not None and cancelled():
            raise CancelledError("the prediction was cancelled")
        out_metas.append(meta.get_transformed(transform))
    schedules: dict[MemberId, BandSchedule] = {}
    for out in descr.outputs:
        axes = tuple(a.id for a in out.axes)
        sizes = out_metas[0].sample_shape[out.id]
        shape = tuple(sizes[a] for a in axes)
        if any(s < 0 for s in shape):
            return None
        slices = [[meta.blocks[out.id].inner_slice[a] for meta in out_metas] for a in axes]
        band_axis = next((i for i, s in enumerate(slices) if len(set(s)) > 1), 0)
        if any(s != 1 for s in shape[:band_axis]):
            return None
        rows = tuple((s.start, s.stop) for s in slices[band_axis])
        schedules[out.id] = BandSchedule(
            axes, shape, band_axis, rows, _complete_rows(rows, shape[band_axis])
        )
    first = next(iter(schedules.values()), None)
    if first is None or any(
        (s.rows, s.final) != (first.rows, first.final) for s in schedules.values()
    ):
        return None
    return schedules


def _complete_rows(rows: tuple[tuple[int, int], ...], size: int) -> tuple[int, ...]:
    """Per block: the rows before the first one a later block writes (all rows after the last
    block)."""
    final = [size] * len(rows)
    for k in range(len(rows) - 2, -1, -1):
        final[k] = min(final[k + 1], rows[k + 1][0])
    return tuple(final)


def _not_applicable(
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    sample: Sample,
    plan: FitPlan,
    request: PredictRequest,
    min_bytes: int,
) -> str | None:
    if plan.mode != "tiled" or plan.pad:
        return f"the plan is {plan.mode}" + (" with padding" if plan.pad else "")
    size = sum(int(t.data.nbytes) for t in sample.members.values())
    if size < min_bytes:
        return f"the inputs take {size} bytes, less than {min_bytes}"
    if any(getattr(t, "output_of", None) is not None for t in descr.inputs):
        return "an input is another model's output"
    if not request.skip_postprocessing and pipeline.has_non_blockwise_postprocessing:
        return "the postprocessing needs the whole output"
    return None


def _samplewise_preprocessing(
    pipeline: PredictionPipeline, descr: v0_5.ModelDescr, sample: Sample
) -> None:
    """What bioimageio.core runs on the whole sample before splitting it into blocks."""
    stats = lean_sample_stats(pipeline, descr, sample)
    if stats is not None:
        sample.stat.update(stats)
        return
    logger.info("sample statistics of %s computed by bioimageio.core (full-size)", descr.name)
    # bioimageio.core's blockwise prediction runs exactly this before splitting the sample; it
    # has no public name
    pipeline._apply_samplewise_preprocessing(sample)


def _predict_block(
    pipeline: PredictionPipeline,
    block: SampleBlock,
    request: PredictRequest,
    network_dtypes: Mapping[MemberId, str],
) -> SampleBlock:
    return core_predict_block(
        pipeline,
        block,
        skip_preprocessing=request.skip_preprocessing,
        skip_postprocessing=request.skip_postprocessing,
        network_dtypes=network_dtypes,
    )


def _bands(
    pipeline: PredictionPipeline,
    first: SampleBlock,
    blocks_left: Iterator[SampleBlock] | None,
    assemblers: dict[MemberId, _RowBands],
    request: PredictRequest,
    network_dtypes: Mapping[MemberId, str],
    progress: BlockProgress | None,
    total: int,
) -> Generator[Bands, None, None]:
    predicted: SampleBlock | None = first
    del first
    for k in range(total):
        if predicted is None:
            assert blocks_left is not None
            predicted = _predict_block(pipeline, next(blocks_left), request, network_dtypes)
            if progress is not None:
                progress(k + 1, total)
        if predicted.block_index != k:
            raise InternalError(f"block {predicted.block_index} came in place of block {k}")
        for m, assembler in assemblers.items():
            assembler.write(k, predicted.blocks[m])
        predicted = None
        if k == total - 1:
            # the last block is split: drop bioimageio.core's block generator, and with it the
            # input sample, before the last bands go out
            blocks_left = None
        # outputs share one schedule, so they hand on the same number of pieces
        pieces = {str(m): a.take(k) for m, a in assemblers.items()}
        for i in range(max(len(p) for p in pieces.values())):
            yield {name: p[i] for name, p in pieces.items()}
        del pieces


class _RowBands:
    """The rows of one output that are written but not handed on yet.

    Blocks are written where bioimageio.core's ``Sample.set_block`` would write them, in the same
    order (later blocks overwrite the overlap, as there); rows no block covers stay NaN, as in
    ``Sample.from_blocks``. The rows live in segments allocated as blocks reach further down,
    so the rows a last, overlapping row of blocks shares with the one before are not held twice.
    """

    def __init__(self, schedule: BandSchedule, dtype: np.dtype) -> None:
        self.schedule = schedule
        self.dtype = dtype
        self._segments: list[tuple[int, np.ndarray]] = []
        """(first row, rows) in order, covering the rows from ``_emitted`` on."""
        self._emitted = 0
        """Rows before this one are handed on."""

    def write(self, k: int, block: Block) -> None:
        s = self.schedule
        band_id = s.axes[s.band_axis]
        inner = block.inner_slice
        start, stop = s.rows[k]
        if (inner[band_id].start, inner[band_id].stop) != (start, stop):
            raise InternalError(
                f"block {k} covers rows {tuple(inner[band_id])} of axis '{band_id}', planned "
                f"{s.rows[k]}"
            )
        self._extend_to(stop)
        data = block.inner_data.data.transpose(*s.axes).to_numpy()
        others = [slice(inner[a].start, inner[a].stop) for a in s.axes]
        for first, segment in self._segments:
            low, high = max(start, first), min(stop, first + self._height(segment))
            if low < high:
                target = list(others)
                target[s.band_axis] = slice(low - first, high - first)
                segment[tuple(target)] = self._rows(data, low - start, high - start)

    def take(self, k: int) -> list[np.ndarray]:
        """The rows that became complete with block ``k``, as views of one or two segments."""
        final = self.schedule.final[k]
        if final <= self._emitted:
            return []
        self._extend_to(final)  # rows no block covers, too
        pieces = []
        for first, segment in self._segments:
            low, high = max(self._emitted, first), min(final, first + self._height(segment))
            if low < high:
                pieces.append(self._rows(segment, low - first, high - first))
        self._segments = [
            (first, seg) for first, seg in self._segments if first + self._height(seg) > final
        ]
        self._emitted = final
        return pieces

    def _extend_to(self, stop: int) -> None:
        """Add a segment for the rows from the end of the last one (or the first row not
        handed on) up to ``stop``."""
        end = self._emitted
        if self._segments:
            first, last = self._segments[-1]
            end = first + self._height(last)
        if stop <= end:
            return
        shape = list(self.schedule.shape)
        shape[self.schedule.band_axis] = stop - end
        segment = (
            np.full(shape, np.nan, dtype=self.dtype)
            if self.dtype.kind == "f"
            else np.zeros(shape, dtype=self.dtype)
        )
        self._segments.append((end, segment))

    def _height(self, a: np.ndarray) -> int:
        return int(a.shape[self.schedule.band_axis])

    def _rows(self, a: np.ndarray, start: int, stop: int) -> np.ndarray:
        index = [slice(None)] * a.ndim
        index[self.schedule.band_axis] = slice(start, stop)
        return a[tuple(index)]
