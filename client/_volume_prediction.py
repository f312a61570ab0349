"""``ModelRunnerClient.predict_volume``: a volume larger than memory, block by block, from its
source to an OME-Zarr destination, over every runtime that serves the model, resumable.

The steps, each in its own module:

1. the source (:mod:`._volume_sources`) and how its axes meet the model's
   (:func:`modelrunner.images.axes.plan_input`: axes the model lacks run one index at a time,
   as samples of their own);
2. the block grid with the model's halo (:mod:`._volume_blocks`);
3. the whole-sample statistics the model's processing needs (:mod:`._volume_statistics`), kept in
   the destination so a resumed run uses the same numbers;
4. the destination and its run record (:mod:`._volume_destination`): a destination of another run
   is refused before any work, one of this run is resumed only when asked;
5. the weight format and device of the run: those the destination recorded when resumed, else
   those a runtime loads the model with for the options given; every block names them, so a
   resumed run computes its blocks as the run it finishes did;
6. the blocks not yet finished, read, predicted on every runtime and written with back-pressure
   (:mod:`._volume_pipeline`; the first block goes to the first runtime that answers, its
   outputs shape the destinations); each block is sent in block mode
   (``PredictCommand.block_of_sample``) with its sample's statistics, so the stitched output
   equals bioimageio.core's blockwise prediction of the whole sample;
7. the destination's multiscale pyramid, level by level, then the run is marked complete.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from modelrunner import errors
from modelrunner.images.axes import plan_input
from modelrunner.images.files import ImageFile
from modelrunner.types import ModelInfo, Progress

from ._progress import ProgressOption, progress_callback
from ._volume_blocks import Block, PadMode, choose_n, plan_grid
from ._volume_calls import VolumeCalls
from ._volume_destination import VolumeDestination
from ._volume_pipeline import BlockPipeline, BlockRuntime
from ._volume_result import VolumeResult
from ._volume_run import (
    VolumeRun,
    compute_statistics,
    create_destinations,
    read_block,
    write_block,
)
from ._volume_runtimes import predict_first, routes_for_the_weights
from ._volume_sources import VolumeLike, fingerprint, open_volume

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_VOXELS = 4 * 1024**2
"""Block size chosen when none is given: about this many voxels per channel at the network's
input (16 MiB of float32: a 2048x2048 plane, a 160^3 cube)."""


def predict_volume(
    client: VolumeCalls,
    model_id: str,
    source: VolumeLike,
    destination: str | Path | Mapping[str, str | Path],
    *,
    axes: str | Sequence[str] | None = None,
    level: int = 0,
    channel: int | None = None,
    per_plane: bool = False,
    keep_singletons: bool = False,
    blocksize: int | None = None,
    weight_format: str | None = None,
    device: str | None = None,
    resume: bool = False,
    workers_per_runtime: int = 2,
    nan_policy: str = "reject",
    timeout: float | None = None,
    progress: ProgressOption = False,
) -> VolumeResult:
    """See :meth:`ModelRunnerClient.predict_volume`."""
    started = time.monotonic()
    image = open_volume(source, axes=axes, level=level, channel=channel)
    try:
        run = _plan(
            client,
            model_id,
            image,
            destination,
            level=level,
            channel=channel,
            per_plane=per_plane,
            keep_singletons=keep_singletons,
            blocksize=blocksize,
            weight_format=weight_format,
            device=device,
            nan_policy=nan_policy,
            source=source,
        )
        with progress_callback(progress, "predict volume") as report:
            return _execute(
                run,
                resume=resume,
                workers_per_runtime=workers_per_runtime,
                timeout=timeout,
                report=report,
                started=started,
            )
    finally:
        image.close()


# -- planning ----------------------------------------------------------------------------------


def _plan(
    client: VolumeCalls,
    model_id: str,
    image: ImageFile,
    destination: str | Path | Mapping[str, str | Path],
    *,
    level: int,
    channel: int | None,
    per_plane: bool,
    keep_singletons: bool,
    blocksize: int | None,
    weight_format: str | None,
    device: str | None,
    nan_policy: str,
    source: VolumeLike,
) -> VolumeRun:
    info = client.describe(model_id)
    if len(info.inputs) != 1:
        raise errors.FailedPreconditionError(
            f"model {info.name!r} takes {len(info.inputs)} inputs; volumes are predicted block "
            "by block for single-input models",
            details={"inputs": len(info.inputs)},
        )
    spec = info.inputs[0]
    if image.axes is None:
        raise errors.InvalidArgumentError(
            f"{image.name} (shape {image.shape}) does not say what its axes are: give them "
            "(axes='zyx', --axes zyx)"
        )
    plan = plan_input(
        image.name, image.shape, image.axes, spec, info.name, per_plane=per_plane, rgb=image.rgb
    )
    assert plan.sent_dims is not None
    sent_index = tuple(i for i in range(len(image.shape)) if i not in plan.loop + plan.drop)
    sizes = {d: image.shape[i] for d, i in zip(plan.sent_dims, sent_index, strict=True)}
    pad = PadMode.from_description(_rdf_input(info).get("pad"))
    n = blocksize if blocksize is not None else choose_n(spec, sizes, DEFAULT_BLOCK_VOXELS)
    grid = plan_grid(
        spec,
        info.outputs,
        sizes,
        [image.shape[i] for i in plan.loop],
        n=n,
        pad=pad,
        order=plan.sent_dims,
    )
    destinations = _destinations(destination, [o.id for o in info.outputs])
    if isinstance(source, (str, Path)) and Path(source).resolve() in {
        p.resolve() for p in destinations.values()
    }:
        raise errors.InvalidArgumentError(f"the destination {source} is the source")
    options = {
        "weight_format": weight_format or "",
        "device": device or "",
        "nan_policy": nan_policy,
    }
    identity = {
        "model": info.id,
        "source": fingerprint(image, {"name": image.name, "level": level, "channel": channel}),
        # those asked for ("": any) until a runtime or the destination says which
        "weights": {"weight_format": options["weight_format"], "device": options["device"]},
        "options": {
            "axes": list(image.axes),
            "per_plane": per_plane,
            "keep_singletons": keep_singletons,
        },
        "grid": {
            "blocksize": n,
            "axes": [[a.axis, a.size, a.block, a.halo] for a in grid.axes],
            "samples": list(grid.samples),
            "pad": asdict(grid.pad),
        },
    }
    return VolumeRun(
        client=client,
        info=info,
        image=image,
        plan=plan,
        spec=spec,
        grid=grid,
        sent=plan.sent_dims,
        sent_index=sent_index,
        identity=identity,
        options=options,
        keep=("channel",) if keep_singletons else (),
        destinations=destinations,
    )


def _rdf_input(info: ModelInfo) -> dict[str, Any]:
    inputs = (info.rdf or {}).get("inputs") or [{}]
    first = inputs[0]
    return first if isinstance(first, dict) else {}


def _destinations(
    destination: str | Path | Mapping[str, str | Path], output_ids: list[str]
) -> dict[str, Path]:
    if isinstance(destination, Mapping):
        missing = [o for o in output_ids if o not in destination]
        if missing:
            raise errors.InvalidArgumentError(
                f"no destination for output(s) {missing}; the model's outputs are {output_ids}"
            )
        return {o: Path(destination[o]) for o in output_ids}
    path = Path(destination)
    if len(output_ids) == 1:
        return {output_ids[0]: path}
    name = path.name
    suffix = ".ome.zarr" if name.lower().endswith(".ome.zarr") else path.suffix
    stem = name[: len(name) - len(suffix)] if suffix else name
    return {o: path.with_name(f"{stem}_{o}{suffix}") for o in output_ids}


# -- running -----------------------------------------------------------------------------------


def _execute(
    run: VolumeRun,
    *,
    resume: bool,
    workers_per_runtime: int,
    timeout: float | None,
    report: Callable[[Progress], None] | None,
    started: float,
) -> VolumeResult:
    # refused before any work: a destination of another run, or of this one without resume
    for oid, path in run.destinations.items():
        opened = VolumeDestination.open(path, {**run.identity, "output": oid}, resume=resume)
        if opened is not None:
            run.opened[oid] = opened
    try:
        done = _done(run)
        blocks = [b for b in run.grid.blocks() if not run.grid.is_empty(b)]
        todo = [b for b in blocks if b.index not in done]
        routes = routes_for_the_weights(run, timeout) if todo else []
        compute_statistics(run, todo, report)
        nbytes = 0
        predicted = 0
        predict_started = time.monotonic()
        if todo:
            first = todo[0]
            if len(run.opened) < len(run.destinations):
                # the first block tells the outputs' channels and dtype: then the destinations
                inputs = read_block(run, first)
                outputs, routes = predict_first(routes, first, inputs)
                create_destinations(run, outputs, len(blocks))
                write_block(run, first, outputs)
                nbytes += inputs.nbytes
                predicted += 1
                todo = todo[1:]
            predicted_rest, rest_bytes = _pipeline(
                run, routes, todo, len(blocks), len(blocks) - len(todo), workers_per_runtime,
                report,
            )  # fmt: skip
            predicted += predicted_rest
            nbytes += rest_bytes
        predict_seconds = time.monotonic() - predict_started
        _pyramids(run, report)
        seconds = time.monotonic() - started
        return VolumeResult(
            destinations=dict(run.destinations),
            blocks=len(blocks),
            blocks_predicted=predicted,
            runtimes=len(routes),
            seconds=seconds,
            predict_seconds=predict_seconds,
            input_bytes=nbytes,
            blocksize=int(run.identity["grid"]["blocksize"]),
        )
    finally:
        for d in run.opened.values():
            d.close()


def _done(run: VolumeRun) -> set[int]:
    """Blocks finished in every destination (none where a destination is still to be made)."""
    if len(run.opened) < len(run.destinations):
        return set()
    sets = [d.done_blocks() for d in run.opened.values()]
    return set.intersection(*sets) if sets else set()


def _pipeline(
    run: VolumeRun,
    routes: list[BlockRuntime],
    todo: list[Block],
    total: int,
    already: int,
    workers_per_runtime: int,
    report: Callable[[Progress], None] | None,
) -> tuple[int, int]:
    state = {"done": already, "bytes": 0}
    lock = threading.Lock()

    def written(block: Block, nbytes: int) -> None:
        with lock:
            state["done"] += 1
            state["bytes"] += nbytes
            if report is not None:
                report(
                    Progress(
                        stage="predict",
                        done=state["done"],
                        total=total,
                        unit="blocks",
                        bytes_done=state["bytes"],
                    )
                )

    if report is not None:
        report(Progress(stage="predict", done=already, total=total, unit="blocks"))
    predictors = workers_per_runtime * len(routes)
    pipeline = BlockPipeline(
        read=lambda b: read_block(run, b),
        routes=routes,
        write=lambda b, outputs: write_block(run, b, outputs),
        workers_per_runtime=workers_per_runtime,
        depth=max(2, predictors),
        on_written=written,
    )
    count = pipeline.run(todo)
    return count, state["bytes"]


def _pyramids(run: VolumeRun, report: Callable[[Progress], None] | None) -> None:
    destinations = [d for d in run.opened.values() if not d.record.complete]
    total = sum(d.pyramid_tasks() for d in destinations)
    count = [0]

    def advanced(n: int) -> None:
        count[0] += n
        if report is not None:
            report(Progress(stage="pyramid", done=count[0], total=total, unit="chunks"))

    for destination in destinations:
        destination.build_pyramid(progress=advanced)
        destination.mark_complete()
