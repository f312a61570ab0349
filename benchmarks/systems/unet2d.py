"""A real model: ``unet2d_nuclei_broad`` through modelrunner against bioimageio.core in this
process, on the package's own test input (1, 1, 512, 512); ONNX weights on a CPU, TorchScript on
a GPU (ONNX Runtime there has no CUDA provider).

Both sides go from a numpy array to a numpy array: in process, a warm prediction pipeline
(``create_prediction_pipeline(..., weights_format=...)``, loaded once) and
``create_sample_for_model`` + ``predict_sample_without_blocking`` per call; remotely,
``client.predict`` of the same array on the same model and weights, lockstep, and
``client.predict_stream`` of it; and (``--device cuda``) ``client.predict`` of a 2048x2048 image,
which the runtime tiles (the model takes 512x512 only).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Final, cast

import numpy as np

from ..context import BenchContext
from ..modelrunner_server import REPO_ROOT
from ..rounds import IN_PROCESS, LOCKSTEP, MODELRUNNER, STREAM, UNET2D, Case
from .modelrunner import predict_stream

ZOO_MODEL = REPO_ROOT.parent / "shared" / "zoo" / "unet2d_nuclei_broad"
WEIGHTS: Final = "onnx"
TILED_SIDE: Final = 2048


def weights_for(device: str) -> str:
    return "torchscript" if device.startswith("cuda") else WEIGHTS


class ZooMissing(FileNotFoundError):
    """No ``../shared/zoo`` beside the repository (a fresh clone): the system is skipped."""


def find_model() -> Path:
    """The package in ``../shared/zoo`` (relative to the repository)."""
    path = ZOO_MODEL / "bioimageio.yaml"
    if not path.exists():
        raise ZooMissing(f"{path} not found (the shared zoo sits beside the repository)")
    return path


class InProcess:
    """A warm bioimageio.core pipeline in this process."""

    def __init__(self, rdf: Path, weights_format: str = WEIGHTS, device: str = "cpu") -> None:
        from bioimageio.core import create_prediction_pipeline
        from bioimageio.spec import load_model_description

        self.descr = cast(Any, load_model_description(rdf, perform_io_checks=False))
        self.pipeline: Any = create_prediction_pipeline(
            self.descr,
            weights_format=weights_format,  # type: ignore[arg-type]
            devices=None if weights_format == "onnx" else [device],
        )
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


def nuclei_test_data() -> tuple[np.ndarray, np.ndarray, str]:
    array = np.load(ZOO_MODEL / "test_input.npy")
    expected = np.load(ZOO_MODEL / "test_output.npy")
    return array, expected, "x".join(str(s) for s in array.shape[-2:])


def in_process_case(ctx: BenchContext) -> Case:
    rdf = find_model()
    array, expected, size = nuclei_test_data()
    local = InProcess(rdf, weights_for(ctx.settings.device), ctx.settings.device)
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


def remote_cases(ctx: BenchContext) -> list[Case]:
    rdf = find_model()
    array, expected, size = nuclei_test_data()
    weights = weights_for(ctx.settings.device)
    runner = ctx.modelrunner()
    model_id = runner.add_and_load(rdf, weights)
    client = runner.client
    low, high = ctx.settings.unet2d_min_frames, ctx.settings.unet2d_max_frames

    def lockstep(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            client.predict(model_id, array, weight_format=weights)
        return time.perf_counter() - start

    def stream(n: int) -> float:
        return predict_stream(
            client, model_id, array, n, ctx.settings.max_in_flight, weight_format=weights
        )

    def check() -> None:
        (out,) = client.predict(model_id, array, weight_format=weights).values()
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)

    cases = [
        Case(
            MODELRUNNER,
            LOCKSTEP,
            UNET2D,
            size,
            array.nbytes,
            call="client.predict",
            run=lockstep,
            check=check,
            min_frames=low,
            max_frames=high,
        ),
        Case(
            MODELRUNNER,
            STREAM,
            UNET2D,
            size,
            array.nbytes,
            call="client.predict_stream",
            run=stream,
            min_frames=max(low, 2),
            max_frames=high,
        ),
    ]
    if ctx.settings.device.startswith("cuda"):
        big = np.ascontiguousarray(np.tile(array, (1, 1, TILED_SIDE // 512, TILED_SIDE // 512)))

        def tiled(n: int) -> float:
            start = time.perf_counter()
            for _ in range(n):
                client.predict(model_id, big, weight_format=weights)
            return time.perf_counter() - start

        cases.append(
            Case(
                MODELRUNNER,
                LOCKSTEP,
                UNET2D,
                f"{TILED_SIDE}x{TILED_SIDE} tiled",
                big.nbytes,
                call="client.predict (tiled by the runtime)",
                run=tiled,
                min_frames=low,
                max_frames=high,
            )
        )
    return cases
