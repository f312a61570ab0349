"""What one prediction may make this runtime spend: the settings every predict path reads, in
one object given to the data plane and its warm pipelines (not per request: a client cannot
raise them).

New runtime-side limits go here, with their refusal: RESOURCE_EXHAUSTED or INVALID_ARGUMENT
naming the setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelrunner import errors
from modelrunner.units import GiB, MiB

if TYPE_CHECKING:
    from modelrunner.settings import Settings


@dataclass(frozen=True)
class RuntimeLimits:
    max_sample_bytes: int = 16 * GiB
    """The largest sample a client may send (setting ``max_sample_bytes``)."""
    max_tile_input_bytes: int = 256 * MiB
    """Inputs whose (padded) network input exceeds this are predicted tile by tile; a sample
    kept as sent must stay under it (setting ``max_tile_input_bytes``)."""
    stream_tiles_min_bytes: int = 64 * MiB
    """Tiled predictions of inputs at least this large may stream their outputs band by band
    (setting ``stream_tiles_min_bytes``)."""

    def __post_init__(self) -> None:
        if self.max_tile_input_bytes <= 0:
            raise errors.InvalidArgumentError(
                f"max_tile_input_bytes must be positive, got {self.max_tile_input_bytes}",
                details={"max_tile_input_bytes": self.max_tile_input_bytes},
            )
        if self.stream_tiles_min_bytes < 0:
            raise errors.InvalidArgumentError(
                f"stream_tiles_min_bytes must be 0 or more, got {self.stream_tiles_min_bytes}",
                details={"stream_tiles_min_bytes": self.stream_tiles_min_bytes},
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> RuntimeLimits:
        return cls(
            max_sample_bytes=settings.max_sample_bytes,
            max_tile_input_bytes=settings.max_tile_input_bytes,
            stream_tiles_min_bytes=settings.stream_tiles_min_bytes,
        )

    def check_sample_bytes(self, nbytes: int, described: str = "") -> None:
        """InvalidTensorError when a sample of ``nbytes`` is larger than ``max_sample_bytes``
        (``described``: its tensors, for the message)."""
        if nbytes <= self.max_sample_bytes:
            return
        what = (
            f"the announced sample takes {nbytes} bytes ({described})"
            if described
            else f"the sample takes {nbytes} bytes"
        )
        raise errors.InvalidTensorError(
            f"{what}, more than this runtime's limit of {self.max_sample_bytes} bytes (setting "
            "max_sample_bytes); predict it in smaller parts",
            details={"got": nbytes, "expected": f"at most {self.max_sample_bytes}"},
        )
