"""The package's public names, and that importing it stays cheap."""

from __future__ import annotations

import subprocess
import sys

import modelrunner.runtime_flight as runtime


def test_public_names() -> None:
    assert runtime.__all__ == [
        "Outputs",
        "PipelinePool",
        "RuntimeLimits",
        "RuntimeService",
        "WarmPipeline",
        "available_devices",
        "default_device",
        "device_infos",
        "resolve_device",
        "run_model_test",
        "runnable_formats",
    ]
    for name in runtime.__all__:
        assert getattr(runtime, name).__name__ == name


def test_importing_the_package_and_the_pool_loads_no_framework() -> None:
    code = (
        "import sys, modelrunner.runtime_flight as r\n"
        "from modelrunner.runtime_flight import pipelines, devices, weight_formats\n"
        "heavy = [m for m in ('bioimageio.core', 'torch', 'tensorflow', 'onnxruntime', 'xarray')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
