"""What a volume prediction did (:meth:`ModelRunnerClient.predict_volume`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class VolumeResult:
    """What :meth:`ModelRunnerClient.predict_volume` did."""

    destinations: dict[str, Path]
    """Output id -> the OME-Zarr image written."""
    blocks: int
    """Blocks in the run (blocks that fall wholly in the padding are not counted)."""
    blocks_predicted: int
    """Blocks predicted by this call (fewer than ``blocks`` when it resumed a run)."""
    runtimes: int
    seconds: float
    """The whole call: statistics, blocks and pyramid."""
    predict_seconds: float
    """The blocks alone: reading, predicting and writing them."""
    input_bytes: int
    """Bytes of input read for the blocks predicted by this call (halos included)."""
    blocksize: int
    """bioimageio.core's block size parameter n of the grid."""

    @property
    def megabytes_per_s(self) -> float:
        """Input MB/s of the blocks predicted (reading, prediction and writing)."""
        return self.input_bytes / 1e6 / self.predict_seconds if self.predict_seconds else 0.0
