"""Tokens on the data plane: the Arrow Flight runtime refuses callers without a known token,
checks roles and workspaces, and a stand-alone runtime registers with its own credential and
checks its callers through the control service. Attacked with raw Flight and gRPC clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from modelrunner import errors
from modelrunner.auth import Role
from modelrunner.client import ModelInfo, ModelRunnerClient
from modelrunner.entry_server.token_store import TokenStore
from modelrunner.serving import RunningServer, start_embedded, start_runtime
from modelrunner.settings import Settings
from modelrunner.transport_errors import from_flight_error
from modelrunner.v1 import control_pb2, control_pb2_grpc, models_pb2, runtime_pb2
from tests.conftest import Secured
from tests.tiny_models import build_onnx_identity

IMAGE = np.arange(64, dtype="float32").reshape(8, 8)


@pytest.fixture(scope="module")
def alice_model(secured: Secured, tmp_path_factory: pytest.TempPathFactory) -> ModelInfo:
    package = build_onnx_identity(tmp_path_factory.mktemp("alice") / "m", name="alice-flight")
    with secured.client("alice") as alice:
        info = alice.add_model(package, upload=True)
        alice.load(info.id)
        return info


def _uri(secured: Secured) -> str:
    assert secured.server.runtime is not None
    return secured.server.runtime.flight_uri


def _headers(token: str) -> flight.FlightCallOptions:
    return flight.FlightCallOptions(
        timeout=30, headers=[(b"authorization", f"Bearer {token}".encode())]
    )


def _error(call: object) -> errors.ModelRunnerError:
    try:
        call()  # type: ignore[operator]
    except (flight.FlightError, pa.ArrowException) as exc:
        return from_flight_error(exc)
    raise AssertionError("the call succeeded")


def _predict_raw(uri: str, model_id: str, options: flight.FlightCallOptions) -> None:
    """An exchange with a command and no input: it must be refused before any input is read."""
    command = runtime_pb2.PredictCommand(model_id=model_id)
    with flight.connect(uri) as raw:
        writer, reader = raw.do_exchange(
            flight.FlightDescriptor.for_command(command.SerializeToString()), options
        )
        with writer:
            reader.read_chunk()


def test_a_flight_call_without_a_token_is_unauthenticated(
    secured: Secured, alice_model: ModelInfo
) -> None:
    with flight.connect(_uri(secured)) as raw, pytest.raises(flight.FlightUnauthenticatedError):
        list(
            raw.do_action(flight.Action("runtime_info", b""), flight.FlightCallOptions(timeout=30))
        )
    error = _error(
        lambda: _predict_raw(_uri(secured), alice_model.id, flight.FlightCallOptions(timeout=30))
    )
    assert isinstance(error, errors.UnauthenticatedError)


def test_a_raw_grpc_client_sees_unauthenticated_on_the_runtime(secured: Secured) -> None:
    """What a client in another language sees: the gRPC status, not UNKNOWN."""
    target = _uri(secured).removeprefix("grpc://")
    with grpc.insecure_channel(target) as channel:
        do_action = channel.unary_stream(
            "/arrow.flight.protocol.FlightService/DoAction",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        # Action { string type = 1; bytes body = 2; }: type "runtime_info"
        action = b"\x0a\x0cruntime_info"
        with pytest.raises(grpc.RpcError) as caught:
            list(do_action(action, timeout=30))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_forged_token_is_unauthenticated_on_the_runtime(secured: Secured) -> None:
    forged = "mr_000000000000_" + "A" * 43
    with flight.connect(_uri(secured)) as raw, pytest.raises(flight.FlightUnauthenticatedError):
        list(raw.do_action(flight.Action("runtime_info", b""), _headers(forged)))


def test_the_owner_predicts_with_its_token(secured: Secured, alice_model: ModelInfo) -> None:
    with secured.client("alice") as alice:
        out = alice.predict(alice_model.id, IMAGE)["output"]
        np.testing.assert_array_equal(out.reshape(8, 8), IMAGE)
        stream = list(alice.predict_stream(alice_model.id, [IMAGE, IMAGE + 1]))
        np.testing.assert_array_equal(stream[1]["output"].reshape(8, 8), IMAGE + 1)


def test_a_model_of_another_workspace_is_not_found_on_the_runtime(
    secured: Secured, alice_model: ModelInfo
) -> None:
    """Bob skips the control service and names Alice's model to the runtime directly."""
    error = _error(
        lambda: _predict_raw(_uri(secured), alice_model.id, _headers(secured.tokens["bob"]))
    )
    assert isinstance(error, errors.NotFoundError)  # a raw client gets the code, NOT_FOUND
    load = runtime_pb2.LoadModelRequest(model_id=alice_model.id).SerializeToString()
    with flight.connect(_uri(secured)) as raw:
        error = _error(
            lambda: list(
                raw.do_action(flight.Action("load_model", load), _headers(secured.tokens["bob"]))
            )
        )
    assert isinstance(error, errors.NotFoundError)  # a raw client gets the code, NOT_FOUND


def test_a_writer_cannot_unload_models_on_the_runtime(
    secured: Secured, alice_model: ModelInfo
) -> None:
    """Unloading stops other users' work: only the control service (admin) does it."""
    body = runtime_pb2.UnloadModelRequest(model_id=alice_model.id).SerializeToString()
    with flight.connect(_uri(secured)) as raw:
        error = _error(
            lambda: list(
                raw.do_action(
                    flight.Action("unload_model", body), _headers(secured.tokens["alice"])
                )
            )
        )
    assert isinstance(error, errors.PermissionDeniedError)
    with secured.client("alice") as alice:  # still loaded and serving
        alice.predict(alice_model.id, IMAGE)


def test_a_runtime_credential_cannot_predict(secured: Secured, alice_model: ModelInfo) -> None:
    error = _error(
        lambda: _predict_raw(_uri(secured), alice_model.id, _headers(secured.tokens["runtime"]))
    )
    assert isinstance(error, errors.PermissionDeniedError)


# -- a runtime on its own, registering with the control service ----------------------------------


@pytest.fixture
def control_only(tmp_path: Path) -> Iterator[tuple[RunningServer, TokenStore, Settings]]:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        flight_port=0,
        cache_dir=tmp_path / "control",
        heartbeat_interval_s=1.0,
        grace_period_s=0.5,
        auth=True,
    )
    store = TokenStore(settings.effective_tokens_file)
    with start_embedded(settings, with_runtime=False) as running:
        yield running, store, settings


def _runtime_settings(tmp_path: Path, control: Settings, token: str | None) -> Settings:
    return Settings(
        host="127.0.0.1",
        flight_port=0,
        cache_dir=tmp_path / "runtime",  # not the control's: packages come by FetchModelPackage
        heartbeat_interval_s=1.0,
        auth=True,
        auth_cache_s=0.0,
        runtime_token=token,
    )


def test_a_stand_alone_runtime_serves_with_its_credential_and_honours_revocation(
    control_only: tuple[RunningServer, TokenStore, Settings], tmp_path: Path
) -> None:
    running, store, settings = control_only
    runtime_token, _ = store.create("gpu-1", Role.RUNTIME, "default")
    user_token, _ = store.create("dana", Role.WRITE, "lab-d")
    runtime = start_runtime(_runtime_settings(tmp_path, settings, runtime_token), running.address)
    try:
        package = build_onnx_identity(tmp_path / "m", name="remote-identity")
        with ModelRunnerClient(running.address, token=user_token, timeout=60) as dana:
            info = dana.add_model(package, upload=True)
            np.testing.assert_array_equal(
                dana.predict(info.id, IMAGE)["output"].reshape(8, 8), IMAGE
            )
        store.revoke("dana")
        error = _error(lambda: _predict_raw(runtime.flight_uri, info.id, _headers(user_token)))
        assert isinstance(error, errors.UnauthenticatedError)
    finally:
        runtime.stop()


@pytest.mark.parametrize("role", [None, Role.READ, Role.WRITE])
def test_a_runtime_without_a_runtime_credential_cannot_register(
    control_only: tuple[RunningServer, TokenStore, Settings], tmp_path: Path, role: Role | None
) -> None:
    running, store, settings = control_only
    token = store.create(f"not-a-runtime-{role}", role, "default")[0] if role else None
    expected = errors.InvalidArgumentError if role is None else errors.PermissionDeniedError
    with pytest.raises(expected):
        start_runtime(_runtime_settings(tmp_path, settings, token), running.address)
    assert running.control.runtimes.runtimes() == []


def test_warm_models_of_other_workspaces_are_not_listed(
    secured: Secured, alice_model: ModelInfo
) -> None:
    """Which models are loaded would tell Bob the ids of Alice's models."""
    with secured.client("bob") as bob:
        listed = [m.model_id for r in bob.server_info().runtimes for m in r.loaded_models]
    assert alice_model.id not in listed
    with flight.connect(_uri(secured)) as raw:
        body = list(
            raw.do_action(flight.Action("runtime_info", b""), _headers(secured.tokens["bob"]))
        )
    info = models_pb2.RuntimeInfo.FromString(body[0].body.to_pybytes())
    assert [m.model_id for m in info.loaded_models] == []
    with secured.client("admin") as admin:
        listed = [m.model_id for r in admin.server_info().runtimes for m in r.loaded_models]
    assert alice_model.id in listed


# -- what a runtime is sent cannot be used elsewhere ----------------------------------------------


class _RecordingRuntime(flight.FlightServerBase):  # type: ignore[misc]
    """A fake runtime that keeps the authorization header of every call and fails them."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        recorder = self

        class Record(flight.ServerMiddlewareFactory):  # type: ignore[misc]
            def start_call(self, info: flight.CallInfo, headers: dict[str, list[str]]) -> None:
                recorder.seen += headers.get("authorization", [])

        super().__init__("grpc://127.0.0.1:0", middleware={"record": Record()})

    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> None:
        raise flight.FlightUnavailableError("a fake runtime")


def test_the_token_the_control_service_sends_a_runtime_is_good_for_nothing_else(
    secured: Secured, alice_model: ModelInfo
) -> None:
    """A runtime credential registers a runtime claiming Alice's model, and a model test sends
    it the control service's token: that token opens neither the control service nor any other
    runtime (it was issued for the fake one alone)."""
    fake = _RecordingRuntime()
    stub = control_pb2_grpc.ControlServiceStub(grpc.insecure_channel(secured.address))
    runtime = models_pb2.RuntimeInfo(
        runtime_id="fake-runtime",
        flight_uri=f"grpc://127.0.0.1:{fake.port}",
        available=True,
        loaded_models=[models_pb2.LoadedModel(model_id=alice_model.id, weight_format="onnx")],
    )
    stub.RegisterRuntime(
        control_pb2.RegisterRuntimeRequest(runtime=runtime),
        timeout=10,
        metadata=(("authorization", f"Bearer {secured.tokens['runtime']}"),),
    )
    try:
        with secured.client("admin") as admin:
            admin.test(alice_model.id)  # the fake fails: the real runtime answers
        assert len(fake.seen) == 1
        stolen = fake.seen[0].removeprefix("Bearer ")
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListModels(
                control_pb2.ListModelsRequest(),
                timeout=10,
                metadata=(("authorization", f"Bearer {stolen}"),),
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        body = runtime_pb2.UnloadModelRequest(model_id=alice_model.id).SerializeToString()
        with flight.connect(_uri(secured)) as raw:
            error = _error(
                lambda: list(raw.do_action(flight.Action("unload_model", body), _headers(stolen)))
            )
        assert isinstance(error, errors.PermissionDeniedError)
        assert "issued for another runtime" in error.message
    finally:
        secured.server.control.runtimes.unregister("fake-runtime")
        fake.shutdown()
