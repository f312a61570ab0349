"""Server memory of modelrunner: one tiled prediction of a large 2-D image, and a long stream.

Both run on a server of their own (not the one the timed rounds share), with the identity model,
so that what the server keeps from earlier requests does not hide what these cost. The server's
resident memory (its process tree) is sampled every few milliseconds during the request; the
figure is the peak minus the value just before, and for the tiled image also that increase
divided by the input's size (1.0 = one extra copy of the input).
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import psutil

from ..context import BenchContext
from ..frames import make_frame
from ..memory import PeakRss
from ..modelrunner_server import identity_blocksize

logger = logging.getLogger(__name__)
MiB = 1024**2
RUNNER = "modelrunner-memory"
_KINDS = 7
"""The long stream cycles through this many different frames."""
_CHECK_EVERY = 3
"""Every third output of the long stream is compared with its frame (coprime with _KINDS)."""
"""The server these measurements share, apart from the timed rounds' one."""


@dataclass(frozen=True)
class TiledMemory:
    image_shape: tuple[int, ...]
    input_bytes: int
    tile: int
    blocksize: int
    seconds: float
    baseline_rss: int
    peak_rss: int

    @property
    def increase(self) -> int:
        return max(0, self.peak_rss - self.baseline_rss)

    @property
    def increase_per_input(self) -> float:
        return self.increase / self.input_bytes

    def to_json(self) -> dict[str, object]:
        return {
            **asdict(self),
            "increase": self.increase,
            "increase_per_input": self.increase_per_input,
        }


@dataclass(frozen=True)
class LongStream:
    frame_shape: tuple[int, ...]
    frame_bytes: int
    frames: int
    seconds: float
    max_in_flight: int
    baseline_rss: int
    peak_rss: int
    end_rss: int
    client_start_rss: int
    """The benchmark's own (the client's) resident memory when the stream started, and ended."""
    client_end_rss: int
    unchanged: bool
    """Every frame's output equalled its input (the identity), in order."""

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def gb_per_s(self) -> float:
        return self.fps * self.frame_bytes / 1e9

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "fps": self.fps, "gb_per_s": self.gb_per_s}


def tiled_memory(ctx: BenchContext) -> TiledMemory:
    settings = ctx.settings
    runner = ctx.modelrunner(RUNNER)
    model_id = runner.identity_model()
    blocksize = identity_blocksize(settings.tile)
    # Warm the tiled path on a small image, so the measurement does not count first-use costs.
    small = make_frame((2 * settings.tile, 2 * settings.tile), seed=1)
    runner.client.predict(model_id, small, blocksize=blocksize)
    image = make_frame((settings.tiled_side, settings.tiled_side), seed=2)
    logger.info(
        "tiled prediction of a %s image (%d MiB), tiles of %d",
        image.shape,
        image.nbytes // MiB,
        settings.tile,
    )
    with PeakRss(runner.server.pid) as rss:
        start = time.perf_counter()
        outputs = runner.client.predict(model_id, image, blocksize=blocksize)
        seconds = time.perf_counter() - start
    (out,) = outputs.values()
    if not np.array_equal(out.reshape(image.shape), image):
        raise RuntimeError(f"the tiled identity changed the image (got shape {out.shape})")
    return TiledMemory(
        image_shape=tuple(image.shape),
        input_bytes=image.nbytes,
        tile=settings.tile,
        blocksize=blocksize,
        seconds=seconds,
        baseline_rss=rss.baseline,
        peak_rss=rss.peak,
    )


def long_stream(ctx: BenchContext) -> LongStream:
    """Frames per second (and server memory) over one long ``predict_stream``."""
    settings = ctx.settings
    runner = ctx.modelrunner(RUNNER)
    model_id = runner.identity_model()
    side = settings.long_stream_side
    # a few different frames in turn, so that order and content can be checked
    frames_in_turn = [make_frame((1, 1, side, side)) + i for i in range(_KINDS)]
    frame = frames_in_turn[0]
    in_flight = settings.max_in_flight
    client = psutil.Process()
    # Warm-up stream: connection, model session and buffers.
    with runner.client.predict_stream(
        model_id, itertools.repeat(frame, 2 * in_flight), max_in_flight=in_flight
    ) as warm:
        for _ in warm:
            pass
    frames = 0
    unchanged = True
    client_start_rss = client.memory_info().rss
    with PeakRss(runner.server.pid, interval=0.01) as rss:
        start = time.perf_counter()
        deadline = start + settings.long_stream_seconds
        with runner.client.predict_stream(
            model_id,
            (frames_in_turn[i % _KINDS] for i in range(settings.long_stream_frames)),
            max_in_flight=in_flight,
        ) as results:
            for outputs in results:
                if frames % _CHECK_EVERY == 0:
                    (out,) = outputs.values()
                    unchanged &= bool(np.array_equal(out, frames_in_turn[frames % _KINDS]))
                frames += 1
                if time.perf_counter() > deadline:
                    break
        seconds = time.perf_counter() - start
    client_end_rss = client.memory_info().rss
    logger.info("long stream: %d frames in %.1f s", frames, seconds)
    return LongStream(
        frame_shape=tuple(frame.shape),
        frame_bytes=frame.nbytes,
        frames=frames,
        seconds=seconds,
        max_in_flight=in_flight,
        baseline_rss=rss.baseline,
        peak_rss=rss.peak,
        end_rss=rss.last,
        client_start_rss=client_start_rss,
        client_end_rss=client_end_rss,
        unchanged=unchanged,
    )
