"""One definition per name: no two modules of the package define the same public name (a class,
a type alias, a constant or a function at module level), and every exception class a caller can
meet is in the one hierarchy, ``modelrunner.errors``. Two things under one name make a reader
ask which one an import means; a name defined twice drifts apart.

Read from every module's syntax tree (generated protobuf code left out). A name may stay twice
only in :data:`ALLOWED`, with the reason.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ("_pb2.py", "_pb2_grpc.py")

ALLOWED: dict[str, str] = {
    "remove_model": "one Flight action from its two sides: runtime_client.actions asks a runtime "
    "to remove a model, runtime_flight.model_removal does it",
    "input_halo": "one rule of bioimage.io from two inputs: the runtime reads it off the "
    "description, the client off ModelInfo (the client imports no bioimageio.core)",
    "referenced_files": "description_jobs runs descriptions' function in a worker process, "
    "under the same name (the registry names the job it asks for)",
}
INTERNAL_SIGNALS: dict[str, str] = {
    "IndexUnreadableError": "the cache index tells the cache to rebuild it; never leaves it",
    "AddressNotAllowed": "the fetch policy tells a download it refused an address; the download "
    "raises InvalidSourceError",
    "UnreadableYamlError": "reading a description tells validation the file is not YAML; "
    "validation reports it",
    "Unsupported": "a device step tells its caller to fall back to bioimageio.core's own",
}
"""Exception classes outside ``modelrunner.errors``: signals between two modules of one part,
each caught there and never seen by a caller (who meets a ModelRunnerError)."""
_NOT_DEFINITIONS = {"__all__", "logger"}


def _definitions(tree: ast.Module) -> Iterator[tuple[str, ast.stmt]]:
    """The module-level public names a module defines (once each: overloads are one)."""
    seen = set()
    for node in tree.body:
        names: list[str] = []
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names = [node.name]
        elif isinstance(node, ast.Assign) and not _is_type_variable(node.value):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names = [node.target.id]
        for name in names:
            if name.startswith("_") or name in _NOT_DEFINITIONS or name in seen:
                continue
            seen.add(name)
            yield name, node


def _is_type_variable(value: ast.expr) -> bool:
    return (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Name)
        and value.func.id in ("TypeVar", "ParamSpec")
    )


def _trees() -> Iterator[tuple[str, ast.Module]]:
    """Every module of the package, by name, from pyproject's package-dir (subpackages too)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = {ROOT / f: p for p, f in config["tool"]["setuptools"]["package-dir"].items()}
    for folder, package in sorted(folders.items()):
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if path.name.endswith(GENERATED) or any(
                folder / Path(*parts[:i]) in folders for i in range(1, len(parts))
            ):
                continue  # generated, or in a folder mapped as a package of its own
            names = parts[:-1] if parts[-1] == "__init__" else parts
            yield ".".join((package, *names)), ast.parse(path.read_text())


TREES = dict(_trees())


def _defined_by() -> dict[str, list[str]]:
    where: dict[str, list[str]] = defaultdict(list)
    for module, tree in TREES.items():
        for name, _ in _definitions(tree):
            where[name].append(module)
    return where


def test_no_two_modules_define_the_same_public_name() -> None:
    twice = {
        name: modules
        for name, modules in _defined_by().items()
        if len(modules) > 1 and name not in ALLOWED
    }
    assert twice == {}


def test_the_allowed_names_are_still_defined_twice() -> None:
    """An allowance no longer needed goes (it would let the name slip back in)."""
    where = _defined_by()
    assert {name: where.get(name) for name in ALLOWED if len(where.get(name, [])) < 2} == {}


def test_the_check_finds_a_name_defined_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Broken on purpose: the runtime defining a ``TensorSpec`` of its own again."""
    twice = dict(TREES)
    twice["modelrunner.runtime_flight.fake"] = ast.parse("class TensorSpec:\n    pass\n")
    monkeypatch.setitem(globals(), "TREES", twice)
    assert _defined_by()["TensorSpec"] == [
        "modelrunner.types",
        "modelrunner.runtime_flight.fake",
    ]
    with pytest.raises(AssertionError):
        test_no_two_modules_define_the_same_public_name()


def _exception_classes() -> dict[str, str]:
    """Class -> module, for every class that derives (by name) from an exception class."""
    bases: dict[str, tuple[str, list[str]]] = {}
    for module, tree in TREES.items():
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                names = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
                bases[node.name] = (module, names)

    def is_exception(name: str, depth: int = 0) -> bool:
        if name in ("Exception", "BaseException") or name.endswith(("Error", "Exception")):
            return True
        return (
            depth < 10 and name in bases and any(is_exception(b, depth + 1) for b in bases[name][1])
        )

    return {
        name: module
        for name, (module, parents) in bases.items()
        if any(is_exception(b) for b in parents)
    }


def test_every_error_a_caller_meets_is_in_the_one_hierarchy() -> None:
    outside = {
        name: module
        for name, module in _exception_classes().items()
        if module != "modelrunner.errors" and not name.startswith("_")
    }
    assert sorted(outside) == sorted(INTERNAL_SIGNALS)


def test_the_hierarchy_walk_sees_the_errors() -> None:
    found = _exception_classes()
    assert found["FrameError"] == "modelrunner.errors"
    assert found["InvalidTensorError"] == "modelrunner.errors"
