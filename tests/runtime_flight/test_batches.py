"""Several samples at once: stacked along the batch axis when that changes nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bioimageio.core import PredictionPipeline
from bioimageio.spec.model import v0_5

from modelrunner.errors import CancelledError, InvalidTensorError
from modelrunner.runtime_flight.batching import stackable
from tests.reference import Pipelines, descr
from tests.runtime_flight.predicting import predict, predict_batch
from tests.zoo import NUCLEI, needs_zoo

Tiny = Callable[[str], Path]


@pytest.fixture
def forward_batches(monkeypatch: pytest.MonkeyPatch) -> Callable[[PredictionPipeline], list[int]]:
    """Record the batch size of every network call of a pipeline."""

    def spy(pipeline: PredictionPipeline) -> list[int]:
        sizes: list[int] = []
        adapter: Any = pipeline._adapter
        original = adapter.forward

        def forward(inputs: Any) -> Any:
            first = next(iter(inputs.values()))
            sizes.append(int(first.sizes["batch"]))
            return original(inputs)

        monkeypatch.setattr(adapter, "forward", forward)
        return sizes

    return spy


def frames(n: int, shape: tuple[int, ...] = (24, 24), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random(shape, "float32") for _ in range(n)]


@pytest.fixture
def halo_pipeline(tiny: Tiny, pipelines: Pipelines) -> Iterator[PredictionPipeline]:
    yield pipelines.get(tiny("halo"), "pytorch_state_dict")


def test_frames_are_stacked_and_give_what_one_by_one_gives(
    halo_pipeline: PredictionPipeline, forward_batches: Callable[..., list[int]]
) -> None:
    images = frames(5, (48, 48))
    one_by_one = [predict(halo_pipeline, image) for image in images]
    sizes = forward_batches(halo_pipeline)
    stacked = predict_batch(halo_pipeline, images)
    assert sizes == [5]
    assert len(stacked) == 5
    for got, expected in zip(stacked, one_by_one, strict=True):
        assert got["out"].shape == (1, 1, 48, 48)
        assert got["out"].flags.c_contiguous
        np.testing.assert_allclose(got["out"], expected["out"], rtol=1e-5, atol=1e-5)


def test_max_batch_size_bounds_the_stacks(
    halo_pipeline: PredictionPipeline, forward_batches: Callable[..., list[int]]
) -> None:
    sizes = forward_batches(halo_pipeline)
    predict_batch(halo_pipeline, frames(5, (48, 48)), max_batch_size=2)
    assert sizes == [2, 2, 1]


def test_only_consecutive_frames_of_one_shape_are_stacked(
    halo_pipeline: PredictionPipeline, forward_batches: Callable[..., list[int]]
) -> None:
    a, b = frames(3, (48, 48)), frames(1, (64, 48), seed=1)
    sizes = forward_batches(halo_pipeline)
    results = predict_batch(halo_pipeline, [a[0], a[1], b[0], a[2]])
    assert sizes == [2, 1, 1]
    assert [r["out"].shape[2:] for r in results] == [(48, 48), (48, 48), (64, 48), (48, 48)]


def test_frames_off_the_size_grid_are_stacked_padded_and_cropped(
    tiny: Tiny, pipelines: Pipelines
) -> None:
    pipeline = pipelines.get(tiny("parameterized"), "pytorch_state_dict")
    images = frames(3, (25, 30))
    for got, image in zip(predict_batch(pipeline, images), images, strict=True):
        np.testing.assert_allclose(got["out"], predict(pipeline, image)["out"], rtol=1e-6)


@needs_zoo
def test_a_model_with_a_batch_of_one_runs_frames_one_by_one(
    pipelines: Pipelines, forward_batches: Callable[..., list[int]]
) -> None:
    pipeline = pipelines.get(NUCLEI, "onnx")
    assert not stackable(descr(NUCLEI))
    test = np.load(NUCLEI / "test_input.npy")[0, 0]
    images = [test, test[::-1].copy(), test[:, ::-1].copy()]
    sizes = forward_batches(pipeline)
    results = predict_batch(pipeline, images)
    assert sizes == [1, 1, 1]
    np.testing.assert_array_equal(
        results[1]["probability"], predict(pipeline, images[1])["probability"]
    )


def test_statistics_across_the_batch_prevent_stacking(tmp_path: Path) -> None:
    from tests.tiny_models import _build_conv

    package = _build_conv(
        tmp_path / "batch-statistics",
        name="tiny-batch-statistics",
        weights_format="pytorch_state_dict",
        size=(16, 8),
        preprocessing=[v0_5.ZeroMeanUnitVarianceDescr(kwargs=v0_5.ZeroMeanUnitVarianceKwargs())],
    )
    assert not stackable(descr(package))


def test_stackable_models(tiny: Tiny) -> None:
    assert stackable(descr(tiny("halo")))  # statistics over channel, y, x: per sample
    assert stackable(descr(tiny("two_inputs")))
    assert stackable(descr(tiny("onnx")))


def test_a_bad_frame_fails_alone_when_errors_are_returned(
    halo_pipeline: PredictionPipeline,
) -> None:
    images = frames(3, (48, 48))
    images[1] = images[1].copy()
    images[1][0, 0] = np.nan
    results = predict_batch(halo_pipeline, images, return_errors=True)
    assert isinstance(results[1], InvalidTensorError)
    assert str(results[1]).startswith("input 'raw' contains 1 NaN value(s)")
    for i in (0, 2):
        result = results[i]
        assert isinstance(result, dict)
        np.testing.assert_allclose(
            result["out"], predict(halo_pipeline, images[i])["out"], rtol=1e-5, atol=1e-5
        )
    with pytest.raises(InvalidTensorError):
        predict_batch(halo_pipeline, images)


def test_two_input_frames_are_stacked_per_input(tiny: Tiny, pipelines: Pipelines) -> None:
    pipeline = pipelines.get(tiny("two_inputs"), "pytorch_state_dict")
    samples = [{"a": a, "b": b} for a, b in zip(frames(3), frames(3, seed=1), strict=True)]
    for got, sample in zip(predict_batch(pipeline, samples), samples, strict=True):
        expected = predict(pipeline, sample)
        for name in ("first", "second"):
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-6)


def test_a_batch_stops_when_cancelled(halo_pipeline: PredictionPipeline) -> None:
    with pytest.raises(CancelledError):
        predict_batch(halo_pipeline, frames(2, (48, 48)), cancelled=lambda: True)
    images = frames(3, (48, 48))
    images[1] = frames(1, (64, 48))[0]
    calls: list[int] = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(CancelledError):
        predict_batch(halo_pipeline, images, return_errors=True, cancelled=cancelled)
