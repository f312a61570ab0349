"""tritonclient's own Python environment, for the tests that call modelrunner as Triton users do.

tritonclient pins protobuf<7 and modelrunner's generated code needs protobuf 7, so the two never
share an environment: the tests run tritonclient in ``tritonclient-venv`` under
``~/.cache/modelrunner-benchmarks`` (outside the repository; the benchmarks' V2 case uses the same
one), made on first use from the package registry in about 20 s, or in the one
``MODELRUNNER_TRITONCLIENT_PYTHON`` names.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.triton_venv import CLIENT_PATH, ensure_tritonclient_venv


def tritonclient_python() -> Path:
    """The Python of an environment with tritonclient; skips the test when none can be made."""
    named = os.environ.get("MODELRUNNER_TRITONCLIENT_PYTHON")
    if named:
        return Path(named)
    try:
        return ensure_tritonclient_venv().python
    except (RuntimeError, OSError) as e:
        pytest.skip(
            f"cannot make tritonclient's environment in {CLIENT_PATH} ({e}); set "
            "MODELRUNNER_TRITONCLIENT_PYTHON to a Python that has tritonclient[grpc]"
        )
