"""Real bioimage.io packages at ``../shared/zoo`` (read-only): extra test data that the
development machines and CI have, and a fresh clone has not.

Without the folder, every test that touches it is skipped, saying why (``tests/conftest.py``
calls :func:`uses_zoo` on each collected test): one that names a path under :data:`ZOO` (here,
in a helper or fixture it calls, or in its parameters), or uses a fixture that does. Tests that
need a realistic package without the zoo use the example models the project trains itself
(the ``example_model`` fixture, ``modelrunner.example_models``). ``needs_zoo`` marks a test
explicitly.
"""

from __future__ import annotations

from pathlib import Path
from types import CodeType, FunctionType
from typing import Any

import pytest

ZOO = Path(__file__).resolve().parents[1].parent / "shared" / "zoo"
NUCLEI = ZOO / "unet2d_nuclei_broad"
MULTI = ZOO / "unet2d_multi_tensor"
CAREAMICS_ZIP = ZOO / "careamics_n2v_tiny.zip"

ZOO_PRESENT = NUCLEI.is_dir()
SKIP_REASON = f"no model zoo at {ZOO} (extra test data, not in a fresh clone)"
needs_zoo = pytest.mark.skipif(not ZOO_PRESENT, reason=SKIP_REASON)


def uses_zoo(item: pytest.Item) -> bool:
    """Whether the test ``item`` reads the zoo: its function, the fixtures it uses or the
    helpers of this test suite that they call name a path under :data:`ZOO`, or one of its
    parameters is such a path (or its text)."""
    seen: set[int] = set()
    callspec = getattr(item, "callspec", None)
    if callspec is not None and any(_holds_zoo_path(v) for v in callspec.params.values()):
        return True
    function = getattr(item, "function", None)
    if isinstance(function, FunctionType) and _refers_to_zoo(function, seen):
        return True
    fixtures = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    return any(
        isinstance(d.func, FunctionType) and _refers_to_zoo(d.func, seen)
        for defs in fixtures.values()
        for d in defs
    )


def _holds_zoo_path(value: Any) -> bool:
    if isinstance(value, Path):
        return value == ZOO or ZOO in value.parents
    if isinstance(value, str):  # a parameter such as str(NUCLEI / "weights.onnx")
        return str(ZOO) in value
    if isinstance(value, (tuple, list)):
        return any(_holds_zoo_path(v) for v in value)
    return False


def _refers_to_zoo(function: FunctionType, seen: set[int]) -> bool:
    if id(function) in seen:
        return False
    seen.add(id(function))
    return _code_refers_to_zoo(function.__code__, function.__globals__, seen)


def _code_refers_to_zoo(code: CodeType, scope: dict[str, Any], seen: set[int]) -> bool:
    for name in code.co_names:
        value = scope.get(name)
        if _holds_zoo_path(value):
            return True
        # this suite's own helpers; pytest and the project are no test data
        if (
            isinstance(value, FunctionType)
            and value.__module__.startswith("tests")
            and _refers_to_zoo(value, seen)
        ):
            return True
    # nested functions, lambdas and comprehensions have code objects of their own
    return any(
        isinstance(const, CodeType) and _code_refers_to_zoo(const, scope, seen)
        for const in code.co_consts
    )
