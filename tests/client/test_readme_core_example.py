"""The README's "Use it from bioimageio.core" example runs as written, against the session's
server (its address put in for ``localhost:50051``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modelrunner.serving import RunningServer
from tests.zoo import needs_zoo

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Use it from bioimageio.core"


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "no python block in the section"
    return match.group(1)


@needs_zoo
def test_the_readme_example_runs_as_written(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = readme_example()
    assert "localhost:50051" in code
    assert len(code.strip().splitlines()) <= 6
    monkeypatch.chdir(ROOT)  # the example's paths are relative to the checkout
    exec(compile(code.replace("localhost:50051", server.address), "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip()
    promised = code.strip().splitlines()[-1].split("# ", 1)[1]
    assert printed == promised
