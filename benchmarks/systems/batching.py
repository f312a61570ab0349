"""Batching: a tiny TorchScript convolution whose batch axis is free, streamed 512x512 frames at
a time, once with one frame per forward and once letting the runtime stack up to 8 waiting
frames along the batch axis (it takes only frames already waiting, so a sparse stream is not
delayed)."""

from __future__ import annotations

import itertools
import sys

import numpy as np

from ..context import BenchContext
from ..modelrunner_server import REPO_ROOT
from ..rounds import BATCHING, MODELRUNNER, STREAM, STREAM_BATCHED, Case
from .modelrunner import predict_stream

SIDE = 512
MAX_BATCH = 8


def batching_cases(ctx: BenchContext) -> list[Case]:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.tiny_models import build_torchscript

    package = build_torchscript(ctx.workdir / "batching-conv")
    runner = ctx.modelrunner()
    model_id = runner.add_and_load(package, "torchscript")
    client = runner.client
    frame = np.random.default_rng(0).random((1, 1, SIDE, SIDE), dtype=np.float32)

    def stream(n: int, max_batch_size: int) -> float:
        return predict_stream(
            client, model_id, frame, n, 2 * MAX_BATCH, max_batch_size=max_batch_size
        )

    def check() -> None:
        one = client.predict(model_id, frame)["out"]
        with client.predict_stream(
            model_id, itertools.repeat(frame, 4), max_batch_size=MAX_BATCH
        ) as results:
            for outputs in results:
                np.testing.assert_allclose(outputs["out"], one, rtol=1e-5, atol=1e-5)

    return [
        Case(
            MODELRUNNER,
            mode,
            BATCHING,
            f"{SIDE}x{SIDE}",
            frame.nbytes,
            call=f"client.predict_stream(..., max_batch_size={batch})",
            run=lambda n, batch=batch: stream(n, batch),
            check=check if batch > 1 else None,
            min_frames=ctx.settings.stream_min_frames,
        )
        for mode, batch in ((STREAM, 1), (STREAM_BATCHED, MAX_BATCH))
    ]
