"""The benchmarks' local Ray clusters (``benchmarks/local_ray.py``) start as ``serve --ray local``
starts its own: in token mode with a token of their own in a private temporary file, never one
Ray writes to ``~/.ray/auth_token`` (which breaks the developer's next ``ray start --head``).
``ray.init`` is replaced by a stand-in that notes what Ray would see: no cluster starts."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip(
    "ray", reason="Ray is not installed: the cluster tests need `pip install -e .[cluster]`"
)

import ray

from benchmarks import volume

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


class _Started(Exception):
    """Raised by the stand-in for ``ray.init``: the benchmark stops there."""


def _seen_by_ray_init(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def init(**kwargs: Any) -> None:
        path = os.environ.get("RAY_AUTH_TOKEN_PATH")
        seen.update(
            kwargs=kwargs,
            mode=os.environ.get("RAY_AUTH_MODE"),
            token_path=path,
            token_file_mode=os.stat(path).st_mode & 0o777 if path else None,
        )
        raise _Started

    monkeypatch.setattr(ray, "init", init)
    return seen


def test_the_volume_benchmark_starts_ray_with_a_token_of_its_own(
    monkeypatch: pytest.MonkeyPatch, ray_home: Path, tmp_path: Path
) -> None:
    """Attack (on the developer's machine): ``benchmarks.volume --ray`` called ``ray.init()``
    bare, so Ray 2.60 wrote ``~/.ray/auth_token``."""
    seen = _seen_by_ray_init(monkeypatch)
    source = tmp_path / "in.npy"
    np.save(source, np.zeros((2, 64, 64), np.uint16))
    with pytest.raises(_Started):
        volume.measure_ray(tmp_path, source, [1, 2])
    assert seen["mode"] == "token"
    token = Path(seen["token_path"])
    assert not token.is_relative_to(ray_home) and seen["token_file_mode"] == 0o600
    assert seen["kwargs"]["num_cpus"] == 2
    assert not token.exists()  # removed afterwards
    assert not (ray_home / ".ray").exists()
    assert "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ


def test_no_benchmark_starts_ray_but_through_local_ray() -> None:
    """``benchmarks.cluster`` and ``benchmarks.volume`` both start their cluster with
    ``local_ray``: no other ``ray.init`` in the benchmarks."""
    calls = {
        p.name
        for p in BENCHMARKS.rglob("*.py")
        if re.search(r"\bray\.init\(", p.read_text()) and p.name != "local_ray.py"
    }
    assert calls == set()
