"""A real model: ``unet2d_nuclei_broad`` (ONNX) through modelrunner against bioimageio.core in
this process, on the package's own test input (1, 1, 512, 512).

Both sides go from a numpy array to a numpy array: in process, a warm prediction pipeline
(``create_prediction_pipeline(..., weights_format="onnx")``, loaded once) and
``create_sample_for_model`` + ``predict_sample_without_blocking`` per call; remotely,
``client.predict`` of the same array on the same model and weights.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Final, cast

import numpy as np

from ..context import BenchContext
from ..modelrunner_server import REPO_ROOT
from ..rounds import IN_PROCESS, LOCKSTEP, MODELRUNNER, UNET2D, Case

ZOO_MODEL = REPO_ROOT.parent / "shared" / "zoo" / "unet2d_nuclei_broad"
WEIGHTS: Final = "onnx"


def find_model() -> Path:
    """The package in ``../shared/zoo`` (relative to the repository)."""
    path = ZOO_MODEL / "bioimageio.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (the shared zoo sits beside the repository)")
    return path


class InProcess:
    """A warm bioimageio.core pipeline in this process."""

    def __init__(self, rdf: Path) -> None:
        from bioimageio.core import create_prediction_pipeline
        from bioimageio.spec import load_model_description

        self.descr = cast(Any, load_model_description(rdf, perform_io_checks=False))
        self.pipeline: Any = create_prediction_pipeline(self.descr, weights_format=WEIGHTS)
        self.pipeline.load()
        self.input_id = str(self.descr.inputs[0].id)
        self.output_id = str(self.descr.outputs[0].id)

    def predict(self, array: np.ndarray) -> np.ndarray:
        from bioimageio.core.digest_spec import create_sample_for_model

        sample = create_sample_for_model(self.descr, inputs={self.input_id: array})
        out = self.pipeline.predict_sample_without_blocking(
            sample, skip_input_padding=True, skip_output_cropping=True
        )
        return np.asarray(out.members[self.output_id].data)

    def close(self) -> None:
        self.pipeline.unload()


def _test_data() -> tuple[np.ndarray, np.ndarray, str]:
    array = np.load(ZOO_MODEL / "test_input.npy")
    expected = np.load(ZOO_MODEL / "test_output.npy")
    return array, expected, "x".join(str(s) for s in array.shape[-2:])


def in_process_case(ctx: BenchContext) -> Case:
    rdf = find_model()
    array, expected, size = _test_data()
    local = InProcess(rdf)
    ctx.stack.callback(local.close)

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            local.predict(array)
        return time.perf_counter() - start

    def check() -> None:
        np.testing.assert_allclose(local.predict(array), expected, rtol=1e-4, atol=1e-4)

    return Case(
        IN_PROCESS,
        LOCKSTEP,
        UNET2D,
        size,
        array.nbytes,
        call="pipeline.predict_sample_without_blocking (warm)",
        run=run,
        check=check,
        min_frames=ctx.settings.unet2d_min_frames,
        max_frames=ctx.settings.unet2d_max_frames,
    )


def remote_case(ctx: BenchContext) -> Case:
    rdf = find_model()
    array, expected, size = _test_data()
    runner = ctx.modelrunner()
    model_id = runner.add_and_load(rdf, WEIGHTS)
    client = runner.client

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            client.predict(model_id, array, weight_format=WEIGHTS)
        return time.perf_counter() - start

    def check() -> None:
        (out,) = client.predict(model_id, array, weight_format=WEIGHTS).values()
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)

    return Case(
        MODELRUNNER,
        LOCKSTEP,
        UNET2D,
        size,
        array.nbytes,
        call="client.predict",
        run=run,
        check=check,
        min_frames=ctx.settings.unet2d_min_frames,
        max_frames=ctx.settings.unet2d_max_frames,
    )
