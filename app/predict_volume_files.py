"""``modelrunner predict MODEL big.ome.zarr -o out.ome.zarr``: one input into one OME-Zarr,
block by block, through :meth:`ModelRunnerClient.predict_volume` (images of any size, every
runtime, ``--resume``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from modelrunner import errors
from modelrunner.images.axes import letters, parse_axes
from modelrunner.images.ome_zarr import read_ome_zarr

if TYPE_CHECKING:
    from modelrunner.client import ModelRunnerClient


def predict_volume_file(
    client: ModelRunnerClient, model_id: str, source: Path, output: Path, args: argparse.Namespace
) -> None:
    """Predict ``source`` into ``output`` and say on stderr what was written."""
    result = client.predict_volume(
        model_id,
        source,
        output,
        axes=parse_axes(args.axes) if args.axes else None,
        level=args.level,
        channel=args.channel,
        per_plane=args.per_plane,
        keep_singletons=args.keep_singletons,
        blocksize=args.blocksize,
        weight_format=args.weight_format,
        device=args.device,
        resume=args.resume,
        progress=not args.no_progress,
        timeout=None,
    )
    for oid, path in result.destinations.items():
        shape, axes = _written(path)
        if result.blocks_predicted:
            work = (
                f"{result.blocks_predicted} of {result.blocks} blocks predicted on "
                f"{result.runtimes} runtime{'s' if result.runtimes != 1 else ''}, "
                f"{result.megabytes_per_s:.1f} MB/s"
            )
        else:
            work = f"all {result.blocks} blocks were done already"
        print(
            f"{source.name} -> {path} ({oid}: {shape}, axes {letters(axes)}; {work})",
            file=sys.stderr,
        )


def _written(path: Path) -> tuple[list[int], tuple[str, ...]]:
    """The shape and axes of the OME-Zarr image written at ``path`` (its full resolution)."""
    try:
        image = read_ome_zarr(path)
    except errors.ModelRunnerError:
        return [], ()
    return list(image.array.shape), image.axes
