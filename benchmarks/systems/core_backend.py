"""modelrunner as a bioimageio.core backend: the same call, ``bioimageio.core.predict(model=
pipeline, inputs=frame)``, with a pipeline in this process and with
``modelrunner.client.create_prediction_pipeline`` pipelines (processing on the server, and
processing here with the network alone on the server), at each frame size.

The model is the processing-heavy one of :mod:`.processing` (percentile scaling, clip, sigmoid
around an ONNX identity): its cost is the processing and the transport, which is what moving
work to a server changes. ``predict()`` enters the pipeline (``with pipeline:``) on every call,
so the in-process pipeline re-creates its ONNX session each time, as bioimageio.core does; the
remote pipelines keep the model warm on the server. What ``predict()`` does without that, on a
pipeline loaded once (``create_sample_for_model`` and ``predict_sample_without_blocking``), is
the warm in-process row.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..context import BenchContext
from ..frames import FrameSize
from ..rounds import (
    CORE_LOCAL,
    CORE_PREDICT,
    CORE_REMOTE,
    IN_PROCESS,
    IN_PROCESS_WARM,
    LOCKSTEP,
    Case,
)
from .processing import WEIGHTS, _build


def core_backend_cases(ctx: BenchContext, sizes: list[FrameSize]) -> list[Case]:
    from bioimageio.core import create_prediction_pipeline, predict
    from bioimageio.spec import load_model_description

    from modelrunner.client import create_prediction_pipeline as modelrunner_pipeline

    package = _build(ctx.workdir / "heavy-processing-core")
    descr: Any = load_model_description(package.parent, perform_io_checks=False)
    runner = ctx.modelrunner()
    pipelines: dict[str, Any] = {
        IN_PROCESS: create_prediction_pipeline(
            descr, weights_format=WEIGHTS, devices=["CPUExecutionProvider"]
        ),
    }
    for system, processing in ((CORE_REMOTE, "remote"), (CORE_LOCAL, "local")):
        pipelines[system] = modelrunner_pipeline(
            descr,
            server=runner.client,
            processing=processing,
            weight_format=WEIGHTS,  # type: ignore[arg-type]
        )
        ctx.stack.callback(pipelines[system].close)
    warm = pipelines[IN_PROCESS]
    cases: list[Case] = []
    for size in sizes:
        frame = np.random.default_rng(size.side).gamma(2.0, 100.0, size.shape).astype(np.float32)

        def output(system: str, frame: np.ndarray = frame) -> np.ndarray:
            sample = predict(model=pipelines[system], inputs=frame)
            return np.asarray(next(iter(sample.members.values())).data)

        def check(system: str, frame: np.ndarray = frame) -> None:
            np.testing.assert_allclose(
                output(system, frame), output(IN_PROCESS, frame), rtol=1e-5, atol=1e-5
            )

        def run_warm(n: int, frame: np.ndarray = frame) -> float:
            from bioimageio.core.digest_spec import create_sample_for_model

            warm.load()
            try:
                start = time.perf_counter()
                for _ in range(n):
                    sample = create_sample_for_model(descr, inputs=frame, sample_id="sample")
                    warm.predict_sample_without_blocking(sample)
                return time.perf_counter() - start
            finally:
                warm.unload()

        cases.append(
            Case(
                IN_PROCESS_WARM,
                LOCKSTEP,
                CORE_PREDICT,
                size.label,
                size.nbytes,
                call="what predict() does, on a pipeline loaded once",
                run=run_warm,
                min_frames=ctx.settings.unet2d_min_frames,
                max_frames=ctx.settings.unet2d_max_frames,
            )
        )
        for system in pipelines:

            def run(n: int, system: str = system, frame: np.ndarray = frame) -> float:
                start = time.perf_counter()
                for _ in range(n):
                    predict(model=pipelines[system], inputs=frame)
                return time.perf_counter() - start

            cases.append(
                Case(
                    system,
                    LOCKSTEP,
                    CORE_PREDICT,
                    size.label,
                    size.nbytes,
                    call="bioimageio.core.predict(model=pipeline, inputs=frame)",
                    run=run,
                    check=None if system == IN_PROCESS else (lambda s=system: check(s)),
                    min_frames=ctx.settings.unet2d_min_frames,
                    max_frames=ctx.settings.unet2d_max_frames,
                )
            )
    return cases
