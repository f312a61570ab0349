"""What every system of one benchmark run shares: settings, folders, cleanup, the modelrunner."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from .modelrunner_server import ModelRunner, start_modelrunner


@dataclass(frozen=True)
class Settings:
    smoke: bool
    rounds: int
    round_seconds: float
    """Calibrated length of one round of one case."""
    max_frames: int
    """Upper bound of frames in one round of one case."""
    lockstep_min_frames: int
    """A lockstep round makes at least this many calls, so one slow call weighs less."""
    stream_min_frames: int
    """A stream round sends at least this many frames, so that it really streams."""
    max_in_flight: int
    tiled_side: int
    """Side of the large 2-D image of the tiled-prediction memory measurement."""
    tile: int
    long_stream_side: int
    long_stream_frames: int
    long_stream_seconds: float
    """The long stream stops after this long even if frames are left."""
    unet2d_min_frames: int
    """unet2d takes about 250 ms a frame on 2 cores: rounds of a few frames would be noise."""
    unet2d_max_frames: int
    device: str = "cpu"
    """Where the models run (``--device``): the server's default device and the in-process
    reference's."""

    @classmethod
    def full(cls, rounds: int | None = None) -> Settings:
        return cls(
            smoke=False,
            rounds=rounds or 5,
            round_seconds=1.0,
            max_frames=5000,
            lockstep_min_frames=8,
            stream_min_frames=16,
            max_in_flight=8,
            tiled_side=8192,
            tile=1024,
            long_stream_side=512,
            long_stream_frames=10_000,
            long_stream_seconds=120.0,
            unet2d_min_frames=8,
            unet2d_max_frames=50,
        )

    @classmethod
    def smoke_test(cls, rounds: int | None = None) -> Settings:
        return cls(
            smoke=True,
            rounds=rounds or 2,
            round_seconds=0.05,
            max_frames=50,
            lockstep_min_frames=1,
            stream_min_frames=4,
            max_in_flight=8,
            tiled_side=1024,
            tile=256,
            long_stream_side=64,
            long_stream_frames=200,
            long_stream_seconds=10.0,
            unet2d_min_frames=1,
            unet2d_max_frames=2,
        )


class BenchContext:
    """Cleanup goes on ``stack``; a modelrunner server starts on first use of its name and is
    shared by everything that asks for that name."""

    def __init__(self, stack: ExitStack, workdir: Path, log_dir: Path, settings: Settings) -> None:
        self.stack = stack
        self.workdir = workdir
        self.log_dir = log_dir
        self.settings = settings
        self._runners: dict[str, ModelRunner] = {}

    def modelrunner(self, name: str = "modelrunner", *, security: str = "") -> ModelRunner:
        """``security``: "auth" (the server runs with ``--auth``) or "tls" (``--auth`` and TLS
        on both planes)."""
        if name not in self._runners:
            self._runners[name] = start_modelrunner(
                self.stack,
                self.workdir,
                self.log_dir,
                name=name,
                device=self.settings.device,
                security=security,
            )
        return self._runners[name]
