"""Sample statistics in bounded memory: the same values, dims and dtypes as bioimageio.core's."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from bioimageio.core import Sample, Tensor
from bioimageio.core.stat_calculators import MeanVarStdCalculator
from bioimageio.core.stat_measures import SampleMean, SampleStd, SampleVar
from bioimageio.spec.model import v0_5

from modelrunner.runtime_flight.lean_stats import lean_measures, lean_sample_stats, mean_var_std
from modelrunner.runtime_flight.pipelines import create_pipeline
from tests.reference import Pipelines, descr
from tests.tiny_models import _build_conv
from tests.zoo import NUCLEI, needs_zoo

BCYX = ("batch", "channel", "y", "x")
AXES_CASES: list[tuple[str, ...] | None] = [
    None,
    ("x", "y"),
    ("channel", "y", "x"),
    ("channel",),
    ("x",),
]


def _core(tensor: Tensor, axes: tuple[str, ...] | None) -> dict[str, Tensor]:
    ids = None if axes is None else tuple(v0_5.AxisId(a) for a in axes)
    calc = MeanVarStdCalculator(member_id=v0_5.TensorId("raw"), axes=ids)
    values = calc.compute(Sample(members={v0_5.TensorId("raw"): tensor}, stat={}, id=None))
    return {m.name: v for m, v in values.items()}  # type: ignore[misc]


@pytest.mark.parametrize("dtype", ["float32", "float64", "uint16", "uint8", "int32"])
@pytest.mark.parametrize("axes", AXES_CASES, ids=str)
@pytest.mark.parametrize("chunk_bytes", [8 * 1024**2, 4096, 1])
def test_values_dims_and_dtypes_match_bioimageio_core(
    dtype: str, axes: tuple[str, ...] | None, chunk_bytes: int
) -> None:
    rng = np.random.default_rng(0)
    array = (rng.random((2, 3, 67, 45)) * 200 + 20).astype(dtype)
    tensor = Tensor(array, dims=BCYX)
    ids = None if axes is None else tuple(v0_5.AxisId(a) for a in axes)
    got = mean_var_std(tensor, ids, chunk_bytes=chunk_bytes)
    assert got is not None
    expected = _core(tensor, axes)
    for name in ("mean", "var", "std"):
        g, e = got[name], expected[name]
        assert g.dims == e.dims, name
        assert g.data.dtype == e.data.dtype, name
        np.testing.assert_allclose(g.data.values, e.data.values, rtol=1e-6, err_msg=name)


def test_a_large_integer_image_needs_no_full_size_temporary() -> None:
    """bioimageio.core takes a float64 copy (4x a uint16 image); chunks take at most 4 MiB."""
    image = np.random.default_rng(1).integers(0, 60000, (1, 1, 4096, 4096), dtype=np.uint16)
    tensor = Tensor(image, dims=BCYX)
    tracemalloc.start()
    try:
        got = mean_var_std(tensor, (v0_5.AxisId("x"), v0_5.AxisId("y")))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got is not None
    assert peak < 2 * 4 * 1024**2 + 1024**2, peak
    assert peak < image.nbytes / 2
    np.testing.assert_allclose(got["mean"].data.values, image.mean(dtype=np.float64), rtol=1e-12)
    np.testing.assert_allclose(got["std"].data.values, image.std(dtype=np.float64), rtol=1e-9)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_are_left_to_bioimageio_core(bad: float) -> None:
    image = np.ones((1, 1, 8, 8), "float32")
    image[0, 0, 3, 4] = bad
    assert mean_var_std(Tensor(image, dims=BCYX), None) is None


def test_unknown_axes_are_left_to_bioimageio_core() -> None:
    tensor = Tensor(np.ones((1, 1, 8, 8), "float32"), dims=BCYX)
    assert mean_var_std(tensor, (v0_5.AxisId("z"),)) is None


@needs_zoo
@pytest.mark.parametrize("dtype", ["float32", "uint16"])
def test_the_nuclei_models_statistics_equal_its_update_stats(
    pipelines: Pipelines, dtype: str
) -> None:
    """zero_mean_unit_variance over x, y: the statistics bioimageio.core's own UpdateStats puts
    into the sample, keyed by the same measures."""
    pipeline = pipelines.get(NUCLEI, "onnx")
    model = descr(NUCLEI)
    image = (np.random.default_rng(2).random((1, 1, 700, 600)) * 5000).astype(dtype)

    def sample() -> Sample:
        return Sample(members={v0_5.TensorId("raw"): Tensor(image, dims=BCYX)}, stat={}, id=None)

    reference = sample()
    pipeline._apply_samplewise_preprocessing(reference)
    lean = lean_sample_stats(pipeline, model, sample(), chunk_bytes=64 * 1024)
    assert lean is not None
    axes = (v0_5.AxisId("x"), v0_5.AxisId("y"))
    raw = v0_5.TensorId("raw")
    assert set(lean) == {SampleMean(member_id=raw, axes=axes), SampleStd(member_id=raw, axes=axes)}
    for measure, value in lean.items():
        expected = reference.stat[measure]
        assert isinstance(value, Tensor) and isinstance(expected, Tensor)
        assert value.dims == expected.dims
        assert value.data.dtype == expected.data.dtype
        np.testing.assert_allclose(value.data.values, expected.data.values, rtol=1e-6)
    assert SampleVar(member_id=raw, axes=axes) not in lean  # nothing asks for it


def test_a_model_without_sample_statistics_needs_none(
    pipelines: Pipelines, tiny: Callable[[str], Path]
) -> None:
    package = tiny("parameterized")
    sample = Sample(
        members={v0_5.TensorId("raw"): Tensor(np.ones((1, 1, 32, 32), "float32"), dims=BCYX)},
        stat={},
        id=None,
    )
    pipeline = pipelines.get(package, "pytorch_state_dict")
    assert lean_sample_stats(pipeline, descr(package), sample) == {}


def test_quantiles_are_left_to_bioimageio_core(tmp_path: Path) -> None:
    package = _build_conv(
        tmp_path / "scale-range",
        name="tiny-scale-range",
        weights_format="pytorch_state_dict",
        size=(32, 16),
        preprocessing=[
            v0_5.ScaleRangeDescr(
                kwargs=v0_5.ScaleRangeKwargs(
                    axes=[v0_5.AxisId("y"), v0_5.AxisId("x")],
                    min_percentile=1.0,
                    max_percentile=99.0,
                )
            )
        ],
    )
    model = descr(package)
    pipeline = create_pipeline(model, "pytorch_state_dict", "cpu")
    try:
        sample = Sample(
            members={v0_5.TensorId("raw"): Tensor(np.ones((1, 1, 48, 48), "float32"), dims=BCYX)},
            stat={},
            id=None,
        )
        assert lean_measures(pipeline, model, sample) is None
        assert lean_sample_stats(pipeline, model, sample) is None
    finally:
        pipeline.unload()
