"""The frames every system moves: float32 ``(1, 1, side, side)`` images (batch, channel, y, x)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FrameSize:
    side: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (1, 1, self.side, self.side)

    @property
    def nbytes(self) -> int:
        return self.side * self.side * np.dtype(np.float32).itemsize

    @property
    def label(self) -> str:
        return f"{self.side}x{self.side}"


def parse_sizes(text: str) -> list[FrameSize]:
    """``"512,2048"`` -> frame sizes (square sides in pixels)."""
    sizes = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        side = int(part.split("x")[0])
        if side < 1:
            raise ValueError(f"frame side must be positive, got {side}")
        sizes.append(FrameSize(side))
    if not sizes:
        raise ValueError("no frame sizes given")
    return sizes


def make_frame(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A C-contiguous float32 frame of random values in [0, 1)."""
    return np.random.default_rng(seed).random(shape, dtype=np.float32)
