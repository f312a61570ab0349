"""``examples/probabilities_to_labels.py``: connected components of the thresholded map, specks
dropped, and touching nuclei split by ``--split``; what it and the README's "From probabilities
to labels" import comes with the install they name. (The README runs the script on
``modelrunner predict``'s output: ``tests/common/test_readme_cli.py``.)"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import tomllib

from tests.readme_checkout import blocks, section

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "probabilities_to_labels.py"
DISTRIBUTIONS = {
    "skimage": "scikit-image",
    "scipy": "scipy",
    "numpy": "numpy",
    "tifffile": "tifffile",
}
"""The distribution each third-party module the labelling steps import comes from."""


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


def _imported(source: str) -> set[str]:
    """The third-party top-level modules ``source`` imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "modelrunner"}


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in requirements}


def test_what_the_labelling_steps_import_comes_with_the_examples_extra() -> None:
    """scikit-image arrived only through careamics in ``[runtime]``: a client install, or a
    runtime without careamics, could not run the script or the README's section."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = _requirement_names(project["dependencies"] + extras["examples"])
    readme = "".join(blocks(section("### From probabilities to labels"), "python"))
    for source in (SCRIPT.read_text(), readme):
        for module in sorted(_imported(source)):
            assert DISTRIBUTIONS.get(module, module) in declared, module
    assert "examples" in extras["all"][0]
    assert 'pip install -e ".[examples]"' in section("### From probabilities to labels")
