"""Inference with the real packages in ``../shared/zoo``: same results as bioimageio.core, any
image size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bioimageio.core import Sample, Tensor
from bioimageio.core import predict as core_predict
from bioimageio.core.digest_spec import get_test_input_sample, get_test_output_sample

from modelrunner.runtime_flight.pipelines import create_pipeline
from tests.reference import Pipelines, descr
from tests.runtime_flight.predicting import predict
from tests.zoo import MULTI, NUCLEI, needs_zoo

pytestmark = needs_zoo

BCYX = ("batch", "channel", "y", "x")


def nuclei_image(height: int, width: int) -> np.ndarray:
    """A test-like image: the test input, mirrored to the size wanted, plus fixed noise."""
    test = np.load(NUCLEI / "test_input.npy")[0, 0]
    image = np.pad(test, ((0, max(0, height - 512)), (0, max(0, width - 512))), "symmetric")
    noise = np.random.default_rng(0).normal(0, 0.01, image.shape)
    return (image + noise).astype("float32")[:height, :width]


def core_whole(pipelines: Pipelines, package: Path, weight_format: str, inputs: dict) -> dict:
    """bioimageio.core's own way to run a model test sample."""
    model = descr(package)
    sample = Sample(
        members={
            t.id: Tensor(inputs[str(t.id)], dims=[a.id for a in t.axes]) for t in model.inputs
        },
        stat={},
        id=None,
    )
    out = pipelines.get(package, weight_format).predict_sample_without_blocking(
        sample, skip_input_padding=True, skip_output_cropping=True
    )
    return {str(m): t.data.to_numpy() for m, t in out.members.items()}


@pytest.mark.parametrize("weight_format", ["onnx", "torchscript"])
def test_nuclei_reproduces_its_test_output(pipelines: Pipelines, weight_format: str) -> None:
    pipeline = pipelines.get(NUCLEI, weight_format)
    x = np.load(NUCLEI / "test_input.npy")
    out = predict(pipeline, {"raw": x})
    expected = np.load(NUCLEI / "test_output.npy")
    assert out["probability"].shape == expected.shape == (1, 1, 512, 512)
    assert out["probability"].dtype == np.float32
    assert out["probability"].flags.c_contiguous
    np.testing.assert_allclose(out["probability"], expected, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(
        out["probability"], core_whole(pipelines, NUCLEI, weight_format, {"raw": x})["probability"]
    )


def test_bioimageio_core_predict_fails_on_nuclei_where_the_runtime_works(
    pipelines: Pipelines,
) -> None:
    """bioimageio.core's plain predict() pads by the output halo (32): 576x576 for a model that
    takes exactly 512x512. This runtime feeds the image as the model test does."""
    x = np.load(NUCLEI / "test_input.npy")
    # a pipeline of its own: bioimageio.core's predict() unloads the pipeline it is given
    onnx = create_pipeline(descr(NUCLEI), "onnx", "cpu")
    with pytest.raises(Exception, match="Got: 576 Expected: 512"):
        core_predict(model=onnx, inputs={"raw": x})
    out = predict(pipelines.get(NUCLEI, "onnx"), x)
    assert out["probability"].shape == (1, 1, 512, 512)
    np.testing.assert_allclose(
        out["probability"], np.load(NUCLEI / "test_output.npy"), rtol=1e-3, atol=1e-3
    )


def test_a_yx_image_runs_like_bcyx(pipelines: Pipelines) -> None:
    pipeline = pipelines.get(NUCLEI, "onnx")
    x = np.load(NUCLEI / "test_input.npy")
    np.testing.assert_array_equal(
        predict(pipeline, x[0, 0])["probability"], predict(pipeline, x)["probability"]
    )
    xy = np.ascontiguousarray(x[0, 0].T)
    np.testing.assert_array_equal(
        predict(pipeline, xy, {"raw": ("x", "y")})["probability"],
        predict(pipeline, x)["probability"],
    )


def test_integer_images_are_converted_by_the_preprocessing(pipelines: Pipelines) -> None:
    pipeline = pipelines.get(NUCLEI, "onnx")
    image = (nuclei_image(512, 512) * 1000).clip(0, 65535).astype("uint16")
    np.testing.assert_allclose(
        predict(pipeline, image)["probability"],
        predict(pipeline, image.astype("float32"))["probability"],
        rtol=1e-6,
        atol=1e-6,
    )


def test_a_smaller_image_is_padded_and_cropped_back(pipelines: Pipelines) -> None:
    pipeline = pipelines.get(NUCLEI, "onnx")
    image = nuclei_image(300, 300)
    out = predict(pipeline, image)["probability"]
    assert out.shape == (1, 1, 300, 300)
    assert out.flags.c_contiguous
    # the same as padding at the end by hand after the (sample-wise) normalisation
    normalised = (image - image.mean()) / (image.std() + 1e-6)
    padded = np.pad(normalised, ((0, 212), (0, 212)), mode="symmetric")
    raw = pipeline.predict_sample_without_blocking(
        Sample(members={"raw": Tensor(padded[None, None], dims=BCYX)}, stat={}, id=None),
        skip_preprocessing=True,
        skip_input_padding=True,
        skip_output_cropping=True,
    )
    expected = raw.members["probability"].data.to_numpy()[..., :300, :300]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    # away from the padded border it agrees with a prediction of the image within a larger one
    larger = predict(pipeline, nuclei_image(512, 512))["probability"][..., :300, :300]
    inner = np.s_[0, 0, 40:260, 40:260]
    assert np.corrcoef(out[inner].ravel(), larger[inner].ravel())[0, 1] > 0.9


def test_a_larger_image_is_tiled_like_bioimageio_core(pipelines: Pipelines) -> None:
    pipeline = pipelines.get(NUCLEI, "onnx")
    image = nuclei_image(1000, 700)
    blocks: list[tuple[int, int]] = []
    out = predict(pipeline, image, progress=lambda done, total: blocks.append((done, total)))[
        "probability"
    ]
    assert out.shape == (1, 1, 1000, 700)
    assert blocks == [(i, 6) for i in range(1, 7)]
    sample = Sample(members={"raw": Tensor(image[None, None], dims=BCYX)}, stat={}, id=None)
    expected = pipeline.predict_sample_with_fixed_blocking(
        sample, input_block_shape={"raw": {"batch": 1, "channel": 1, "y": 512, "x": 512}}
    )
    np.testing.assert_allclose(
        out, expected.members["probability"].data.to_numpy(), rtol=1e-6, atol=1e-6
    )


def test_an_image_larger_on_one_axis_only_is_padded_then_tiled(pipelines: Pipelines) -> None:
    pipeline = pipelines.get(NUCLEI, "onnx")
    out = predict(pipeline, nuclei_image(300, 800))["probability"]
    assert out.shape == (1, 1, 300, 800)
    assert np.isfinite(out).all()


def test_the_tile_byte_limit_tiles_a_fitting_image_when_blocks_can_be_smaller(
    pipelines: Pipelines,
) -> None:
    pipeline = pipelines.get(MULTI, "torchscript")
    rng = np.random.default_rng(0)
    inputs = {"input0": rng.random((96, 96), "float32"), "input1": rng.random((96, 96), "float32")}
    calls: list[int] = []
    whole = predict(pipeline, inputs)
    tiled = predict(
        pipeline,
        inputs,
        max_tile_input_bytes=40_000,
        progress=lambda done, total: calls.append(total),
    )
    assert calls and calls[0] > 1
    assert {k: v.shape for k, v in tiled.items()} == {k: v.shape for k, v in whole.items()}


def test_multi_tensor_reproduces_its_test_outputs(pipelines: Pipelines) -> None:
    pipeline = pipelines.get(MULTI, "torchscript")
    model = descr(MULTI)
    inputs = {str(m): t.data.to_numpy() for m, t in get_test_input_sample(model).members.items()}
    out = predict(pipeline, inputs)
    for m, t in get_test_output_sample(model).members.items():
        np.testing.assert_allclose(out[str(m)], t.data.to_numpy(), rtol=1e-3, atol=1e-3)
    expected = core_whole(pipelines, MULTI, "torchscript", inputs)
    for name, array in expected.items():
        np.testing.assert_array_equal(out[name], array)


def test_multi_tensor_with_sizes_off_its_grid(pipelines: Pipelines) -> None:
    pipeline = pipelines.get(MULTI, "torchscript")
    rng = np.random.default_rng(1)
    out = predict(
        pipeline,
        {"input0": rng.random((50, 70), "float32"), "input1": rng.random((50, 70), "float32")},
    )
    assert out["output0"].shape == (1, 1, 50, 70)
    assert out["output1"].shape == (1, 1, 50, 70)


def test_careamics_reproduces_its_test_output(pipelines: Pipelines, n2v_package: Path) -> None:
    pipeline = pipelines.get(n2v_package, "pytorch_state_dict")
    x = np.load(n2v_package / "inputs.npy")
    out = predict(pipeline, x)["prediction"]
    np.testing.assert_allclose(out, np.load(n2v_package / "outputs.npy"), rtol=1e-2, atol=1e-2)
    expected = core_whole(pipelines, n2v_package, "pytorch_state_dict", {"input": x})
    np.testing.assert_array_equal(out, expected["prediction"])


def test_careamics_takes_yx_images_of_any_size(pipelines: Pipelines, n2v_package: Path) -> None:
    """The export fixes input and output to 64x64; the output follows the input, so smaller
    images are padded and larger ones tiled."""
    pipeline = pipelines.get(n2v_package, "pytorch_state_dict")
    rng = np.random.default_rng(0)
    small = rng.random((40, 50), "float32")
    assert predict(pipeline, small)["prediction"].shape == (1, 1, 40, 50)
    large = rng.random((128, 192), "float32")
    out = predict(pipeline, large)["prediction"]
    assert out.shape == (1, 1, 128, 192)
    # no halo: each 64x64 tile is predicted on its own
    for y in (0, 64):
        for x in (0, 64, 128):
            tile = predict(pipeline, large[y : y + 64, x : x + 64])["prediction"]
            np.testing.assert_allclose(out[..., y : y + 64, x : x + 64], tile, rtol=1e-5, atol=1e-5)
