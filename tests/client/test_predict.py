"""Predictions through the client equal bioimageio.core's in-process predictions with the same
weights, for every model of the zoo and a tiny model of every weight format: bit for bit on the
reference path, within 1e-5 on the fast path (the same steps as torch operations); model tests
pass."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from modelrunner.client import ModelInfo, ModelRunnerClient
from tests.reference import core_prediction, sample_inputs
from tests.zoo import MULTI, NUCLEI

Tiny = Callable[[str], Path]

ZOO_CASES = [(NUCLEI, "onnx"), (NUCLEI, "torchscript"), (MULTI, "torchscript")]
TINY_CASES = [
    ("pytorch_state_dict", "pytorch_state_dict"),
    ("torchscript", "torchscript"),
    ("onnx", "onnx"),
    ("tensorflow_saved_model_bundle", "tensorflow_saved_model_bundle"),
    ("keras_v3", "keras_v3"),
    ("keras_hdf5", "keras_hdf5"),
    ("halo", None),
    ("parameterized", None),
    ("two_inputs", None),
    ("cellpose", None),
]


def _check_remote_equals_core(
    client: ModelRunnerClient, package: Path, weight_format: str | None
) -> ModelInfo:
    info = client.add_model(package)
    inputs = sample_inputs(package)
    local = core_prediction(package, inputs, weight_format)
    reference = client.predict(info.id, inputs, weight_format=weight_format, reference_path=True)
    served = client.predict(info.id, inputs, weight_format=weight_format)
    for remote in (reference, served):
        assert remote.keys() == local.keys()
        for name, expected in local.items():
            assert remote[name].shape == expected.shape, name
            assert remote[name].dtype == expected.dtype, name
    for name, expected in local.items():
        np.testing.assert_array_equal(reference[name], expected, err_msg=name)
        np.testing.assert_allclose(served[name], expected, rtol=1e-5, atol=1e-5, err_msg=name)
    report = client.test(info.id, weight_format)
    assert report.status == "passed", report.markdown
    return info


@pytest.mark.parametrize(
    ("package", "weight_format"), ZOO_CASES, ids=lambda v: getattr(v, "name", v)
)
def test_zoo_models(client: ModelRunnerClient, package: Path, weight_format: str) -> None:
    _check_remote_equals_core(client, package, weight_format)


def test_careamics_model(client: ModelRunnerClient, n2v_package: Path) -> None:
    _check_remote_equals_core(client, n2v_package, "pytorch_state_dict")


@pytest.mark.parametrize(("name", "weight_format"), TINY_CASES, ids=[c[0] for c in TINY_CASES])
def test_tiny_models_of_every_format(
    client: ModelRunnerClient,
    tiny: Tiny,
    name: str,
    weight_format: str | None,
    in_tmp_dir: Path,
) -> None:
    _check_remote_equals_core(client, tiny(name), weight_format)


def test_the_halo_model_that_breaks_bioengine_infers(
    client: ModelRunnerClient, nuclei: ModelInfo
) -> None:
    """unet2d_nuclei_broad passes its test and must infer too (output halo 32, fixed 512 input)."""
    x = np.load(NUCLEI / "test_input.npy")
    out = client.predict(nuclei.id, x, weight_format="onnx")["probability"]
    np.testing.assert_allclose(out, np.load(NUCLEI / "test_output.npy"), atol=1e-4)


@pytest.mark.parametrize("shape", [(300, 300), (1000, 700), (512, 512)])
def test_any_image_size(
    client: ModelRunnerClient, nuclei: ModelInfo, shape: tuple[int, int]
) -> None:
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    out = client.predict(nuclei.id, image, weight_format="onnx")["probability"]
    assert out.shape == (1, 1, *shape)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_blocksize_tiles_like_bioimageio_core(client: ModelRunnerClient, tiny: Tiny) -> None:
    from bioimageio.core import Sample, Tensor, create_prediction_pipeline

    from tests.reference import descr

    package = tiny("halo")
    info = client.add_model(package)
    model = descr(package)
    image = np.random.default_rng(1).random((1, 1, 200, 150), dtype=np.float32)
    remote = client.predict(info.id, image, blocksize=2)
    with create_prediction_pipeline(model, devices=["cpu"]) as pipeline:
        sample = Sample(
            members={model.inputs[0].id: Tensor(image, dims=[a.id for a in model.inputs[0].axes])},
            stat={},
            id=None,
        )
        local = pipeline.predict_sample_with_blocking(sample, ns=2)
    (name,) = remote
    np.testing.assert_array_equal(remote[name], local.members[name].data.to_numpy())


def test_reduced_precision_through_the_client(client: ModelRunnerClient, tiny: Tiny) -> None:
    from modelrunner.errors import FailedPreconditionError

    script = client.add_model(tiny("torchscript"))
    x = np.random.default_rng(0).random((1, 1, 24, 24), dtype=np.float32)
    full = client.predict(script.id, x)["out"]
    half = client.predict(script.id, x, precision="bfloat16")["out"]
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, full, rtol=0, atol=0.05)
    onnx = client.add_model(tiny("onnx"))
    with pytest.raises(FailedPreconditionError, match="the onnx network has no reduced precision"):
        client.predict(onnx.id, x, precision="float16")
