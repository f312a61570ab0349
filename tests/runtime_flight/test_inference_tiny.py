"""Inference with the tiny models of every weight format: same results as bioimageio.core, any
image size, tiling with a halo, options."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from bioimageio.core import Sample, Tensor
from bioimageio.core.digest_spec import get_test_output_sample

from modelrunner.errors import CancelledError, InvalidTensorError
from modelrunner.runtime_flight.weight_formats import model_formats
from tests.reference import Pipelines, core_prediction, descr, sample_inputs
from tests.runtime_flight.predicting import predict

Tiny = Callable[[str], Path]
BCYX = ("batch", "channel", "y", "x")

TORCH_AND_ONNX = ["pytorch_state_dict", "torchscript", "onnx", "halo", "parameterized"]
TORCH_AND_ONNX += ["two_inputs", "fixed_output"]
TENSORFLOW = ["tensorflow_saved_model_bundle", "keras_v3", "keras_hdf5"]


def check_same_as_core(package: Path, pipelines: Pipelines) -> None:
    model = descr(package)
    pipeline = pipelines.get(package, model_formats(model)[0])
    inputs = sample_inputs(package)
    ours = predict(pipeline, inputs)
    expected = core_prediction(package, inputs)
    assert ours.keys() == expected.keys()
    for name, array in expected.items():
        assert ours[name].dtype == array.dtype
        assert ours[name].flags.c_contiguous
        np.testing.assert_array_equal(ours[name], array)
    for m, t in get_test_output_sample(model).members.items():
        np.testing.assert_allclose(ours[str(m)], t.data.to_numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", TORCH_AND_ONNX)
def test_same_as_bioimageio_core(name: str, tiny: Tiny, pipelines: Pipelines) -> None:
    check_same_as_core(tiny(name), pipelines)


@pytest.mark.parametrize("name", TENSORFLOW)
def test_same_as_bioimageio_core_with_tensorflow(
    name: str, tiny: Tiny, pipelines: Pipelines, in_tmp_dir: Path
) -> None:
    check_same_as_core(tiny(name), pipelines)


def test_cellpose_labels_as_bioimageio_core(tiny: Tiny, pipelines: Pipelines) -> None:
    pytest.importorskip("cellpose")
    package = tiny("cellpose")
    check_same_as_core(package, pipelines)
    labels = predict(pipelines.get(package, "pytorch_state_dict"), sample_inputs(package))["labels"]
    assert labels.dtype == np.uint16
    assert set(np.unique(labels)) == {0, 1, 2, 3}


def test_cellpose_on_an_image_off_the_size_grid(tiny: Tiny, pipelines: Pipelines) -> None:
    pytest.importorskip("cellpose")
    package = tiny("cellpose")
    image = sample_inputs(package)["raw"][0, 0, :40, :45]
    labels = predict(pipelines.get(package, "pytorch_state_dict"), image)["labels"]
    assert labels.shape == (1, 1, 40, 45)
    assert labels.dtype == np.uint16
    assert labels.max() >= 2


@pytest.mark.parametrize("size", [(7, 9), (20, 20), (25, 31), (33, 56), (100, 20)])
def test_parameterized_sizes_are_padded_and_cropped(
    size: tuple[int, int], tiny: Tiny, pipelines: Pipelines
) -> None:
    package = tiny("parameterized")  # 20 + n*12
    pipeline = pipelines.get(package, "pytorch_state_dict")
    image = np.random.default_rng(0).random(size, "float32")
    out = predict(pipeline, image)["out"]
    assert out.shape == (1, 1, *size)
    valid = [max(20, 20 + -(-(s - 20) // 12) * 12) for s in size]
    padded = np.pad(image, [(0, v - s) for v, s in zip(valid, size, strict=True)], "symmetric")
    expected = core_prediction(package, {"raw": padded[None, None]})["out"]
    np.testing.assert_array_equal(out, expected[..., : size[0], : size[1]])


def test_the_halo_model_tiles_like_bioimageio_core(tiny: Tiny, pipelines: Pipelines) -> None:
    package = tiny("halo")  # 32 + n*16, halo 4, zero-mean-unit-variance, reflect padding
    pipeline = pipelines.get(package, "pytorch_state_dict")
    image = np.random.default_rng(3).random((100, 90), "float32")
    progress: list[tuple[int, int]] = []
    out = predict(
        pipeline,
        image,
        blocksize=1,
        progress=lambda done, total: progress.append((done, total)),
    )["out"]
    assert out.shape == (1, 1, 100, 90)
    assert progress[-1] == (len(progress), len(progress))
    assert len(progress) == 3 * 3  # blocks of 48 with 40 inside: 3 along 100 and along 90
    sample = Sample(members={"raw": Tensor(image[None, None], dims=BCYX)}, stat={}, id=None)
    expected = pipeline.predict_sample_with_blocking(sample, ns=1)
    np.testing.assert_array_equal(out, expected.members["out"].data.to_numpy())


def test_blocks_are_capped_at_the_image(tiny: Tiny, pipelines: Pipelines) -> None:
    """bioimageio.core refuses images smaller than a block; blocks are made to fit instead."""
    package = tiny("halo")
    pipeline = pipelines.get(package, "pytorch_state_dict")
    image = np.random.default_rng(4).random((40, 200), "float32")
    out = predict(pipeline, image, blocksize=20)["out"]
    assert out.shape == (1, 1, 40, 200)
    whole = predict(pipeline, image)["out"]
    inner = np.s_[..., 4:-4, 4:-4]
    np.testing.assert_allclose(out[inner], whole[inner], rtol=1e-5, atol=1e-5)


def test_a_fixed_output_that_mirrors_the_input_follows_it(tiny: Tiny, pipelines: Pipelines) -> None:
    package = tiny("fixed_output")  # 32x32 in, 32x32 out
    pipeline = pipelines.get(package, "pytorch_state_dict")
    image = np.random.default_rng(5).random((64, 80), "float32")
    out = predict(pipeline, image)["out"]
    assert out.shape == (1, 1, 64, 80)
    small = predict(pipeline, image[:20, :25])["out"]
    assert small.shape == (1, 1, 20, 25)


def test_the_second_input_follows_the_first(tiny: Tiny, pipelines: Pipelines) -> None:
    package = tiny("two_inputs")  # a: 16 + n*8, b: like a
    pipeline = pipelines.get(package, "pytorch_state_dict")
    rng = np.random.default_rng(6)
    a, b = rng.random((30, 30), "float32"), rng.random((30, 30), "float32")
    out = predict(pipeline, {"a": a, "b": b})
    assert {k: v.shape for k, v in out.items()} == {
        "first": (1, 1, 30, 30),
        "second": (1, 1, 30, 30),
    }
    expected = core_prediction(
        package,
        {
            "a": np.pad(a, ((0, 2), (0, 2)), "symmetric")[None, None],
            "b": np.pad(b, ((0, 2), (0, 2)), "symmetric")[None, None],
        },
    )
    for name in ("first", "second"):
        np.testing.assert_array_equal(out[name], expected[name][..., :30, :30])
    with pytest.raises(InvalidTensorError) as info:
        predict(pipeline, {"a": rng.random((24, 24), "float32"), "b": rng.random((30, 24))})
    assert str(info.value) == (
        "input 'b' axis 'y' has size 30, but its size follows 'a' axis 'y': expected 24 "
        "(or less, to be padded)"
    )
    assert info.value.details == {"tensor": "b", "axis": "y", "expected": "24", "got": "30"}


def test_skipping_processing(tiny: Tiny, pipelines: Pipelines) -> None:
    package = tiny("halo")  # zero-mean-unit-variance preprocessing
    pipeline = pipelines.get(package, "pytorch_state_dict")
    image = (np.random.default_rng(7).random((48, 48)) * 200).astype("uint8")
    raw = predict(pipeline, image, skip_preprocessing=True)["out"]
    sample = Sample(
        members={"raw": Tensor(image[None, None].astype("float32"), dims=BCYX)}, stat={}, id=None
    )
    expected = pipeline.predict_sample_without_blocking(
        sample, skip_preprocessing=True, skip_input_padding=True, skip_output_cropping=True
    )
    np.testing.assert_array_equal(raw, expected.members["out"].data.to_numpy())
    assert raw.mean() > 10  # not normalised


def test_skipping_postprocessing_returns_the_raw_network_output(
    tiny: Tiny, pipelines: Pipelines
) -> None:
    pytest.importorskip("cellpose")
    package = tiny("cellpose")
    pipeline = pipelines.get(package, "pytorch_state_dict")
    image = sample_inputs(package)["raw"]
    flows = predict(pipeline, image, skip_postprocessing=True)["labels"]
    assert flows.shape == (1, 3, 48, 48)  # flow_y, flow_x, cell probability
    assert flows.dtype == np.float32


def test_nan_values_reach_the_model_when_allowed(tiny: Tiny, pipelines: Pipelines) -> None:
    pipeline = pipelines.get(tiny("onnx"), "onnx")
    image = np.ones((8, 8), "float32")
    image[2, 3] = np.nan
    out = predict(pipeline, image, nan_policy="allow")["output"]
    assert np.isnan(out[0, 0, 2, 3])
    assert np.isfinite(out).sum() == 63
    with pytest.raises(InvalidTensorError, match="contains 1 NaN value"):
        predict(pipeline, image)


def test_read_only_inputs_are_not_copied_or_written(tiny: Tiny, pipelines: Pipelines) -> None:
    """Arrays received over Flight are read-only views of the received buffers."""
    for name, fmt in (("pytorch_state_dict", "pytorch_state_dict"), ("onnx", "onnx")):
        pipeline = pipelines.get(tiny(name), fmt)
        image = np.random.default_rng(8).random((1, 1, 32, 32), "float32")
        image.flags.writeable = False
        before = image.copy()
        out = predict(pipeline, image)
        assert next(iter(out.values())).shape == (1, 1, 32, 32)
        np.testing.assert_array_equal(image, before)


def test_a_fixed_size_model_tiles_larger_images(tmp_path: Path, pipelines: Pipelines) -> None:
    from tests.tiny_models import build_onnx_identity

    package = build_onnx_identity(tmp_path / "fixed", fixed_size=16)
    pipeline = pipelines.get(package, "onnx")
    out = predict(pipeline, np.ones((40, 20), "float32"))["output"]
    np.testing.assert_array_equal(out, np.ones((1, 1, 40, 20)))


def test_a_tiled_prediction_stops_when_cancelled(tiny: Tiny, pipelines: Pipelines) -> None:
    pipeline = pipelines.get(tiny("halo"), "pytorch_state_dict")
    blocks: list[int] = []

    def cancelled() -> bool:
        return len(blocks) >= 2

    with pytest.raises(CancelledError, match="the prediction was cancelled"):
        predict(
            pipeline,
            np.zeros((100, 90), "float32"),
            blocksize=1,
            progress=lambda done, total: blocks.append(done),
            cancelled=cancelled,
        )
    assert blocks == [1, 2]
    with pytest.raises(CancelledError):
        predict(pipeline, np.zeros((32, 32), "float32"), cancelled=lambda: True)
