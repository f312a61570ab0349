"""Where a volume prediction writes: an OME-Zarr image per model output, which also records
the run, so that an interrupted run can be finished and a destination of another run is never
overwritten.

Layout of one destination (``out.ome.zarr``)::

    zarr.json or .zattrs        NGFF multiscales (0.5 for an NGFF 0.5 input, else 0.4): axes,
                                the input's scale and translation, one entry per level
    0/, 1/, ...                 the output at full resolution, then each level of its pyramid
    .modelrunner/run.json       the run: model, options, source fingerprint, block grid, state
    .modelrunner/blocks.done    one line per finished block (appended after its data is written)
    .modelrunner/statistics.json  the whole-sample statistics the blocks were normalised with

The destination is made under a temporary name next to its final path and renamed there once
its metadata and run record are written, so a path either does not exist or holds a run.
zarr writes each chunk to a temporary file and renames it (``LocalStore``), and a block is
recorded only once all its chunks are written: a process killed at any moment (kill -9) leaves
whole chunks and a record of blocks that are whole. Zarr readers ignore the ``.modelrunner``
folder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelrunner.errors import DestinationError
from modelrunner.images.ome_zarr import check_ngff_axes, write_multiscales

RUN_FOLDER = ".modelrunner"
RUN_FILE = "run.json"
DONE_FILE = "blocks.done"
STATISTICS_FILE = "statistics.json"
PYRAMID_MIN_SIDE = 256
"""Levels are added until the longest downsampled axis fits this many pixels."""
PYRAMID_TASK_BYTES = 64 * 1024**2
"""Most a pyramid task reads at once."""


@dataclass(frozen=True)
class OutputLayout:
    """The shape and metadata of one output image."""

    output_id: str
    shape: tuple[int, ...]
    dtype: str
    axes: tuple[str, ...]
    """Canonical axis names in the output's order (``time``, ``channel``, ``z``, ``y``, ``x``)."""
    chunks: tuple[int, ...]
    downsampled: tuple[str, ...]
    """Axes the pyramid halves at each level (the model's space axes)."""
    scale: tuple[float, ...]
    units: tuple[str, ...]
    translation: tuple[float, ...]
    name: str
    version: str
    """NGFF version written: "0.5" (zarr v3) or "0.4" (zarr v2)."""

    def levels(self) -> list[tuple[int, ...]]:
        """Shape of each pyramid level, full resolution first."""
        shapes = [self.shape]
        while True:
            last = shapes[-1]
            sides = [s for a, s in zip(self.axes, last, strict=True) if a in self.downsampled]
            if not sides or max(sides) <= PYRAMID_MIN_SIDE:
                return shapes
            shapes.append(
                tuple(
                    -(-s // 2) if a in self.downsampled else s
                    for a, s in zip(self.axes, last, strict=True)
                )
            )

    @property
    def averaged(self) -> bool:
        """Float outputs are averaged into the pyramid, others (labels) taken every 2nd pixel."""
        return np.dtype(self.dtype).kind in "fc"


@dataclass
class RunRecord:
    """``run.json``: what the destination holds and how far the run got."""

    identity: dict[str, Any]
    """Model, options, source fingerprint, block grid, output: a run with another identity
    never writes here."""
    blocks: int
    layout: dict[str, Any]
    pyramid_levels_done: int = 0
    complete: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class VolumeDestination:
    """One output image of a run, open for writing."""

    def __init__(self, path: Path, record: RunRecord) -> None:
        import zarr

        self.path = path
        self.record = record
        fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in record.layout.items()
        }
        self.layout = OutputLayout(**fields)
        self._group = zarr.open_group(str(path), mode="r+")
        self.level0: Any = self._group["0"]
        self._done_fd: int | None = None

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: Path, identity: dict[str, Any], *, resume: bool
    ) -> VolumeDestination | None:
        """The destination at ``path`` when it holds this run (``resume`` required), None when
        nothing is there. Anything else there is refused, untouched."""
        if not path.exists() and not path.is_symlink():
            return None
        record = read_record(path)
        if record is None:
            raise DestinationError(
                f"{path} exists and is not a modelrunner prediction: refusing to overwrite it; "
                "choose another destination or remove it",
                details={"destination": str(path)},
            )
        differs = _difference(record.identity, identity)
        if differs and differs[0] == "weights":
            _, theirs, ours = differs
            raise DestinationError(
                f"{path} was predicted with {theirs}, and this run asks for {ours}: resume it "
                "with the same weight format and device, or without naming them (it then uses "
                "those it started with)",
                details={"destination": str(path), "differs": "weights"},
            )
        if differs:
            key, theirs, ours = differs
            raise DestinationError(
                f"{path} holds the output of another run (its {key} is {theirs}, this run's "
                f"{ours}): refusing to overwrite it; choose another destination or remove it",
                details={"destination": str(path), "differs": key},
            )
        if not resume:
            done = "complete" if record.complete else "unfinished"
            raise DestinationError(
                f"{path} already holds this run ({done}): pass resume=True (--resume) to "
                "finish it, or remove it to start again",
                details={"destination": str(path), "complete": str(record.complete).lower()},
            )
        return cls(path, record)

    @classmethod
    def create(
        cls, path: Path, layout: OutputLayout, identity: dict[str, Any], blocks: int
    ) -> VolumeDestination:
        """A new destination with its arrays (empty), metadata and run record, made under a
        temporary name and renamed into place."""
        import zarr

        check_ngff_axes(path, layout.axes)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
        try:
            group = zarr.open_group(
                str(temporary), mode="w-", zarr_format=3 if layout.version == "0.5" else 2
            )
            datasets: list[tuple[str, list[float], list[float] | None]] = []
            for level, shape in enumerate(layout.levels()):
                chunks = tuple(min(c, s) for c, s in zip(layout.chunks, shape, strict=True))
                group.create_array(
                    str(level), shape=shape, chunks=chunks, dtype=layout.dtype, fill_value=0
                )
                datasets.append((str(level), *_transforms(layout, level)))
            write_multiscales(
                group,
                layout.axes,
                {
                    a: (s, u)
                    for a, s, u in zip(layout.axes, layout.scale, layout.units, strict=True)
                },
                datasets,
                name=layout.name,
                version=layout.version,
                extra={
                    "type": "mean" if layout.averaged else "nearest",
                    "metadata": {"description": "modelrunner predict_volume"},
                },
            )
            record = RunRecord(identity=identity, blocks=blocks, layout=asdict(layout))
            (temporary / RUN_FOLDER).mkdir()
            _write_json(temporary / RUN_FOLDER / RUN_FILE, asdict(record))
            (temporary / RUN_FOLDER / DONE_FILE).touch()
            try:
                os.rename(temporary, path)  # fails on an existing, non-empty folder
            except OSError as e:
                raise DestinationError(
                    f"{path} appeared while the run started: refusing to overwrite it",
                    details={"destination": str(path)},
                ) from e
        finally:
            if temporary.exists():
                shutil.rmtree(temporary, ignore_errors=True)
        return cls(path, record)

    # -- blocks --------------------------------------------------------------------------------

    def done_blocks(self) -> set[int]:
        """Blocks recorded finished (a line cut short by a kill is not one)."""
        text = (self.path / RUN_FOLDER / DONE_FILE).read_bytes()
        lines = text.split(b"\n")[:-1]  # the last piece has no newline: cut short, or empty
        return {int(line) for line in lines if line.strip().isdigit()}

    def write(self, region: tuple[int | slice, ...], data: np.ndarray) -> None:
        self.level0[region] = data

    def record_done(self, blocks: Iterable[int]) -> None:
        """Append finished blocks to the record (one write: a kill leaves whole lines or a cut
        last line, which is not counted)."""
        text = "".join(f"{b}\n" for b in blocks).encode()
        if not text:
            return
        if self._done_fd is None:
            self._done_fd = os.open(
                self.path / RUN_FOLDER / DONE_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT
            )
        os.write(self._done_fd, text)

    def save_statistics(self, statistics: dict[str, Any]) -> None:
        _write_json(self.path / RUN_FOLDER / STATISTICS_FILE, statistics)

    def load_statistics(self) -> dict[str, Any] | None:
        path = self.path / RUN_FOLDER / STATISTICS_FILE
        if not path.exists():
            return None
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded

    def close(self) -> None:
        if self._done_fd is not None:
            os.close(self._done_fd)
            self._done_fd = None

    # -- the pyramid and the end ---------------------------------------------------------------

    def build_pyramid(self, *, workers: int = 2, progress: Any = None) -> None:
        """The levels in rounds of towers: a task reads a region of the last level built once
        and writes every level of the round above it (one chunk of the round's top level, so
        tasks never share a chunk); a round's levels are recorded once all its tasks are done.
        A round holds as many levels as keep a task's read under ``PYRAMID_TASK_BYTES``."""
        last = len(self.layout.levels()) - 1
        with ThreadPoolExecutor(workers, thread_name_prefix="modelrunner-pyramid") as pool:
            while self.record.pyramid_levels_done < last:
                start = self.record.pyramid_levels_done
                top = start + self._round_height(start, last)
                target: Any = self._group[str(top)]
                regions = list(_chunk_regions(target.shape, target.chunks))
                count = len(regions)
                for _ in pool.map(self._tower, [start] * count, [top] * count, regions):
                    if progress is not None:
                        progress(1)
                self.record.pyramid_levels_done = top
                self._save_record()

    def _factors(self, levels: int) -> list[int]:
        return [2**levels if a in self.layout.downsampled else 1 for a in self.layout.axes]

    def _round_height(self, start: int, last: int) -> int:
        """How many levels above ``start`` one round builds (at least one)."""
        itemsize = np.dtype(self.layout.dtype).itemsize
        height = 1
        while start + height < last:
            above: Any = self._group[str(start + height + 1)]
            chunks = above.chunks
            factors = self._factors(height + 1)
            read = math.prod(c * f for c, f in zip(chunks, factors, strict=True)) * itemsize
            if read > PYRAMID_TASK_BYTES:
                break
            height += 1
        return height

    def _tower(self, start: int, top: int, region: tuple[slice, ...]) -> None:
        """``region`` of level ``top`` and what lies under it in the levels between, from level
        ``start`` read once."""
        source: Any = self._group[str(start)]
        factors = self._factors(top - start)
        read = tuple(
            slice(r.start * f, min(r.stop * f, s))
            for r, f, s in zip(region, factors, source.shape, strict=True)
        )
        data = np.asarray(source[read])
        step = self._factors(1)
        for level in range(start + 1, top + 1):
            data = downsample(data, step, averaged=self.layout.averaged)
            target: Any = self._group[str(level)]
            scale = self._factors(top - level)
            at = tuple(
                slice(r.start * f, min(r.stop * f, s))
                for r, f, s in zip(region, scale, target.shape, strict=True)
            )
            target[at] = data.astype(target.dtype, copy=False)

    def pyramid_tasks(self) -> int:
        """Tasks still to run to build the pyramid (for progress)."""
        last = len(self.layout.levels()) - 1
        count, level = 0, self.record.pyramid_levels_done
        while level < last:
            level += self._round_height(level, last)
            array: Any = self._group[str(level)]
            count += math.prod(-(-s // c) for s, c in zip(array.shape, array.chunks, strict=True))
        return count

    def mark_complete(self) -> None:
        self.record.complete = True
        self._save_record()

    def _save_record(self) -> None:
        _write_json(self.path / RUN_FOLDER / RUN_FILE, asdict(self.record))


def read_record(path: Path) -> RunRecord | None:
    """The run record of a destination; None when ``path`` holds none (or an unreadable one)."""
    try:
        raw = json.loads((path / RUN_FOLDER / RUN_FILE).read_text())
        return RunRecord(**raw)
    except (OSError, ValueError, TypeError):
        return None


def _difference(theirs: dict[str, Any], ours: dict[str, Any]) -> tuple[str, str, str] | None:
    """The first part of the identity that differs, as (what, theirs, ours). ``weights``: the
    weight format and device the run used (theirs) and those this one asks for (ours; "": any,
    "cuda": any CUDA device)."""
    for key in ("model", "source", "options", "grid", "output"):
        if theirs.get(key) != ours.get(key):
            return key, _short(theirs.get(key)), _short(ours.get(key))
    if not _weights_match(theirs.get("weights"), ours.get("weights")):
        return "weights", _weights(theirs.get("weights")), _weights(ours.get("weights"))
    if {**theirs, "weights": None} != {**ours, "weights": None}:
        return "identity", "another", "this one"
    return None


def _weights_match(used: dict[str, str] | None, asked: dict[str, str] | None) -> bool:
    if used is None or asked is None:
        return used == asked
    device, wanted = used.get("device", ""), asked.get("device", "")
    return asked.get("weight_format", "") in ("", used.get("weight_format")) and (
        wanted in ("", device) or (":" not in wanted and device.split(":", 1)[0] == wanted)
    )


def _weights(weights: dict[str, str] | None) -> str:
    if weights is None:
        return "no weight format recorded"
    return f"{weights.get('weight_format') or 'any'} weights on {weights.get('device') or 'any device'}"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _write_json(path: Path, value: Any) -> None:
    """Atomically: a reader (or a kill) sees the old file or the new one."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    temporary.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(temporary, path)


def _transforms(layout: OutputLayout, level: int) -> tuple[list[float], list[float]]:
    """Scale and translation of a level. Averaged levels shift by half their new pixel: a
    pixel's centre is the mean of the centres it averages."""
    factor = 2**level
    scale, translation = [], []
    for axis, s, t in zip(layout.axes, layout.scale, layout.translation, strict=True):
        down = axis in layout.downsampled
        scale.append(s * factor if down else s)
        shift = (factor - 1) / 2 * s if down and layout.averaged else 0.0
        translation.append(t + shift)
    return scale, translation


def _chunk_regions(shape: Sequence[int], chunks: Sequence[int]) -> Iterator[tuple[slice, ...]]:
    import itertools

    ranges = [range(0, s, c) for s, c in zip(shape, chunks, strict=True)]
    for starts in itertools.product(*ranges):
        yield tuple(slice(a, min(a + c, s)) for a, c, s in zip(starts, chunks, shape, strict=True))


def downsample(data: np.ndarray, factors: Sequence[int], *, averaged: bool) -> np.ndarray:
    """Halve along the axes whose factor is 2: the mean of each pair (a last odd pixel alone),
    or every second pixel."""
    if not averaged:
        return data[tuple(slice(None, None, f) for f in factors)]
    out = data.astype(np.result_type(data.dtype, np.float32), copy=False)  # float32 stays
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        if out.shape[axis] % 2:  # the last pixel pairs with itself: its mean is its value
            out = np.concatenate([out, np.take(out, [-1], axis=axis)], axis=axis)
        even = [slice(None)] * out.ndim
        odd = [slice(None)] * out.ndim
        even[axis], odd[axis] = slice(0, None, 2), slice(1, None, 2)
        out = (out[tuple(even)] + out[tuple(odd)]) * out.dtype.type(0.5)
    return out
