"""Timing: cases, calibration and interleaved rounds.

A *case* is one system doing one kind of call on one frame size; ``run(n)`` moves ``n`` frames and
returns the seconds it took. Each case is warmed up and calibrated once (how many frames make a
round of about ``round_seconds``), then every round runs every case once, in a rotating order, so
slow drifts of a noisy machine hit all systems alike and per-round ratios compare neighbours.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

# Systems, as named in the results.
ECHO = "flight echo"
MODELRUNNER = "modelrunner"
AUTHENTICATED = "modelrunner, auth"
SECURED = "modelrunner, auth + TLS"
TRITON = "triton"
OPEN_INFERENCE = "modelrunner V2, tritonclient"
RAW_FLIGHT = "modelrunner, raw pyarrow Flight"
RAW_V2 = "modelrunner V2, raw grpcio"
NODE_FLIGHT = "modelrunner, Node.js Flight"
NODE_V2 = "modelrunner, Node.js V2"
IN_PROCESS = "bioimageio.core in-process"
IN_PROCESS_WARM = "bioimageio.core in-process, loaded once"
CORE_REMOTE = "modelrunner pipeline, remote processing"
CORE_LOCAL = "modelrunner pipeline, local processing"

LOCKSTEP = "lockstep"
STREAM = "stream"

IDENTITY = "identity"
UNET2D = "unet2d_nuclei_broad"
BATCHING = "tiny conv, free batch axis"
RAW_TORCH = "raw torch"
NETWORK_ALONE = "network alone"
NUMPY_TO_NUMPY = "numpy to numpy"
STREAM_BATCHED = "stream, batched"
PROCESSING = "heavy processing"
CORE_PREDICT = "bioimageio.core.predict, heavy processing"


@dataclass
class Case:
    system: str
    mode: str
    workload: str
    size: str
    frame_bytes: int
    call: str
    """What one frame costs in API terms, for the table (e.g. ``client.predict``)."""
    run: Callable[[int], float]
    check: Callable[[], None] | None = None
    """Verifies once, untimed, that the system returns what the workload should."""
    min_frames: int = 1
    max_frames: int | None = None
    """Caps the frames of a round below the run's own cap (slow cases)."""

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.system, self.mode, self.workload, self.size)


@dataclass
class CaseResult:
    system: str
    mode: str
    workload: str
    size: str
    frame_bytes: int
    call: str
    frames_per_round: int = 0
    round_seconds: list[float] = field(default_factory=list)
    error: str | None = None

    @classmethod
    def of(cls, case: Case, *, error: str | None = None) -> CaseResult:
        return cls(
            case.system,
            case.mode,
            case.workload,
            case.size,
            case.frame_bytes,
            case.call,
            error=error,
        )

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.system, self.mode, self.workload, self.size)

    @property
    def round_fps(self) -> list[float]:
        return [self.frames_per_round / s for s in self.round_seconds if s > 0]

    @property
    def fps(self) -> float | None:
        """Median frames per second over the rounds."""
        values = self.round_fps
        return statistics.median(values) if values else None

    @property
    def gb_per_s(self) -> float | None:
        """Median input payload in GB/s (1e9 bytes); every frame also travels back."""
        fps = self.fps
        return None if fps is None else fps * self.frame_bytes / 1e9

    @property
    def ms_per_frame(self) -> float | None:
        fps = self.fps
        return None if not fps else 1000.0 / fps

    def to_json(self) -> dict[str, object]:
        return {
            "system": self.system,
            "mode": self.mode,
            "workload": self.workload,
            "size": self.size,
            "frame_bytes": self.frame_bytes,
            "call": self.call,
            "frames_per_round": self.frames_per_round,
            "round_seconds": self.round_seconds,
            "round_fps": self.round_fps,
            "fps_median": self.fps,
            "gb_per_s_median": self.gb_per_s,
            "error": self.error,
        }


def describe_error(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return first[:300]


def calibrate(case: Case, *, round_seconds: float, max_frames: int) -> int:
    """Warm the case up and choose how many frames make a round of about ``round_seconds``."""
    if case.max_frames is not None:
        max_frames = min(max_frames, case.max_frames)
    case.run(case.min_frames)  # first calls pay for connections, allocations, lazy imports
    probe = max(case.min_frames, 2)
    spent = 0.0
    frames = 0
    # Grow the probe 4x at a time until it takes a measurable share of a round (8 probes at most).
    for _ in range(8):
        spent = case.run(probe)
        frames = probe
        if spent >= round_seconds / 4 or probe >= max_frames:
            break
        probe = min(max_frames, probe * 4)
    per_frame = spent / max(frames, 1)
    wanted = round(round_seconds / per_frame) if per_frame > 0 else max_frames
    return max(case.min_frames, min(max_frames, wanted))


def run_rounds(
    cases: Sequence[Case],
    *,
    rounds: int,
    round_seconds: float,
    max_frames: int,
) -> list[CaseResult]:
    """Check, calibrate, then run ``rounds`` interleaved rounds; failures become results."""
    results = [CaseResult.of(c) for c in cases]
    for case, result in zip(cases, results, strict=True):
        try:
            if case.check is not None:
                case.check()
            result.frames_per_round = calibrate(
                case, round_seconds=round_seconds, max_frames=max_frames
            )
            logger.info(
                "%s %s %s %s: %d frames per round",
                case.system,
                case.mode,
                case.workload,
                case.size,
                result.frames_per_round,
            )
        except Exception as e:
            logger.exception("%s %s %s failed", case.system, case.mode, case.size)
            result.error = describe_error(e)
    live = [i for i, r in enumerate(results) if r.error is None]
    for r in range(rounds):
        started = time.monotonic()
        # Rotate the order, so that no case always runs first (or last) in a round.
        order = live[r % len(live) :] + live[: r % len(live)] if live else []
        for i in order:
            case, result = cases[i], results[i]
            if result.error is not None:
                continue
            try:
                result.round_seconds.append(case.run(result.frames_per_round))
            except Exception as e:
                logger.exception("%s %s %s failed", case.system, case.mode, case.size)
                result.error = describe_error(e)
        logger.info("round %d/%d done in %.1f s", r + 1, rounds, time.monotonic() - started)
    return results
