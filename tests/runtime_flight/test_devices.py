"""Device names, defaults and availability."""

from __future__ import annotations

import pytest

from modelrunner.errors import DeviceNotAvailableError, InvalidArgumentError
from modelrunner.runtime_flight import devices


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 0)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 2)


def test_cpu_is_always_available(no_gpu: None) -> None:
    assert devices.available_devices() == ("cpu",)
    assert devices.resolve_device("cpu") == "cpu"
    assert devices.resolve_device(" CPU ") == "cpu"


def test_default_device_is_cpu_without_gpu(no_gpu: None) -> None:
    assert devices.default_device() == "cpu"
    assert devices.resolve_device(None) == "cpu"
    assert devices.resolve_device("") == "cpu"


def test_default_device_is_the_first_gpu_when_there_is_one(two_gpus: None) -> None:
    assert devices.default_device() == "cuda:0"
    assert devices.available_devices() == ("cuda:0", "cuda:1", "cpu")


def test_configured_default_device_wins(two_gpus: None) -> None:
    assert devices.default_device("cpu") == "cpu"
    assert devices.resolve_device(None, default="cuda:1") == "cuda:1"


def test_cuda_means_the_first_gpu(two_gpus: None) -> None:
    assert devices.resolve_device("cuda") == "cuda:0"
    assert devices.resolve_device("cuda:1") == "cuda:1"


def test_cuda_without_gpu_is_an_invalid_argument(no_gpu: None) -> None:
    # a device the runtime does not have is the client's mistake (INVALID_ARGUMENT), not a
    # state worth retrying
    with pytest.raises(InvalidArgumentError) as info:
        devices.resolve_device("cuda")
    assert str(info.value) == (
        "device 'cuda' is not available: this runtime has no CUDA device; available devices: cpu"
    )
    assert info.value.details == {"device": "cuda", "available": "cpu"}


def test_a_gpu_index_beyond_the_gpus_is_an_invalid_argument(two_gpus: None) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        devices.resolve_device("cuda:3")
    assert str(info.value) == (
        "device 'cuda:3' is not available: this runtime has 2 CUDA device(s); "
        "available devices: cuda:0, cuda:1, cpu"
    )


def test_a_default_device_that_does_not_exist_is_refused(no_gpu: None) -> None:
    with pytest.raises(InvalidArgumentError):
        devices.default_device("cuda:0")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cuda:-1", "tpu:0", "cuda0"])
def test_malformed_device_names_are_invalid_arguments(no_gpu: None, name: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        devices.resolve_device(name)
    assert str(info.value) == f"unknown device {name!r}: use 'cpu', 'cuda' or 'cuda:N'"
    assert not isinstance(info.value, DeviceNotAvailableError)


def test_device_infos_describe_the_cpu() -> None:
    infos = devices.device_infos()
    cpu = infos[-1]
    assert cpu.name == "cpu"
    assert cpu.memory_total_bytes > 0
    assert 0 < cpu.memory_free_bytes <= cpu.memory_total_bytes
    assert [i.name for i in infos] == list(devices.available_devices())


def test_this_machine_reports_what_torch_sees() -> None:
    import torch

    expected = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert devices.cuda_device_count() == expected
