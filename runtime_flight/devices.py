"""The devices this runtime can compute on: ``cpu`` and, when PyTorch sees GPUs, ``cuda:N``.

Device names are normalised so that one GPU has one name: ``cuda`` means ``cuda:0`` (PyTorch's
default device), which keeps one warm pipeline per model and GPU. PyTorch is imported only when
a CUDA device is asked about, never at import time of this module.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from functools import cache

from modelrunner.errors import InvalidArgumentError, clip
from modelrunner.types import DeviceInfo

logger = logging.getLogger(__name__)

CPU = "cpu"
_CUDA_NAME = re.compile(r"^cuda(?::(\d+))?$")


@cache
def cuda_device_count() -> int:
    """GPUs PyTorch can use (0 without PyTorch or without CUDA). Cached: it does not change
    while the process runs, and asking is slow the first time."""
    if importlib.util.find_spec("torch") is None:
        return 0
    import torch

    try:
        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception as e:  # noqa: BLE001 - a broken driver means no usable GPU, not a crash
        logger.warning("CUDA is installed but not usable: %s", e)
        return 0


def cuda_devices() -> tuple[str, ...]:
    return tuple(f"cuda:{i}" for i in range(cuda_device_count()))


def available_devices() -> tuple[str, ...]:
    """Every device name this runtime accepts, best first: ``cuda:0``, ..., ``cpu``."""
    return (*cuda_devices(), CPU)


def default_device(configured: str | None = None) -> str:
    """``configured`` (the ``device`` setting) when set, else ``cuda:0`` when a GPU exists, else
    ``cpu``; always a normalised, available device."""
    if configured:
        return resolve_device(configured)
    return "cuda:0" if cuda_device_count() else CPU


def resolve_device(requested: str | None, default: str | None = None) -> str:
    """The normalised name of ``requested`` (``default_device(default)`` when empty).

    Raises:
        InvalidArgumentError: not a device name (e.g. ``gpu``, ``cuda:x``), or a CUDA device
            this machine does not have (``cuda:7``): the message lists the devices that exist.
            A client's mistake, not a state that retrying or waiting changes.
    """
    if not requested:
        return default_device(default)
    name = requested.strip().lower()
    if name == CPU:
        return CPU
    match = _CUDA_NAME.match(name)
    if match is None:
        raise InvalidArgumentError(
            f"unknown device {clip(requested)!r}: use 'cpu', 'cuda' or 'cuda:N'",
            details={"device": clip(requested), "available": ", ".join(available_devices())},
        )
    index = int(match.group(1) or 0)
    count = cuda_device_count()
    if index >= count:
        have = "no CUDA device" if count == 0 else f"{count} CUDA device(s)"
        raise InvalidArgumentError(
            f"device {requested!r} is not available: this runtime has {have}; "
            f"available devices: {', '.join(available_devices())}",
            details={"device": requested, "available": ", ".join(available_devices())},
        )
    return f"cuda:{index}"


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def cuda_index(device: str) -> int:
    return int(device.split(":", 1)[1]) if ":" in device else 0


def cuda_free_bytes(device: str) -> int:
    """Free memory on a CUDA device as the driver sees it (all processes, all frameworks)."""
    import torch

    free, _total = torch.cuda.mem_get_info(cuda_index(device))
    return int(free)


def device_infos() -> tuple[DeviceInfo, ...]:
    """Name, description and memory of every available device."""
    infos = [_cuda_info(d) for d in cuda_devices()]
    infos.append(_cpu_info())
    return tuple(infos)


def _cuda_info(device: str) -> DeviceInfo:
    import torch

    index = cuda_index(device)
    free, total = torch.cuda.mem_get_info(index)
    return DeviceInfo(
        name=device,
        description=str(torch.cuda.get_device_name(index)),
        memory_total_bytes=int(total),
        memory_free_bytes=int(free),
    )


def _cpu_info() -> DeviceInfo:
    import platform

    total = free = 0
    if importlib.util.find_spec("psutil") is not None:
        import psutil

        memory = psutil.virtual_memory()
        total, free = int(memory.total), int(memory.available)
    return DeviceInfo(
        name=CPU,
        description=platform.processor() or platform.machine(),
        memory_total_bytes=total,
        memory_free_bytes=free,
    )
