"""Choosing the weight format and device, and what bioimageio.core is told."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from modelrunner.errors import (
    DeviceNotAvailableError,
    FailedPreconditionError,
    InvalidArgumentError,
)
from modelrunner.runtime_flight import devices, weight_formats
from modelrunner.runtime_flight.weight_formats import choose, core_devices
from tests.reference import descr
from tests.zoo import NUCLEI, needs_zoo


@pytest.fixture
def one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 1)


def test_every_format_bioimageio_core_runs_is_runnable_here() -> None:
    assert set(weight_formats.runnable_formats()) == set(weight_formats.ALL_FORMATS)


@needs_zoo
def test_onnx_comes_first_on_cpu() -> None:
    assert choose(descr(NUCLEI), None, None, "cpu") == ("onnx", "cpu")


@needs_zoo
def test_pytorch_formats_come_first_on_a_gpu(one_gpu: None) -> None:
    assert choose(descr(NUCLEI), None, None, "cuda:0") == ("torchscript", "cuda:0")
    assert choose(descr(NUCLEI), None, "cpu", "cuda:0") == ("onnx", "cpu")


@needs_zoo
def test_the_requested_format_is_used() -> None:
    assert choose(descr(NUCLEI), "torchscript", None, "cpu") == ("torchscript", "cpu")
    assert choose(descr(NUCLEI), "onnx", "cpu", "cpu") == ("onnx", "cpu")


@needs_zoo
def test_a_format_the_model_lacks_is_an_invalid_argument_listing_its_formats() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        choose(descr(NUCLEI), "pytorch_state_dict", None, "cpu")
    assert str(info.value) == (
        "the model has no pytorch_state_dict weights; its weight formats: onnx, torchscript"
    )
    assert info.value.details == {
        "weight_format": "pytorch_state_dict",
        "available": "onnx, torchscript",
    }


@needs_zoo
def test_onnx_on_a_gpu_needs_the_cuda_provider(one_gpu: None) -> None:
    if weight_formats.onnx_has_cuda():
        pytest.skip("onnxruntime has the CUDA provider here")
    with pytest.raises(DeviceNotAvailableError) as info:
        choose(descr(NUCLEI), "onnx", "cuda:0", "cuda:0")
    assert str(info.value) == (
        "onnx weights cannot run on cuda:0 in this runtime; they run on: cpu"
    )
    # without an explicit device the runtime's default GPU gives way to the CPU
    assert choose(descr(NUCLEI), "onnx", None, "cuda:0") == ("onnx", "cpu")


def test_tensorflow_runs_on_cpu_only(one_gpu: None, tiny: Callable[[str], Path]) -> None:
    model = descr(tiny("keras_v3"))
    assert choose(model, None, None, "cuda:0") == ("keras_v3", "cpu")
    with pytest.raises(DeviceNotAvailableError) as info:
        choose(model, None, "cuda:0", "cuda:0")
    assert str(info.value) == (
        "none of the model's weight formats (keras_v3) can run on cuda:0 in this runtime"
    )


def test_a_missing_framework_is_a_failed_precondition(
    monkeypatch: pytest.MonkeyPatch, tiny: Callable[[str], Path]
) -> None:
    model = descr(tiny("onnx"))
    monkeypatch.setattr(weight_formats, "missing_packages", lambda f: ("onnxruntime",))
    with pytest.raises(FailedPreconditionError) as info:
        choose(model, "onnx", None, "cpu")
    assert str(info.value) == "onnx weights need onnxruntime, which this runtime lacks"
    with pytest.raises(FailedPreconditionError) as info:
        choose(model, None, None, "cpu")
    assert str(info.value).startswith(
        "none of the model's weight formats can run in this runtime; the model has onnx"
    )


def test_bioimageio_core_gets_the_device_names_each_framework_understands() -> None:
    assert core_devices("torchscript", "cuda:1") == ["cuda:1"]
    assert core_devices("pytorch_state_dict", "cpu") == ["cpu"]
    assert core_devices("onnx", "cpu") == ["CPUExecutionProvider"]
    assert core_devices("onnx", "cuda:0") == ["CUDAExecutionProvider"]
    assert core_devices("tensorflow_saved_model_bundle", "cpu") is None
    assert core_devices("keras_hdf5", "cpu") is None
