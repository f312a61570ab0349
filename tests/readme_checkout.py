"""Running the README's blocks as written, in a folder laid out like a fresh clone: the
repository's ``examples/`` where they are, no ``../shared`` beside it, and the session's server
standing in for ``modelrunner serve`` (its address in ``$MODELRUNNER_SERVER``, and in place of
``localhost:50051`` in Python blocks).

The example models the README's first command writes (``modelrunner example-model nuclei
models/nuclei``) are trained once per test session (the ``example_model`` fixture) and copied
into the checkout, so that command, run as written, finds its package there already and says
so; ``tests/common/test_example_models.py`` runs the command's training path.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def section(title: str, document: Path = README) -> str:
    """The text of the section headed ``title`` (``## ...`` or ``### ...``), up to the next
    heading of the same or a higher level."""
    text = document.read_text()
    start = text.index(f"\n{title}\n") + 1
    level = len(title.split(" ", 1)[0])
    end = re.search(rf"\n#{{2,{level}}} ", text[start + len(title) :])
    return text[start : start + len(title) + end.start() if end else None]


def blocks(text: str, language: str) -> list[str]:
    found = re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)
    assert found, f"no {language} block in {text[:60]!r}"
    return found


def fresh_clone(root: Path, example_model: Callable[[str], Path]) -> Path:
    """``root/modelrunner``, laid out like a clone, with ``models/nuclei`` and
    ``models/nuclei3d`` as ``modelrunner example-model`` writes them; no ``root/shared``."""
    checkout = root / "modelrunner"
    checkout.mkdir()
    (checkout / "examples").symlink_to(REPO / "examples")
    for kind in ("nuclei", "nuclei3d"):
        shutil.copytree(example_model(kind), checkout / "models" / kind)
    assert not (root / "shared").exists()
    return checkout


def shell_env(server_address: str, **more: str) -> dict[str, str]:
    """The environment a person's shell has after ``. .venv/bin/activate``, with the session's
    server as the default one."""
    env = dict(
        os.environ,
        MODELRUNNER_SERVER=server_address,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        **more,
    )
    env.pop("MODELRUNNER_ADDRESS", None)
    return env


def run_bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_python(code: str, cwd: Path, server_address: str) -> str:
    """Run a Python block in ``cwd`` with the session's server for ``localhost:50051``; what it
    printed."""
    assert "localhost:50051" in code
    printed = io.StringIO()
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(code.replace("localhost:50051", server_address), "README.md", "exec"), {})
    finally:
        os.chdir(previous)
    return printed.getvalue()


def promised(code: str) -> list[str]:
    """What the block's ``print(...)  # ...`` lines say they print, in order: the comment, or
    the quoted text that ends it (``# bioimageio.core's model test: "passed"``)."""
    said = []
    for line in code.splitlines():
        if not (line.strip().startswith("print(") and "  # " in line):
            continue
        comment = line.split("  # ", 1)[1].strip()
        quoted = re.search(r'"([^"]*)"$', comment)
        said.append(quoted.group(1) if quoted else comment)
    return said
