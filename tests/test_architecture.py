"""The shape of the code, checked from its source: no import cycles anywhere, each layer of
pyproject's import-linter contract importing only the layers below it (``.ci/layers`` checks the
same contracts with import-linter; these tests read the contract, so the two cannot drift
apart), no protobuf in the runtime's data plane (only at its Flight edge), the control service
importing nothing private of the Python client, and modules of a size a reader can hold.

Imports are read from every module's syntax tree, those inside functions and ``TYPE_CHECKING``
blocks included: a lazy import still ties two modules together.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ("_pb2.py", "_pb2_grpc.py")
MAX_LINES = 450
"""The most lines a module of ``runtime_flight/``, ``client/`` or ``runtime_client/`` has."""
FLIGHT_EDGE = {
    "__init__",
    "server",
    "single_exchange",
    "stream_exchange",
    "session_exchange",
    "exchange_calls",
    "frame_io",
    "flight_actions",
    "exchange_metrics",
    "caller_auth",
    "call_gate",
    "packages",
    "registration",
}
"""The runtime's modules that speak Flight or gRPC (the edge and the process around it); every
other module of ``runtime_flight/`` is the data plane."""
PROTOBUF = ("modelrunner.v1", "modelrunner.open_inference", "modelrunner.converters",
            "modelrunner.predict_command", "google.protobuf", "pyarrow.flight", "grpc")  # fmt: skip


CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _folders() -> dict[Path, str]:
    """Folder -> package, from pyproject's package-dir (so a new folder is walked too)."""
    package_dir = CONFIG["tool"]["setuptools"]["package-dir"]
    return {ROOT / folder: package for package, folder in package_dir.items()}


def _modules() -> dict[str, Path]:
    """Module -> file, subpackages included (``entry_server/packages/...``)."""
    found = {}
    folders = _folders()
    for folder, package in folders.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            # a folder mapped as a package of its own is walked on its own
            if path.name.endswith(GENERATED) or any(
                folder / Path(*parts[:i]) in folders for i in range(1, len(parts))
            ):
                continue
            names = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((package, *names))] = path
    return found


MODULES = _modules()


def _imported(module: str, path: Path) -> Iterator[str]:
    """Every module ``module`` imports, absolute names (a package's submodule where the
    ``from`` names one)."""
    package = module if path.stem == "__init__" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield sub if sub in MODULES else base


GRAPH = {
    module: {m for m in _imported(module, path) if m in MODULES and m != module}
    for module, path in MODULES.items()
}


def _cycles() -> list[list[str]]:
    """The graph's strongly connected components of two modules or more (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_every_part_of_the_package() -> None:
    for module in (
        "modelrunner.errors",
        "modelrunner.runtime_flight.server",
        "modelrunner.runtime_client.client",
        "modelrunner.client._sync",
        "modelrunner.entry_server.control_plane",
        "modelrunner.entry_server.packages.cache",
        "modelrunner.entry_server.edge",
    ):
        assert module in MODULES
    assert "modelrunner.runtime_flight.inference" in GRAPH["modelrunner.runtime_flight.batching"]


def test_no_import_cycles() -> None:
    assert _cycles() == []


def test_the_cycle_finder_finds_a_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Broken on purpose: inference importing the warm pipeline that calls it."""
    looped = {k: set(v) for k, v in GRAPH.items()}
    looped["modelrunner.runtime_flight.inference"].add("modelrunner.runtime_flight.warm_pipeline")
    monkeypatch.setitem(globals(), "GRAPH", looped)
    (cycle,) = _cycles()
    assert "modelrunner.runtime_flight.warm_pipeline" in cycle
    assert "modelrunner.runtime_flight.inference" in cycle


def _layers() -> list[tuple[list[str], bool]]:
    """The layers contract, top layer first: each layer's modules (absolute names) and whether
    they are independent of each other (``a | b``; ``a : b`` may import each other)."""
    (contract,) = [c for c in CONFIG["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    (container,) = contract["containers"]
    return [
        ([f"{container}.{name.strip()}" for name in re.split(r"[|:]", layer)], "|" in layer)
        for layer in contract["layers"]
    ]


LAYERS = _layers()


def _place(module: str) -> tuple[int, str] | None:
    """The layer of ``module`` (0: the top) and the layer's module that holds it."""
    for index, (tops, _) in enumerate(LAYERS):
        for top in tops:
            if module == top or module.startswith(f"{top}."):
                return index, top
    return None


def test_the_layers_contract_places_every_module() -> None:
    assert sorted(m for m in MODULES if m != "modelrunner" and _place(m) is None) == []


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = []
    for module, imported in GRAPH.items():
        if (here := _place(module)) is None:
            continue
        for other in imported:
            there = _place(other)
            if there is None or there[1] == here[1]:
                continue
            if there[0] < here[0] or (there[0] == here[0] and LAYERS[here[0]][1]):
                wrong.append((module, other))
    assert sorted(wrong) == []


def test_the_layer_check_finds_an_upward_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """Broken on purpose: the bottom layer importing the command line."""
    upward = {k: set(v) for k, v in GRAPH.items()}
    upward["modelrunner.errors"].add("modelrunner.app.cli")
    monkeypatch.setitem(globals(), "GRAPH", upward)
    with pytest.raises(AssertionError, match=r"modelrunner\.app\.cli"):
        test_each_layer_imports_only_the_layers_below_it()


@pytest.mark.parametrize(
    "module",
    sorted(
        m
        for m in MODULES
        if m.startswith("modelrunner.runtime_flight.") and m.rsplit(".", 1)[1] not in FLIGHT_EDGE
    ),
)
def test_the_data_plane_takes_no_protobuf(module: str) -> None:
    speaks = sorted(m for m in _imported(module, MODULES[module]) if m.startswith(PROTOBUF))
    assert speaks == [], f"{module} imports {speaks}: protobuf belongs at the Flight edge"


def test_the_control_service_imports_nothing_of_the_python_client() -> None:
    reaching = {
        (module, m)
        for module, imported in GRAPH.items()
        if module.startswith(("modelrunner.entry_server", "modelrunner.runtime_client"))
        for m in imported
        if m.startswith("modelrunner.client")
    }
    assert reaching == set()


@pytest.mark.parametrize("folder", ["runtime_flight", "client", "runtime_client"])
def test_modules_stay_readable(folder: str) -> None:
    long = {
        p.name: n
        for p in (ROOT / folder).glob("*.py")
        if not p.name.endswith(GENERATED) and (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_flight_edge_is_a_dispatcher() -> None:
    """The exchange kinds live in modules of their own; the edge parses, checks and hands on."""
    assert len((ROOT / "runtime_flight" / "server.py").read_text().splitlines()) < 200
