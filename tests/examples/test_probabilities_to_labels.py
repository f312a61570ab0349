"""``examples/probabilities_to_labels.py``: connected components of the thresholded map, specks
dropped, and touching nuclei split by ``--split``. (The README runs the script on
``modelrunner predict``'s output: ``tests/common/test_readme_cli.py``.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "probabilities_to_labels.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("probabilities_to_labels", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _discs(centres: list[tuple[int, int]], radius: float, side: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side]
    inside = np.zeros((side, side), bool)
    for cy, cx in centres:
        inside |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    return np.where(inside, 0.9, 0.1).astype(np.float32)


def test_two_touching_nuclei_are_one_component_unless_split() -> None:
    script = _script()
    touching = _discs([(32, 24), (32, 39)], radius=8)
    assert script.labels_of(touching).max() == 1
    split = script.labels_of(touching, split=True)
    assert split.max() == 2 and split.dtype == np.uint16


def test_specks_are_dropped_and_apart_nuclei_counted() -> None:
    script = _script()
    probability = _discs([(10, 10), (50, 50)], radius=5)
    probability[30, 30] = 0.99  # one pixel: a speck
    labels = script.labels_of(probability, min_size=8)
    assert labels.max() == 2 and labels[30, 30] == 0
    assert script.labels_of(probability, threshold=None).max() == 2  # Otsu's threshold
