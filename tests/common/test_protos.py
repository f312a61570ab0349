"""The generated protobuf code is checked in and must match the protos."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh() -> None:
    pytest.importorskip("grpc_tools")
    # In a process of its own: grpc_tools' protoc crashes when it runs in a process that has
    # already served gRPC calls (the other tests' servers).
    result = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_proto_package_is_versioned() -> None:
    from modelrunner.v1 import control_pb2, models_pb2, runtime_pb2

    for m in (control_pb2, models_pb2, runtime_pb2):
        assert m.DESCRIPTOR.package == "modelrunner.v1"
