"""A model whose cost is its processing: percentile scaling per channel, clipping and a sigmoid
around an identity network (``tests.tiny_models.build_heavy_processing_model``, ONNX), remote
through modelrunner against bioimageio.core in this process, at each frame size.

bioimageio.core runs the processing in xarray/numpy; modelrunner serves the model on its fast
path (the same steps as torch operations, checked against bioimageio.core when the model
loads). Both go from a numpy array to a numpy array, as in :mod:`.unet2d`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from ..context import BenchContext
from ..frames import FrameSize
from ..modelrunner_server import REPO_ROOT
from ..rounds import IN_PROCESS, LOCKSTEP, MODELRUNNER, PROCESSING, Case
from .unet2d import InProcess

WEIGHTS = "onnx"


def _build(directory: Path) -> Path:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.tiny_models import build_heavy_processing_model

    return build_heavy_processing_model(directory) / "rdf.yaml"


def processing_cases(ctx: BenchContext, sizes: list[FrameSize]) -> list[Case]:
    package = _build(ctx.workdir / "heavy-processing")
    if not package.exists():
        package = package.with_name("bioimageio.yaml")
    local = InProcess(package, WEIGHTS)
    ctx.stack.callback(local.close)
    runner = ctx.modelrunner()
    model_id = runner.add_and_load(package.parent, WEIGHTS)
    client = runner.client
    cases: list[Case] = []
    for size in sizes:
        frame = np.random.default_rng(size.side).gamma(2.0, 100.0, size.shape).astype(np.float32)

        def in_process(n: int, frame: np.ndarray = frame) -> float:
            start = time.perf_counter()
            for _ in range(n):
                local.predict(frame)
            return time.perf_counter() - start

        def remote(n: int, frame: np.ndarray = frame) -> float:
            start = time.perf_counter()
            for _ in range(n):
                client.predict(model_id, frame, weight_format=WEIGHTS)
            return time.perf_counter() - start

        def check(frame: np.ndarray = frame) -> None:
            (out,) = client.predict(model_id, frame, weight_format=WEIGHTS).values()
            np.testing.assert_allclose(out, local.predict(frame), rtol=0, atol=1e-4)

        for system, call, run, checked in (
            (IN_PROCESS, "pipeline.predict_sample_without_blocking (warm)", in_process, None),
            (MODELRUNNER, "client.predict", remote, check),
        ):
            cases.append(
                Case(
                    system,
                    LOCKSTEP,
                    PROCESSING,
                    size.label,
                    size.nbytes,
                    call=call,
                    run=run,
                    check=checked,
                    min_frames=ctx.settings.unet2d_min_frames,
                    max_frames=ctx.settings.unet2d_max_frames,
                )
            )
    return cases
