"""Every bioimage.io 0.5 processing step on the fast path gives bioimageio.core's results.

Each case is a tiny model whose network is an identity, so its outputs are its processing; the
fast path (torch operations) and bioimageio.core's pipeline (xarray/numpy) see the same random
inputs, of the test size and of other sizes.

Left out, because bioimageio.core 0.11 itself fails on them, so there is no reference to match:
``binarize`` along an axis (it compares the tensor with the list of thresholds and fails to
broadcast) and statistics of outputs, hence every ``scale_mean_variance`` (a postprocessing
step: bioimageio.core computes every statistic before preprocessing, when no output exists yet,
and fails with a KeyError).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from bioimageio.spec.model import v0_5

from modelrunner.runtime_flight.device_processing import quantile
from tests.reference import Pipelines
from tests.runtime_flight.predicting import predict, warm_pipeline
from tests.tiny_models import build_processing_model


@pytest.fixture(scope="module")
def pipelines() -> Pipelines:
    """Pipelines of this module's own: a checked fast path changes how a pipeline predicts,
    and other tests compare the shared ones with bioimageio.core bit for bit."""
    return Pipelines()


YX = [v0_5.AxisId("y"), v0_5.AxisId("x")]
CYX = [v0_5.AxisId("channel"), *YX]
F32 = v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32"))
CHANNEL = v0_5.AxisId("channel")

CASES: dict[str, tuple[list[Any], list[Any]]] = {
    "zero_mean_unit_variance per channel": (
        [F32, v0_5.ZeroMeanUnitVarianceDescr(kwargs=v0_5.ZeroMeanUnitVarianceKwargs(axes=YX))],
        [],
    ),
    "zero_mean_unit_variance per sample": (
        [v0_5.ZeroMeanUnitVarianceDescr(kwargs=v0_5.ZeroMeanUnitVarianceKwargs(axes=CYX)), F32],
        [],
    ),
    "scale_range percentiles": (
        [
            F32,
            v0_5.ScaleRangeDescr(
                kwargs=v0_5.ScaleRangeKwargs(axes=YX, min_percentile=1.0, max_percentile=99.5)
            ),
        ],
        [],
    ),
    "clip constants": ([F32, v0_5.ClipDescr(kwargs=v0_5.ClipKwargs(min=-0.5, max=0.7))], []),
    "clip percentiles": (
        [
            F32,
            v0_5.ClipDescr(
                kwargs=v0_5.ClipKwargs(axes=YX, min_percentile=5.0, max_percentile=90.0)
            ),
        ],
        [],
    ),
    "scale_linear": (
        [F32, v0_5.ScaleLinearDescr(kwargs=v0_5.ScaleLinearKwargs(gain=2.5, offset=-1.0))],
        [],
    ),
    "scale_linear along channel": (
        [
            F32,
            v0_5.ScaleLinearDescr(
                kwargs=v0_5.ScaleLinearAlongAxisKwargs(
                    axis=CHANNEL, gain=[2.0, -3.0], offset=[0.5, 1.0]
                )
            ),
        ],
        [],
    ),
    "fixed_zero_mean_unit_variance": (
        [
            F32,
            v0_5.FixedZeroMeanUnitVarianceDescr(
                kwargs=v0_5.FixedZeroMeanUnitVarianceKwargs(mean=0.3, std=2.0)
            ),
        ],
        [],
    ),
    "fixed_zero_mean_unit_variance along channel": (
        [
            F32,
            v0_5.FixedZeroMeanUnitVarianceDescr(
                kwargs=v0_5.FixedZeroMeanUnitVarianceAlongAxisKwargs(
                    axis=CHANNEL, mean=[0.1, -0.2], std=[1.5, 0.5]
                )
            ),
        ],
        [],
    ),
    "sigmoid": ([F32], [v0_5.SigmoidDescr(), F32]),
    "softmax over channels": (
        [F32],
        [v0_5.SoftmaxDescr(kwargs=v0_5.SoftmaxKwargs(axis=CHANNEL)), F32],
    ),
    "binarize": ([F32], [v0_5.BinarizeDescr(kwargs=v0_5.BinarizeKwargs(threshold=0.2)), F32]),
    "a chain of steps": (
        [
            F32,
            v0_5.ScaleRangeDescr(
                kwargs=v0_5.ScaleRangeKwargs(axes=YX, min_percentile=2.0, max_percentile=98.0)
            ),
            v0_5.ClipDescr(kwargs=v0_5.ClipKwargs(min=0.0, max=1.0)),
            v0_5.ZeroMeanUnitVarianceDescr(kwargs=v0_5.ZeroMeanUnitVarianceKwargs(axes=CYX)),
        ],
        [v0_5.SigmoidDescr(), F32],
    ),
}


@pytest.fixture(scope="module")
def processing_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("processing")
    built: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in built:
            pre, post = CASES[case]
            built[case] = build_processing_model(
                root / case.replace(" ", "_"), preprocessing=pre, postprocessing=post
            )
        return built[case]

    return get  # type: ignore[return-value]


def _inputs(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "uint8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return (rng.standard_normal(shape) * 3 + 1).astype(dtype)


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_path_matches_bioimageio_core(
    case: str, processing_models: Any, pipelines: Pipelines
) -> None:
    pipeline = pipelines.get(processing_models(case), "onnx")
    warmed = warm_pipeline(pipeline, "onnx", "cpu")
    serving = warmed.serving
    assert serving.name == "fast", serving.reason
    assert serving.max_abs_error is not None and serving.max_abs_error < 1e-4
    for seed, (shape, dtype) in enumerate(
        [((1, 2, 24, 24), "float32"), ((1, 2, 40, 64), "float32"), ((1, 2, 16, 32), "uint8")]
    ):
        x = _inputs(shape, dtype, seed)
        fast = predict(warmed, x)
        reference = predict(warmed, x, reference_path=True)
        assert fast.path == "fast" and reference.path == "reference"
        assert fast.keys() == reference.keys()
        for k in fast:
            assert fast[k].dtype == reference[k].dtype, k
            assert fast[k].shape == reference[k].shape, k
            np.testing.assert_allclose(fast[k], reference[k], rtol=1e-5, atol=1e-5)


def test_nan_inputs_allowed_give_what_bioimageio_core_gives(
    processing_models: Any, pipelines: Pipelines
) -> None:
    """Attacks the statistics with NaN values the caller allowed: means skip them, variances
    and percentiles follow bioimageio.core."""
    for case in ("zero_mean_unit_variance per channel", "scale_range percentiles"):
        pipeline = pipelines.get(processing_models(case), "onnx")
        warmed = warm_pipeline(pipeline, "onnx", "cpu")
        assert warmed.serving.name == "fast"
        x = _inputs((1, 2, 24, 24), "float32", 7)
        x[0, 0, 3, 4] = np.nan
        fast = predict(warmed, x, nan_policy="allow")
        reference = predict(warmed, x, nan_policy="allow", reference_path=True)
        assert fast.path == "fast"
        np.testing.assert_allclose(
            fast["output"], reference["output"], rtol=1e-5, atol=1e-5, equal_nan=True
        )


def test_dataset_statistics_are_served_by_bioimageio_core(
    tmp_path: Path, pipelines: Pipelines
) -> None:
    """Statistics without axes are dataset statistics, which bioimageio.core accumulates over
    every sample a pipeline sees: the fast path steps aside and says why."""
    package = build_processing_model(
        tmp_path / "dataset",
        preprocessing=[
            F32,
            v0_5.ZeroMeanUnitVarianceDescr(kwargs=v0_5.ZeroMeanUnitVarianceKwargs(axes=None)),
        ],
    )
    pipeline = pipelines.get(package, "onnx")
    warmed = warm_pipeline(pipeline, "onnx", "cpu")
    serving = warmed.serving
    assert serving.name == "reference"
    assert "dataset statistics" in serving.reason
    x = _inputs((1, 2, 24, 24), "float32", 0)
    assert predict(warmed, x).path == "reference"


def test_switched_off_fast_path_serves_nothing(
    processing_models: Any, pipelines: Pipelines
) -> None:
    pipeline = pipelines.get(processing_models("sigmoid"), "onnx")
    warmed = warm_pipeline(pipeline, "onnx", "cpu", fast_path=False)
    serving = warmed.serving
    assert serving.name == "reference" and "switched off" in serving.reason
    assert predict(warmed, _inputs((1, 2, 8, 8), "float32", 0)).path == "reference"


@pytest.mark.parametrize("method", ["linear", "inverted_cdf"])
@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000])
def test_quantiles_are_numpys(method: Any, n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.standard_normal((2, 3, n)).astype(np.float32)
    for q in (0.0, 0.01, 0.25, 0.5, 0.998, 1.0):
        expected = np.quantile(x, q, axis=2, method=method, keepdims=True)
        ours = quantile(torch.from_numpy(x), q, (2,), method).numpy()
        np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)
    expected = np.quantile(x, 0.3, axis=(0, 2), method=method, keepdims=True)
    ours = quantile(torch.from_numpy(x), 0.3, (0, 2), method).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "data",
    ["normal", "sorted", "ties", "constant", "outliers"],
)
def test_quantiles_of_long_rows_are_numpys(data: str) -> None:
    """Attacks the band selection of long rows (a sample bounds the wanted order statistics):
    sorted data, many ties, a constant image and extreme outliers still give numpy's values."""
    rng = np.random.default_rng(1)
    n = 300_000  # past the length where rows are selected within a band
    x = {
        "normal": rng.standard_normal(n),
        "sorted": np.sort(rng.standard_normal(n)),
        "ties": rng.integers(0, 5, n).astype(np.float64),
        "constant": np.full(n, 3.0),
        "outliers": np.concatenate([rng.standard_normal(n - 100), np.full(100, 1e30)]),
    }[data].astype(np.float32)
    rows = np.stack([x, x[::-1].copy()])
    methods: tuple[Any, ...] = ("linear", "inverted_cdf")
    for method in methods:
        for q in (0.0, 0.01, 0.5, 0.9999):
            expected = np.quantile(rows, q, axis=1, method=method, keepdims=True)
            ours = quantile(torch.from_numpy(rows), q, (1,), method).numpy()
            np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=0, err_msg=f"{method} {q}")
