"""On a machine with a GPU: pipelines on cuda, their measured memory, results as on the CPU.
Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelrunner.runtime_flight import devices
from modelrunner.runtime_flight.descriptions import weights_bytes
from modelrunner.runtime_flight.model_tests import run_model_test
from modelrunner.runtime_flight.pipelines import PipelinePool
from modelrunner.runtime_flight.weight_formats import onnx_has_cuda
from tests.reference import descr
from tests.runtime_flight.predicting import predict
from tests.zoo import NUCLEI, needs_zoo

pytestmark = [
    needs_zoo,
    pytest.mark.skipif(devices.cuda_device_count() == 0, reason="no CUDA device"),
]


@pytest.fixture
def pool() -> PipelinePool:
    packages = {"nuclei": NUCLEI}
    return PipelinePool(packages.__getitem__)


def test_the_default_device_is_the_first_gpu(pool: PipelinePool) -> None:
    assert pool.default_device == "cuda:0"
    info = pool.load("nuclei")
    assert (info.model.weight_format, info.model.device) == ("torchscript", "cuda:0")
    assert info.model.memory_bytes >= weights_bytes(descr(NUCLEI), "torchscript")
    pool.close()


def test_cuda_gives_the_cpu_results(pool: PipelinePool) -> None:
    image = np.load(NUCLEI / "test_input.npy")
    with pool.use("nuclei", "torchscript", "cuda") as gpu:
        assert gpu.device == "cuda:0"
        on_gpu = predict(gpu, image)["probability"]
        tiled = predict(gpu, np.tile(image, (1, 1, 2, 2)))["probability"]
    with pool.use("nuclei", "torchscript", "cpu") as cpu:
        on_cpu = predict(cpu, image)["probability"]
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-3, atol=1e-3)
    assert tiled.shape == (1, 1, 1024, 1024)
    assert len(pool.loaded()) == 2
    pool.close()


def test_onnx_on_the_gpu_only_with_the_cuda_provider(pool: PipelinePool) -> None:
    if onnx_has_cuda():
        assert pool.load("nuclei", "onnx", "cuda").model.device == "cuda:0"
    else:
        assert pool.load("nuclei", "onnx").model.device == "cpu"
    pool.close()


def test_model_test_on_the_gpu(tmp_path: Path) -> None:
    report = run_model_test(NUCLEI, weight_format="torchscript", device="cuda")
    assert report.status == "passed", report.markdown


def test_the_fast_path_on_the_gpu_matches_bioimageio_core(pool: PipelinePool) -> None:
    """On the GPU the fast path (processing and network on the device, pinned uploads) serves
    the model, matches bioimageio.core within 1e-4, and measures reduced precision at load."""

    image = np.load(NUCLEI / "test_input.npy")
    expected = np.load(NUCLEI / "test_output.npy")
    with pool.use("nuclei", "torchscript", "cuda") as gpu:
        assert gpu.serving.name == "fast", gpu.serving.reason
        assert set(gpu.serving.precision_errors) == {"float16", "bfloat16"}
        for _ in range(3):  # the pinned staging buffer is reused call after call
            fast = predict(gpu, image)
            assert fast.path == "fast"
            np.testing.assert_allclose(fast["probability"], expected, rtol=0, atol=1e-4)
        reference = predict(gpu, image, reference_path=True)
        np.testing.assert_allclose(fast["probability"], reference["probability"], rtol=0, atol=1e-4)
        half = predict(gpu, image, precision="float16")
        assert half["probability"].dtype == np.float32
        error = np.abs(half["probability"] - fast["probability"]).max()
        assert error <= gpu.serving.precision_errors["float16"] + 1e-6
    pool.close()
