"""Tokens, roles and workspaces on the control service, attacked through raw gRPC calls and the
typed client against a real ``modelrunner serve`` with authentication on (``secured``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from modelrunner import errors, types
from modelrunner.auth import Role
from modelrunner.client import ModelInfo, ModelRunnerClient
from modelrunner.entry_server.token_store import TokenStore
from modelrunner.v1 import control_pb2, control_pb2_grpc, models_pb2
from tests.conftest import Secured
from tests.tiny_models import build_onnx_identity

CONTROL_METHODS = list(control_pb2.DESCRIPTOR.services_by_name["ControlService"].methods)


def _raw_call(channel: grpc.Channel, method: Any, metadata: tuple[tuple[str, str], ...]) -> None:
    """Call ``method`` with an empty request, the way any gRPC client in any language can."""
    path = f"/modelrunner.v1.ControlService/{method.name}"
    codec: dict[str, Callable[[bytes], bytes]] = {
        "request_serializer": lambda b: b,
        "response_deserializer": lambda b: b,
    }
    if method.client_streaming:
        channel.stream_unary(path, **codec)(iter([b""]), timeout=10, metadata=metadata)
    elif method.server_streaming:
        list(channel.unary_stream(path, **codec)(b"", timeout=10, metadata=metadata))
    else:
        channel.unary_unary(path, **codec)(b"", timeout=10, metadata=metadata)


@pytest.fixture(scope="module")
def raw(secured: Secured) -> grpc.Channel:
    channel = grpc.insecure_channel(secured.address)
    yield channel
    channel.close()


@pytest.fixture(scope="module")
def alice_model(secured: Secured, tmp_path_factory: pytest.TempPathFactory) -> ModelInfo:
    package = build_onnx_identity(tmp_path_factory.mktemp("alice") / "m", name="alice-identity")
    with secured.client("alice") as alice:
        return alice.add_model(package, upload=True)


def _status(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()  # type: ignore[no-any-return]


@pytest.mark.parametrize("method", CONTROL_METHODS, ids=lambda m: m.name)
def test_every_control_method_refuses_a_caller_without_a_token(
    raw: grpc.Channel, method: Any
) -> None:
    assert _status(lambda: _raw_call(raw, method, ())) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    "header",
    [
        "Bearer mr_000000000000_" + "A" * 43,  # well formed, never issued
        "Bearer not-a-token",
        "Basic YWRtaW46YWRtaW4=",  # another scheme
        "Bearer ",
        "mr_000000000000_" + "A" * 43,  # no scheme
    ],
    ids=["unknown", "malformed", "basic-auth", "empty", "no-scheme"],
)
def test_a_forged_or_malformed_token_is_unauthenticated(raw: grpc.Channel, header: str) -> None:
    stub = control_pb2_grpc.ControlServiceStub(raw)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListModels(
            control_pb2.ListModelsRequest(), timeout=10, metadata=(("authorization", header),)
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_checks_and_reflection_need_no_token(raw: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(raw).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(raw)
    answers = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    names = {s.name for s in next(iter(answers)).list_services_response.service}
    assert "modelrunner.v1.ControlService" in names


def test_the_typed_client_raises_unauthenticated_without_a_token(secured: Secured) -> None:
    with secured.client(None) as anonymous, pytest.raises(errors.UnauthenticatedError) as caught:
        anonymous.list_models()
    assert "requires a token" in caught.value.message


def test_a_revoked_token_stops_working_at_once(secured: Secured) -> None:
    token, _ = secured.store.create("short-lived", Role.READ, "lab-a")
    with ModelRunnerClient(secured.address, token=token, timeout=30) as client:
        client.list_models()
        secured.store.revoke("short-lived")
        with pytest.raises(errors.UnauthenticatedError):
            client.list_models()


def test_a_reader_cannot_add_upload_or_remove(secured: Secured, alice_model: ModelInfo) -> None:
    with secured.client("alan") as alan:
        assert alice_model.id in {m.id for m in alan.list_models()}
        with pytest.raises(errors.PermissionDeniedError) as caught:
            alan.add_model(b"not even a zip")
        assert caught.value.details["needed_role"] == "write"
        with pytest.raises(errors.PermissionDeniedError):
            alan.remove_model(alice_model.id)


def test_a_writer_cannot_publish(secured: Secured, alice_model: ModelInfo) -> None:
    with secured.client("alice") as alice, pytest.raises(errors.PermissionDeniedError):
        alice.publish_model(alice_model.id)


@pytest.mark.parametrize("name", ["alan", "alice"])
def test_a_user_token_cannot_register_a_runtime(
    secured: Secured, raw: grpc.Channel, name: str
) -> None:
    """A fake runtime claiming a model would receive other users' images."""
    stub = control_pb2_grpc.ControlServiceStub(raw)
    request = control_pb2.RegisterRuntimeRequest(
        runtime=models_pb2.RuntimeInfo(runtime_id="evil", flight_uri="grpc://127.0.0.1:9")
    )
    code = _status(
        lambda: stub.RegisterRuntime(
            request, timeout=10, metadata=(("authorization", f"Bearer {secured.tokens[name]}"),)
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_a_runtime_id_cannot_be_taken_over_by_another_credential(
    secured: Secured, raw: grpc.Channel
) -> None:
    """The embedded runtime registered under its own in-memory credential; a runtime token
    from the token file may not re-register it elsewhere."""
    assert secured.server.runtime is not None
    runtime_id = secured.server.runtime.server.service.runtime_id
    stub = control_pb2_grpc.ControlServiceStub(raw)
    request = control_pb2.RegisterRuntimeRequest(
        runtime=models_pb2.RuntimeInfo(runtime_id=runtime_id, flight_uri="grpc://127.0.0.1:9")
    )
    metadata = (("authorization", f"Bearer {secured.tokens['runtime']}"),)
    with pytest.raises(grpc.RpcError) as caught:
        stub.RegisterRuntime(request, timeout=10, metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "registered by another credential" in (caught.value.details() or "")
    routes = secured.server.control.runtimes.runtimes()
    assert [r.flight_uri for r in routes if r.runtime_id == runtime_id] != ["grpc://127.0.0.1:9"]


def test_a_runtime_token_cannot_use_models(secured: Secured) -> None:
    with secured.client("runtime") as runtime, pytest.raises(errors.PermissionDeniedError):
        runtime.list_models()


@pytest.mark.parametrize("name", ["alan", "alice"])
def test_check_caller_and_package_downloads_are_for_runtimes_only(
    secured: Secured, raw: grpc.Channel, alice_model: ModelInfo, name: str
) -> None:
    """A user must not learn other tokens' holders, nor download whole stored packages."""
    stub = control_pb2_grpc.ControlServiceStub(raw)
    metadata = (("authorization", f"Bearer {secured.tokens[name]}"),)
    check = control_pb2.CheckCallerRequest(token=secured.tokens["bob"])
    assert (
        _status(lambda: stub.CheckCaller(check, timeout=10, metadata=metadata))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    fetch = control_pb2.FetchModelPackageRequest(model_id=alice_model.id)
    assert (
        _status(lambda: list(stub.FetchModelPackage(fetch, timeout=10, metadata=metadata)))
        == grpc.StatusCode.PERMISSION_DENIED
    )


def test_models_of_another_workspace_are_as_unknown_as_missing_ones(
    secured: Secured, alice_model: ModelInfo
) -> None:
    with secured.client("bob") as bob:
        assert alice_model.id not in {m.id for m in bob.list_models()}
        calls: list[Callable[[str], object]] = [
            bob.describe,
            bob.remove_model,
            bob.test,
            lambda ref: bob.predict(ref, {"input": np.zeros((8, 8), "float32")}),
        ]
        for call in calls:
            with pytest.raises(errors.ModelNotFoundError) as hidden:
                call(alice_model.id)
            with pytest.raises(errors.ModelNotFoundError) as missing:
                call("f" * 64)
            assert hidden.value.message == missing.value.message.replace("f" * 64, alice_model.id)
    with secured.client("alice") as alice:
        assert alice.describe(alice_model.id).workspaces == ("lab-a",)


def test_a_published_model_is_visible_everywhere_but_stays_its_workspaces(
    secured: Secured, tmp_path: Path
) -> None:
    package = build_onnx_identity(tmp_path / "m", name="published-identity")
    with secured.client("alice") as alice, secured.client("bob") as bob:
        info = alice.add_model(package, upload=True)
        with secured.client("admin") as admin:
            admin.publish_model(info.id)
        seen = bob.describe(info.id)
        assert seen.published and seen.workspaces == ()  # which workspace holds it is theirs
        with pytest.raises(errors.PermissionDeniedError):
            bob.remove_model(info.id)  # published from lab-a: not bob's to remove
        with secured.client("admin") as admin:
            admin.publish_model(info.id, published=False)
        with pytest.raises(errors.ModelNotFoundError):
            bob.describe(info.id)
        alice.remove_model(info.id)


def test_removing_a_shared_package_from_one_workspace_keeps_it_for_the_other(
    secured: Secured, tmp_path: Path
) -> None:
    package = build_onnx_identity(tmp_path / "m", name="shared-identity")
    with secured.client("alice") as alice, secured.client("bob") as bob:
        info = alice.add_model(package, upload=True)
        assert bob.add_model(package, upload=True).id == info.id
        assert bob.describe(info.id).workspaces == ("lab-b",)
        with secured.client("admin") as admin:
            assert set(admin.describe(info.id).workspaces) == {"lab-a", "lab-b"}
        alice.remove_model(info.id)
        with pytest.raises(errors.ModelNotFoundError):
            alice.describe(info.id)
        assert bob.describe(info.id).workspaces == ("lab-b",)
        bob.remove_model(info.id)
    with secured.client("admin") as admin, pytest.raises(errors.ModelNotFoundError):
        admin.describe(info.id)


def test_a_broken_token_file_accepts_no_token(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    token, _ = store.create("x", Role.ADMIN, "default")
    assert store.authenticate(token) is not None
    (tmp_path / "tokens.json").write_text("{ not json")
    assert store.authenticate(token) is None


def test_the_token_file_keeps_only_hashes_and_only_its_owner_reads_it(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "auth" / "tokens.json")
    token, record = store.create("carol", Role.WRITE, "lab-c")
    text = store.path.read_text()
    assert token not in text and token.split("_")[-1] not in text
    assert record.sha256 in text
    assert store.path.stat().st_mode & 0o077 == 0


def test_anonymous_callers_are_admins_when_authentication_is_off(
    client: Any, tiny: Callable[[str], Path]
) -> None:
    """Loopback without tokens, as before: every model is visible, in workspace default."""
    info: types.ModelInfo = client.add_model(tiny("onnx"))
    assert client.describe(info.id).workspaces == ("default",)


def test_a_malformed_request_without_a_token_is_unauthenticated_not_parsed(
    raw: grpc.Channel,
) -> None:
    """The token is checked from the metadata before the body is read, on every kind of call."""
    garbage = b"\xff\xff\xff\xff"
    codec: dict[str, Callable[[bytes], bytes]] = {
        "request_serializer": lambda b: b,
        "response_deserializer": lambda b: b,
    }
    path = "/modelrunner.v1.ControlService/"
    calls: list[Callable[[], object]] = [
        lambda: raw.unary_unary(path + "DescribeModel", **codec)(garbage, timeout=10),
        lambda: list(raw.unary_stream(path + "AddModel", **codec)(garbage, timeout=10)),
        lambda: raw.stream_unary(path + "UploadPackage", **codec)(iter([garbage]), timeout=10),
    ]
    for call in calls:
        assert _status(call) == grpc.StatusCode.UNAUTHENTICATED


def test_a_prefix_or_alias_resolves_among_the_callers_models_only(
    secured: Secured, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two models share a prefix (or an alias Bob copied from Alice's description): each
    workspace resolves it to its own model, with no ambiguity naming the other's."""
    registry = secured.server.control.registry
    ours, theirs = "abcdef" + "0" * 58, "abcdef" + "1" * 58
    monkeypatch.setattr(registry.cache, "ids_with_prefix", lambda prefix: [ours, theirs])
    monkeypatch.setattr(registry.cache, "ids_with_alias", lambda alias: [ours, theirs])
    mine = {ours}.__contains__
    assert registry.resolve("abcdef", mine) == ours
    assert registry.resolve("affable-shark", mine) == ours
    with pytest.raises(errors.InvalidArgumentError, match="ambiguous"):
        registry.resolve("abcdef")  # an admin sees both
    with pytest.raises(errors.ModelNotFoundError):
        registry.resolve("abcdef", lambda _: False)


def _set_role(store: TokenStore, name: str, role: str) -> None:
    """Edit the token file by hand, as an admin might (atomically, as the server writes it)."""
    data = json.loads(store.path.read_text())
    for record in data["tokens"]:
        if record["name"] == name:
            record["role"] = role
    edited = store.path.with_name("tokens.edited")
    edited.write_text(json.dumps(data))
    edited.replace(store.path)


@pytest.mark.parametrize("role", ["superuser", "control", ""])
def test_a_token_with_an_unknown_role_is_refused_at_load_with_a_log_line(
    secured: Secured, raw: grpc.Channel, caplog: pytest.LogCaptureFixture, role: str
) -> None:
    """Attack: a hand-edited token file names a role the server does not have (or the control
    service's own). It answered UNKNOWN "Error in service handler!" on every call."""
    name = f"odd-role-{role or 'empty'}"
    token, _ = secured.store.create(name, Role.READ, "lab-a")
    _set_role(secured.store, name, role)
    stub = control_pb2_grpc.ControlServiceStub(raw)
    metadata = (("authorization", f"Bearer {token}"),)
    with caplog.at_level(logging.ERROR, logger="modelrunner.entry_server.token_store"):
        for _ in range(3):
            code = _status(
                lambda: stub.ListModels(
                    control_pb2.ListModelsRequest(), timeout=10, metadata=metadata
                )
            )
            assert code == grpc.StatusCode.UNAUTHENTICATED
    logged = [r.getMessage() for r in caplog.records if "unknown role" in r.getMessage()]
    assert len(logged) == 1, logged  # once, when the file was read
    assert f"token {name!r}" in logged[0] and f"unknown role {role!r}" in logged[0]
    # the other tokens work, and an edit of the file keeps the record for the admin to mend
    with secured.client("alice") as alice:
        alice.list_models()
    secured.store.revoke(secured.store.create(f"{name}-next", Role.READ, "lab-a")[1].name)
    assert name in secured.store.path.read_text()
    _set_role(secured.store, name, "read")
    with ModelRunnerClient(secured.address, token=token, timeout=30) as mended:
        mended.list_models()
    secured.store.revoke(name)
