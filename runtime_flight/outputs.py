"""What the runtime's data plane answers a prediction with: :class:`Outputs` (whole arrays), or
:class:`StreamedOutputs` (a large tiled prediction whose rows come band by band)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass

import numpy as np

from modelrunner import errors

from .serving_paths import PathName


@dataclass(frozen=True)
class Outputs:
    """A prediction's outputs, with what the wire needs to describe them."""

    arrays: dict[str, np.ndarray]
    dim_names: dict[str, tuple[str, ...]]
    weight_format: str
    device: str
    serving_path: PathName = "reference"
    """Which path computed them (see :mod:`.fast_path`)."""


@dataclass
class StreamedOutputs:
    """A prediction's outputs still being computed: their shapes and dtypes are known, and
    ``bands`` yields, for each output, its next rows (C order) as the tiles finish. The pipeline
    stays lent and locked to this prediction until ``bands`` is exhausted or closed."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]
    dim_names: dict[str, tuple[str, ...]]
    weight_format: str
    device: str
    bands: LeasedBands
    serving_path: PathName = "reference"
    """Tiled predictions run through bioimageio.core's blockwise pipeline."""
    blocks: int = 0
    """How many blocks the prediction takes."""

    def close(self) -> None:
        self.bands.close()


class LeasedBands:
    """An iterator over a streamed prediction's bands that lets go of what it holds (the
    pipeline's lock, its lease from the pool) when it is exhausted, fails or is closed (closing
    also works before the first band, unlike closing a generator that never started)."""

    def __init__(self, bands: Iterator[dict[str, np.ndarray]], lease: ExitStack) -> None:
        self._bands = bands
        self._lease: ExitStack | None = lease

    def __iter__(self) -> LeasedBands:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            return next(self._bands)
        except BaseException:
            self.close()
            raise

    def hold(self, more: ExitStack) -> None:
        """Let go of ``more`` too, after what it holds already."""
        if self._lease is None:
            more.close()
            return
        more.push(self._lease)
        self._lease = more

    def close(self) -> None:
        lease, self._lease = self._lease, None
        if lease is None:
            return
        try:
            close = getattr(self._bands, "close", None)
            if close is not None:
                close()
        finally:
            lease.close()


def whole_outputs(outputs: StreamedOutputs, cancelled: Callable[[], bool]) -> Outputs:
    """Read a streamed prediction's bands into whole arrays. Whole answers are for samples of a
    few MiB (sessions, Open Inference requests), which the plane rarely streams
    (``stream_tiles_min_bytes``), so holding the whole output costs no more than an ordinary
    prediction does."""
    with closing(outputs):
        arrays = {
            name: np.empty(shape, dtype=outputs.dtypes[name])
            for name, shape in outputs.shapes.items()
        }
        filled = dict.fromkeys(arrays, 0)
        for bands in outputs.bands:
            if cancelled():
                raise errors.CancelledError("the client cancelled the prediction")
            for name, band in bands.items():
                flat = arrays[name].reshape(-1)
                flat[filled[name] : filled[name] + band.size] = band.reshape(-1)
                filled[name] += band.size
    if any(filled[name] != a.size for name, a in arrays.items()):
        raise errors.InternalError("the tiled prediction ended before its outputs were whole")
    return Outputs(
        arrays,
        outputs.dim_names,
        outputs.weight_format,
        outputs.device,
        outputs.serving_path,
    )
