"""The generated protobuf code is checked in and must match the protos."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh() -> None:
    pytest.importorskip("grpc_tools")
    spec = importlib.util.spec_from_file_location(
        "generate_protos", ROOT / "protos" / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["generate_protos"] = module
    spec.loader.exec_module(module)
    assert module.stale_files() == [], "run: python protos/generate.py"


def test_proto_package_is_versioned() -> None:
    from modelrunner.v1 import control_pb2, models_pb2, runtime_pb2

    for m in (control_pb2, models_pb2, runtime_pb2):
        assert m.DESCRIPTOR.package == "modelrunner.v1"
