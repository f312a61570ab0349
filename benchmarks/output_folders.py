"""Where benchmark runs write: a folder of their own under ``benchmarks/runs/`` (ignored by git)
unless ``--out`` names one. The tracked figures in ``benchmarks/results/`` change only when a run
is pointed there on purpose (``--out benchmarks/results``), never as a side effect of trying a
command from the README."""

from __future__ import annotations

import time
from pathlib import Path

RUNS = Path(__file__).resolve().parent / "runs"
"""Untracked: every run's own folder."""
TRACKED = Path(__file__).resolve().parent / "results"
"""The figures the READMEs quote: refreshed with ``--out benchmarks/results``."""


def run_folder(name: str) -> Path:
    """``benchmarks/runs/NAME-YYYYMMDD-HHMMSS``: a new folder per run, so two runs can be
    compared."""
    return RUNS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
