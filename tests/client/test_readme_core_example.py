"""The README's "Use it from bioimageio.core" example runs as written, against the session's
server (its address put in for ``localhost:50051``), in a folder laid out like a fresh clone
(``tests/readme_checkout.py``): the example model where the README's first command writes it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from modelrunner.serving import RunningServer
from tests.readme_checkout import blocks, fresh_clone, promised, run_python, section

SECTION = "## Use it from bioimageio.core"


def readme_example() -> str:
    return blocks(section(SECTION), "python")[0]


def test_the_readme_example_runs_as_written(
    server: RunningServer, example_model: Callable[[str], Path], tmp_path: Path
) -> None:
    code = readme_example()
    assert len(code.strip().splitlines()) <= 6
    checkout = fresh_clone(tmp_path, example_model)
    printed = run_python(code, checkout, server.address).splitlines()
    assert printed == promised(code)
