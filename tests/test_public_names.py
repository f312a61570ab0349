"""The names a user imports stay where they are (httpx's ``tests/test_exported_members.py``):
``modelrunner.client.__all__`` is pinned, and every ``from modelrunner... import ...`` that the
README, the docs and the examples show is imported as written. A rename or a move that would
break a user's code fails here first; adding a name to the client means adding it here too."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

import modelrunner.client

ROOT = Path(__file__).resolve().parents[1]

CLIENT_ALL = [
    "USE_CLIENT_DEFAULT",
    "AsyncFrameStream",
    "AsyncModelRunnerClient",
    "AxisSpec",
    "CancelledError",
    "CorruptModelError",
    "DataDependentSize",
    "DeadlineExceededError",
    "DeviceNotAvailableError",
    "FailedPreconditionError",
    "FrameError",
    "FrameStream",
    "InternalError",
    "InvalidArgumentError",
    "InvalidPackageError",
    "InvalidSourceError",
    "InvalidTensorError",
    "LoadInfo",
    "ModelInUseError",
    "ModelInfo",
    "ModelNotFoundError",
    "ModelRunnerClient",
    "ModelRunnerError",
    "NotFoundError",
    "ParameterizedSize",
    "PredictRequest",
    "Progress",
    "RemovedModel",
    "ResourceExhaustedError",
    "RuntimeInfo",
    "ServerInfo",
    "ServerShuttingDownError",
    "SizeReference",
    "SourceNotFoundError",
    "TensorSpec",
    "UnavailableError",
    "ValidationReport",
    "VolumeResult",
    "create_prediction_pipeline",
]

USER_IMPORTS = {
    "modelrunner.errors": [
        "ModelRunnerError",
        "NotFoundError",
        "ModelNotFoundError",
        "SourceNotFoundError",
        "InvalidArgumentError",
        "InvalidSourceError",
        "InvalidPackageError",
        "InvalidTensorError",
        "FailedPreconditionError",
        "ModelInUseError",
        "CorruptModelError",
        "DeviceNotAvailableError",
        "DestinationError",
        "UnauthenticatedError",
        "PermissionDeniedError",
        "ResourceExhaustedError",
        "UnavailableError",
        "ServerShuttingDownError",
        "DeadlineExceededError",
        "CancelledError",
        "InternalError",
        "FrameError",
    ],
    "modelrunner.predict_request": ["PredictRequest"],
    "modelrunner.types": ["ModelInfo", "TensorSpec", "Progress", "ProgressCallback"],
    "modelrunner.settings": ["Settings"],
    "modelrunner.synthetic_nuclei": ["camera_counts", "draw_nuclei"],
    "modelrunner.runtime_client": ["RouteCache", "RuntimeClient", "Route"],
    "modelrunner.entry_server": ["ControlServer", "start_control_server", "ControlPlane"],
}
"""Names the docs show or an embedding user needs, beyond the client's."""

_IMPORT = re.compile(r"^\s*from (modelrunner(?:\.\w+)*) import ([\w, ]+?)\s*(?:#.*)?$", re.M)
_MODULE = re.compile(r"^\s*import (modelrunner(?:\.\w+)*)\s*(?:#.*)?$", re.M)
_DOCUMENTS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").rglob("*.md")),
    *sorted((ROOT / "examples").rglob("*.py")),
    *sorted((ROOT / "examples").rglob("*.md")),
]


def _documented_imports() -> list[tuple[str, str, str]]:
    found = set()
    for path in _DOCUMENTS:
        for module, names in _IMPORT.findall(path.read_text()):
            for name in names.split(","):
                name = name.strip().split(" as ")[0].strip()
                if name:
                    found.add((str(path.relative_to(ROOT)), module, name))
        for module in _MODULE.findall(path.read_text()):
            found.add((str(path.relative_to(ROOT)), module, ""))
    return sorted(found)


def test_the_client_exports_exactly_these_names() -> None:
    assert sorted(modelrunner.client.__all__) == sorted(CLIENT_ALL)
    missing = [n for n in CLIENT_ALL if not hasattr(modelrunner.client, n)]
    assert missing == []


def test_the_client_errors_are_the_hierarchys() -> None:
    """One hierarchy: the client hands out the classes of ``modelrunner.errors``, not copies."""
    import modelrunner.errors as errors

    for name in CLIENT_ALL:
        if name.endswith("Error"):
            assert getattr(modelrunner.client, name) is getattr(errors, name), name


@pytest.mark.parametrize(
    ("module", "name"), [(m, n) for m, names in USER_IMPORTS.items() for n in names]
)
def test_a_name_users_import_is_there(module: str, name: str) -> None:
    assert hasattr(importlib.import_module(module), name)


def test_the_documents_show_imports() -> None:
    """The scan below finds the README's and the examples' imports (it checks something)."""
    shown = {(m, n) for _, m, n in _documented_imports()}
    assert ("modelrunner.client", "ModelRunnerClient") in shown


@pytest.mark.parametrize(("document", "module", "name"), _documented_imports())
def test_every_import_the_documents_show_works(document: str, module: str, name: str) -> None:
    imported = importlib.import_module(module)
    if name:
        assert hasattr(imported, name) or importlib.util.find_spec(f"{module}.{name}") is not None
