"""Which weight format runs a model, on which device, and what bioimageio.core is told.

Priority when the client names no format (first runnable wins):

* on CPU: ``onnx``, ``torchscript``, ``pytorch_state_dict``, ``tensorflow_saved_model_bundle``,
  ``keras_v3``, ``keras_hdf5``. Self-contained formats come first: they run no Python code from
  the package (``pytorch_state_dict`` imports its architecture), and onnxruntime is usually the
  fastest CPU engine.
* on a GPU: ``torchscript``, ``pytorch_state_dict``, then ``onnx`` when onnxruntime has the CUDA
  execution provider.

Device support: the PyTorch formats run on ``cpu`` and every ``cuda:N``; ONNX on ``cpu`` and, with
the CUDA provider, on ``cuda:0`` (bioimageio.core passes onnxruntime provider names, not device
indices); TensorFlow and Keras on ``cpu`` only, since bioimageio.core does no device placement for
them and this runtime installs ``tensorflow-cpu``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Literal, cast

from modelrunner.errors import (
    DeviceNotAvailableError,
    FailedPreconditionError,
    InvalidArgumentError,
)

from .devices import CPU, cuda_index, is_cuda

if TYPE_CHECKING:
    from bioimageio.spec.model import v0_5

WeightFormat = Literal[
    "pytorch_state_dict",
    "torchscript",
    "onnx",
    "tensorflow_saved_model_bundle",
    "keras_v3",
    "keras_hdf5",
]

ALL_FORMATS: tuple[WeightFormat, ...] = (
    "pytorch_state_dict",
    "torchscript",
    "onnx",
    "tensorflow_saved_model_bundle",
    "keras_v3",
    "keras_hdf5",
)
CPU_PRIORITY: tuple[WeightFormat, ...] = (
    "onnx",
    "torchscript",
    "pytorch_state_dict",
    "tensorflow_saved_model_bundle",
    "keras_v3",
    "keras_hdf5",
)
GPU_PRIORITY: tuple[WeightFormat, ...] = ("torchscript", "pytorch_state_dict", "onnx")

_PACKAGES: dict[str, tuple[str, ...]] = {
    "pytorch_state_dict": ("torch",),
    "torchscript": ("torch",),
    "onnx": ("onnxruntime",),
    "tensorflow_saved_model_bundle": ("tensorflow",),
    "keras_v3": ("keras",),
    "keras_hdf5": ("keras", "h5py"),
}
_TORCH_FORMATS = frozenset({"pytorch_state_dict", "torchscript"})


@cache
def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


@cache
def onnx_has_cuda() -> bool:
    if not _installed("onnxruntime"):
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def missing_packages(weight_format: str) -> tuple[str, ...]:
    return tuple(p for p in _PACKAGES.get(weight_format, ("?",)) if not _installed(p))


def runnable_formats() -> tuple[WeightFormat, ...]:
    """The weight formats whose framework is installed (checked without importing it)."""
    return tuple(f for f in ALL_FORMATS if not missing_packages(f))


def supports_device(weight_format: str, device: str) -> bool:
    if device == CPU:
        return True
    if weight_format in _TORCH_FORMATS:
        return is_cuda(device)
    if weight_format == "onnx":
        return is_cuda(device) and cuda_index(device) == 0 and onnx_has_cuda()
    return False


def model_formats(descr: v0_5.ModelDescr) -> tuple[str, ...]:
    """The weight formats a model description has, in the description's order."""
    return tuple(name for name, entry in descr.weights if entry is not None)


def core_devices(weight_format: str, device: str) -> list[str] | None:
    """What bioimageio.core's ``devices`` argument must be for this format and device.

    PyTorch takes torch device names; onnxruntime takes execution provider names (a torch name
    would make bioimageio.core fall back to every provider, GPU included); the TensorFlow and
    Keras adapters ignore devices, so none are passed.
    """
    if weight_format in _TORCH_FORMATS:
        return [device]
    if weight_format == "onnx":
        return ["CUDAExecutionProvider" if is_cuda(device) else "CPUExecutionProvider"]
    return None


def choose(
    descr: v0_5.ModelDescr,
    weight_format: str | None,
    device: str | None,
    default_device: str,
) -> tuple[WeightFormat, str]:
    """The weight format and device to run ``descr`` with.

    Args:
        weight_format: the client's choice; empty: the first runnable format by priority.
        device: the client's normalised device; None: ``default_device`` when the chosen format
            runs there, else ``cpu``.

    Raises:
        InvalidArgumentError: the model has no ``weight_format`` weights (lists the ones it has).
        FailedPreconditionError: the framework for the format is not installed here.
        DeviceNotAvailableError: the format cannot run on the requested device.
    """
    present = model_formats(descr)
    if weight_format:
        if weight_format not in present:
            raise InvalidArgumentError(
                f"the model has no {weight_format} weights; its weight formats: "
                + ", ".join(present),
                details={"weight_format": weight_format, "available": ", ".join(present)},
            )
        if weight_format not in ALL_FORMATS:
            raise FailedPreconditionError(
                f"weight format {weight_format} cannot run in this runtime; it runs "
                + ", ".join(ALL_FORMATS),
                details={"weight_format": weight_format},
            )
        if missing := missing_packages(weight_format):
            raise FailedPreconditionError(
                f"{weight_format} weights need {', '.join(missing)}, which this runtime lacks",
                details={"weight_format": weight_format, "missing": ", ".join(missing)},
            )
        fmt = cast("WeightFormat", weight_format)
        if device is None:
            return fmt, default_device if supports_device(fmt, default_device) else CPU
        if not supports_device(fmt, device):
            raise DeviceNotAvailableError(
                f"{weight_format} weights cannot run on {device} in this runtime; "
                + f"they run on: {', '.join(_devices_for(fmt))}",
                details={"weight_format": weight_format, "device": device},
            )
        return fmt, device

    runnable = [f for f in ALL_FORMATS if f in present and not missing_packages(f)]
    if not runnable:
        raise FailedPreconditionError(
            "none of the model's weight formats can run in this runtime; the model has "
            + f"{', '.join(present)}, this runtime runs {', '.join(runnable_formats())}",
            details={"available": ", ".join(present)},
        )
    for candidate in [device] if device is not None else _unique([default_device, CPU]):
        order = GPU_PRIORITY if is_cuda(candidate) else CPU_PRIORITY
        for f in order:
            if f in runnable and supports_device(f, candidate):
                return f, candidate
    raise DeviceNotAvailableError(
        f"none of the model's weight formats ({', '.join(runnable)}) can run on {device} in "
        + "this runtime",
        details={"device": str(device), "available": ", ".join(runnable)},
    )


def _devices_for(weight_format: WeightFormat) -> list[str]:
    from .devices import available_devices

    return [d for d in available_devices() if supports_device(weight_format, d)]


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))
