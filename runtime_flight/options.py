"""Per-request inference options: the transport-free form of ``PredictCommand``'s options.

The weight format and device choose the pipeline (see :mod:`.pipelines`); everything here
changes how one pipeline predicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from modelrunner.errors import InvalidArgumentError
from modelrunner.types import SampleStatistic

MiB = 1024**2

NanPolicy = Literal["reject", "allow"]


@dataclass(frozen=True)
class PredictOptions:
    blocksize: int | None = None
    """bioimageio.core's block size parameter ``n`` (block = min + n * step on every
    parameterized axis, capped at the image): predict tile by tile. None: the whole image when
    it fits the model and ``max_tile_input_bytes``, else tiles chosen by the runtime."""
    nan_policy: NanPolicy = "reject"
    """``reject``: inputs with NaN values are refused (InvalidTensorError); ``allow``: passed on."""
    skip_preprocessing: bool = False
    """Skip the model's preprocessing; inputs are only cast to the dtype the network takes."""
    skip_postprocessing: bool = False
    """Return the network's raw outputs."""
    reference_path: bool = False
    """Run bioimageio.core's pipeline even where the fast path serves the model."""
    precision: str = ""
    """"float16" or "bfloat16": the network runs in that precision on the fast path (which the
    call must then take); "": the weights' own precision."""
    keep_shape: bool = False
    """bioimageio.core's own call on the sample exactly as sent (:mod:`.kept_shape`): no
    padding, tiling or fitting to the model's sizes, no fast path; with ``blocksize`` n its
    blockwise prediction with ``ns=n``. With both processing steps skipped: the network alone,
    what a bioimageio.core ``RemoteModelAdapter`` asks for."""
    block_statistics: tuple[SampleStatistic, ...] | None = None
    """Block mode (:mod:`.sample_blocks`): the sample is one block of a larger one, predicted as
    sent with these statistics of the whole sample in its pre- and postprocessing. None: the
    sample is whole."""
    max_batch_size: int = 0
    """``predict_batch``: the most samples stacked along the batch axis; 0: no limit."""
    max_tile_input_bytes: int = 256 * MiB
    """Inputs whose (padded) network input exceeds this are predicted tile by tile."""
    stream_tiles_min_bytes: int = 64 * MiB
    """Tiled predictions of inputs at least this large may stream their outputs band by band
    (:func:`.inference.start_prediction`); :func:`.inference.predict` always returns whole
    arrays."""

    def __post_init__(self) -> None:
        if self.blocksize is not None and self.blocksize < 0:
            raise InvalidArgumentError(
                f"blocksize must be 0 or more, got {self.blocksize}",
                details={"blocksize": self.blocksize},
            )
        if self.precision not in ("", "float16", "bfloat16"):
            raise InvalidArgumentError(
                f"precision must be 'float16' or 'bfloat16' (or empty: the weights' own), "
                f"got {self.precision!r}",
                details={"precision": self.precision},
            )
        if self.precision and self.reference_path:
            raise InvalidArgumentError(
                "reduced precision runs on the fast path only; it cannot go with reference_path",
                details={"precision": self.precision},
            )
        if self.keep_shape and self.precision:
            raise InvalidArgumentError(
                "keep_shape runs bioimageio.core's pipeline; reduced precision runs on the fast "
                "path only",
                details={"precision": self.precision},
            )
        if self.block_statistics is not None and (self.blocksize is not None or self.precision):
            raise InvalidArgumentError(
                "a block of a larger sample is predicted as sent, on bioimageio.core's pipeline: "
                "it takes neither blocksize nor precision",
                details={"option": "blocksize" if self.blocksize is not None else "precision"},
            )
        if self.max_batch_size < 0:
            raise InvalidArgumentError(
                f"max_batch_size must be 0 (no limit) or more, got {self.max_batch_size}",
                details={"max_batch_size": self.max_batch_size},
            )
        if self.nan_policy not in ("reject", "allow"):
            raise InvalidArgumentError(
                f"nan_policy must be 'reject' or 'allow', got {self.nan_policy!r}",
                details={"nan_policy": self.nan_policy},
            )
        if self.stream_tiles_min_bytes < 0:
            raise InvalidArgumentError(
                f"stream_tiles_min_bytes must be 0 or more, got {self.stream_tiles_min_bytes}",
                details={"stream_tiles_min_bytes": self.stream_tiles_min_bytes},
            )
        if self.max_tile_input_bytes <= 0:
            raise InvalidArgumentError(
                f"max_tile_input_bytes must be positive, got {self.max_tile_input_bytes}",
                details={"max_tile_input_bytes": self.max_tile_input_bytes},
            )
