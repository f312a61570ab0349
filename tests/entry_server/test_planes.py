"""Each gRPC servicer holds only its plane (MLServer's ``InferenceServicer(data_plane)``): the
control servicer calls :class:`ControlPlane`, the Open Inference servicer calls
:class:`InferencePlane`, and the process wiring asks the plane for credentials instead of
reaching its authenticator. The planes are called here without gRPC, as an embedded caller
would."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelrunner import errors
from modelrunner.auth import Role
from modelrunner.entry_server import ControlPlane, InferencePlane, ModelRegistry, RuntimeDirectory
from modelrunner.entry_server.edge.control_servicer import ControlServicer
from modelrunner.entry_server.edge.open_inference import OpenInferenceServicer
from tests.entry_server.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]
SERVICERS = [
    ROOT / "entry_server" / "edge" / "control_servicer.py",
    ROOT / "entry_server" / "edge" / "open_inference.py",
    ROOT / "cluster" / "ray_serving.py",
]
PLANE_PARTS = {"registry", "runtimes", "authenticator", "_authenticator", "access", "cache"}
"""What a plane owns: a servicer (or the wiring around it) asks the plane, never these."""


@pytest.fixture
def control(tmp_path: Path) -> Iterator[ControlPlane]:
    settings = make_settings(tmp_path / "cache", auth=True, max_concurrent_infers=3, auth_cache_s=0)
    runtimes = RuntimeDirectory(settings)
    registry = ModelRegistry(settings, loaded_models=runtimes.loaded_model_ids)
    yield ControlPlane(settings, registry, runtimes)
    registry.close()


@pytest.mark.parametrize("path", SERVICERS, ids=lambda p: p.name)
def test_a_servicer_reaches_nothing_behind_its_plane(path: Path) -> None:
    reaching = sorted(
        f"{path.name}:{node.lineno} .{node.attr}"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in PLANE_PARTS
    )
    # the cluster's wiring may list and drop the runtimes it started (plane.runtimes)
    if path.name == "ray_serving.py":
        reaching = [r for r in reaching if not r.endswith(".runtimes")]
    assert reaching == []


def test_the_servicers_take_their_plane_alone(control: ControlPlane) -> None:
    inference = InferencePlane(control)
    try:
        assert ControlServicer(control)._limits is control.limits
        assert OpenInferenceServicer(inference)._limits is inference.limits
        assert inference.limits.infers.limit == 3  # from the settings, through the plane
    finally:
        inference.close()


def test_the_plane_issues_the_credential_of_the_runtimes_it_starts(
    control: ControlPlane,
) -> None:
    token = control.issue_runtime_token("embedded-runtime")
    assert token is not None
    identity, model_id = control.check_caller(token)
    assert (identity.name, identity.role, model_id) == ("embedded-runtime", Role.RUNTIME, "")


def test_without_authentication_there_is_no_credential_to_issue(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "cache")
    registry = ModelRegistry(settings)
    try:
        plane = ControlPlane(settings, registry, RuntimeDirectory(settings))
        assert plane.issue_runtime_token("embedded-runtime") is None
        assert plane.recheck("any", "/inference.GRPCInferenceService/ModelStreamInfer") is None
    finally:
        registry.close()


def test_the_inference_plane_answers_without_grpc(control: ControlPlane) -> None:
    inference = InferencePlane(control)
    try:
        assert inference.ready() is False  # no runtime registered
        assert inference.model_ready("0123456789ab") is False
        with pytest.raises(errors.ModelNotFoundError):
            inference.model("0123456789ab")
        with pytest.raises(errors.InvalidArgumentError, match="name the model"):
            inference.model("")
        rights = inference.stream_rights(None, "/inference.GRPCInferenceService/ModelStreamInfer")
        with pytest.raises(errors.UnauthenticatedError):
            rights.check()
    finally:
        inference.close()


ENTRY_SERVER = ROOT / "entry_server"
BELOW_THE_PARTS = {"progress", "limits", "call_limits", "safe_zip"}
"""What the packages and runtimes parts may use of the service beside themselves."""


def _entry_server_imports() -> dict[str, set[str]]:
    """Module (relative to ``modelrunner.entry_server``) -> the entry_server modules it imports."""
    prefix = "modelrunner.entry_server."
    found: dict[str, set[str]] = {}
    for path in sorted(ENTRY_SERVER.rglob("*.py")):
        module = ".".join(path.relative_to(ENTRY_SERVER).with_suffix("").parts)
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(prefix):
                imported.add(node.module.removeprefix(prefix))  # type: ignore[union-attr]
        found[module] = imported
    return found


def test_only_the_wiring_reaches_the_grpc_edge() -> None:
    """The planes are transport free: nothing below the edge imports it, and only the server
    (which builds the parts and passes them to constructors) puts it together."""
    reaching = {
        (module, m)
        for module, imported in _entry_server_imports().items()
        if not module.startswith("edge.") and module != "server"
        for m in imported
        if m == "edge" or m.startswith("edge.")
    }
    assert reaching == set()


@pytest.mark.parametrize("part", ["packages", "runtimes"])
def test_the_parts_import_nothing_above_them(part: str) -> None:
    """Packages and runtimes know nothing of the planes, the registry or the edge."""
    reaching = {
        (module, m)
        for module, imported in _entry_server_imports().items()
        if module.startswith(f"{part}.")
        for m in imported
        if m.split(".")[0] not in (part, *BELOW_THE_PARTS)
    }
    assert reaching == set()
