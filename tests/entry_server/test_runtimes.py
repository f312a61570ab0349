"""Runtimes: registration and heartbeats, routes, forwarded model tests, package fetching."""

from __future__ import annotations

import hashlib
import io
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pyarrow.flight as flight
import pytest

from modelrunner import errors, types
from modelrunner.entry_server import RuntimeDirectory
from modelrunner.entry_server.packages.content_hash import hash_package
from modelrunner.transport_errors import to_flight_error
from modelrunner.v1 import control_pb2, models_pb2, runtime_pb2
from tests.entry_server.conftest import Running, ServerFactory, make_settings
from tests.entry_server.helpers import NUCLEI, add_model, expect_rpc_error


class FakeRuntime(flight.FlightServerBase):
    """Answers ``test_model`` and ``unload_model`` like a runtime, or with a scripted error."""

    def __init__(self) -> None:
        super().__init__("grpc://127.0.0.1:0")
        self.requests: list[control_pb2.TestModelRequest] = []
        self.unloads: list[runtime_pb2.UnloadModelRequest] = []
        self.error: errors.ModelRunnerError | None = None

    @property
    def uri(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def do_action(self, context: Any, action: flight.Action) -> Iterator[bytes]:
        if action.type == "unload_model":
            self.unloads.append(runtime_pb2.UnloadModelRequest.FromString(action.body.to_pybytes()))
            if self.error is not None:
                raise to_flight_error(self.error)
            return iter([runtime_pb2.UnloadModelResponse(unloaded=1).SerializeToString()])
        assert action.type == "test_model"
        request = control_pb2.TestModelRequest.FromString(action.body.to_pybytes())
        self.requests.append(request)
        if self.error is not None:
            raise to_flight_error(self.error)
        report = models_pb2.ValidationReport(
            status="passed", name="bioimageio.core model test", id=request.model_id
        )
        return iter([control_pb2.TestModelResponse(report=report).SerializeToString()])


@pytest.fixture
def runtime() -> Iterator[FakeRuntime]:
    server = FakeRuntime()
    yield server
    server.shutdown()


def _runtime_info(
    runtime_id: str,
    uri: str,
    *,
    loaded: tuple[str, ...] = (),
    formats: tuple[str, ...] = ("onnx", "torchscript"),
    devices: tuple[str, ...] = ("cpu",),
    available: bool = True,
) -> models_pb2.RuntimeInfo:
    return models_pb2.RuntimeInfo(
        runtime_id=runtime_id,
        flight_uri=uri,
        available=available,
        unavailable_reason="" if available else "out of memory",
        weight_formats=list(formats),
        devices=[models_pb2.DeviceInfo(name=d) for d in devices],
        loaded_models=[
            models_pb2.LoadedModel(model_id=m, weight_format="onnx", device=devices[0])
            for m in loaded
        ],
    )


def _register(control: Running, info: models_pb2.RuntimeInfo, cache_dir: str = "") -> Any:
    return control.stub.RegisterRuntime(
        control_pb2.RegisterRuntimeRequest(runtime=info, cache_dir=cache_dir)
    )


def _route(control: Running, model_id: str, **kwargs: str) -> control_pb2.GetModelRouteResponse:
    return control.stub.GetModelRoute(control_pb2.GetModelRouteRequest(model_id=model_id, **kwargs))


def test_registration_answers_interval_and_shared_cache(control: Running, tmp_path: Path) -> None:
    same = _register(control, _runtime_info("a", "grpc://h:1"), cache_dir=str(control.cache_dir))
    assert same.heartbeat_interval_s == control.server.settings.heartbeat_interval_s
    assert same.shared_cache_dir == str(control.cache_dir)
    other = _register(control, _runtime_info("b", "grpc://h:2"), cache_dir=str(tmp_path))
    assert other.shared_cache_dir == ""
    fetching = _register(control, _runtime_info("c", "grpc://h:3"))
    assert fetching.shared_cache_dir == ""
    info = control.stub.GetServerInfo(control_pb2.GetServerInfoRequest())
    assert [r.runtime_id for r in info.runtimes] == ["a", "b", "c"]
    assert info.runtimes[0].devices[0].name == "cpu"
    assert info.runtimes[0].HasField("last_seen_at")


def test_registration_needs_an_id_and_an_address(control: Running) -> None:
    expect_rpc_error(
        lambda: _register(control, _runtime_info("", "grpc://h:1")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidArgumentError",
        "runtime registration without a runtime_id",
    )
    expect_rpc_error(
        lambda: _register(control, _runtime_info("a", "")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidArgumentError",
        "runtime 'a' registered without a flight_uri",
    )


def test_route_without_runtimes_is_unavailable(control: Running) -> None:
    model = add_model(control.stub, path=str(NUCLEI))[0].model
    message = expect_rpc_error(
        lambda: _route(control, model.id),
        grpc.StatusCode.UNAVAILABLE,
        "UnavailableError",
    )
    assert message == "no runtime registered"


def test_route_of_an_unknown_model_is_not_found(control: Running) -> None:
    _register(control, _runtime_info("a", "grpc://h:1"))
    expect_rpc_error(
        lambda: _route(control, "abcdef"),
        grpc.StatusCode.NOT_FOUND,
        "ModelNotFoundError",
        "no model 'abcdef' in the registry",
    )


def test_route_prefers_the_runtime_with_the_model_loaded_then_the_least_loaded(
    control: Running,
) -> None:
    model = add_model(control.stub, path=str(NUCLEI))[0].model
    other = "1" * 64
    _register(control, _runtime_info("busy", "grpc://busy:1", loaded=(other, other[:-1] + "2")))
    _register(control, _runtime_info("idle", "grpc://idle:1"))
    _register(control, _runtime_info("onnx-only", "grpc://onnx:1", formats=("onnx",)))
    route = _route(control, model.id[:8])
    assert route.model_id == model.id
    assert list(route.flight_uris) == ["grpc://idle:1", "grpc://onnx:1", "grpc://busy:1"]
    assert route.runtime_id == "idle"

    _register(control, _runtime_info("busy", "grpc://busy:1", loaded=(model.id, other)))
    route = _route(control, model.id)
    assert route.runtime_id == "busy"
    assert route.flight_uris[0] == "grpc://busy:1"

    route = _route(control, model.id, weight_format="torchscript")
    assert "grpc://onnx:1" not in route.flight_uris


def test_route_filters_by_device_and_weight_format(control: Running) -> None:
    model = add_model(control.stub, path=str(NUCLEI))[0].model
    _register(control, _runtime_info("cpu", "grpc://cpu:1", devices=("cpu",)))
    _register(control, _runtime_info("gpu", "grpc://gpu:1", devices=("cpu", "cuda:0")))
    assert _route(control, model.id, device="cuda").runtime_id == "gpu"
    assert _route(control, model.id, device="cuda:0").runtime_id == "gpu"
    # a device no runtime has is the client's mistake: INVALID_ARGUMENT, not worth a retry
    expect_rpc_error(
        lambda: _route(control, model.id, device="cuda:1"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidArgumentError",
        "unknown device 'cuda:1': no registered runtime has it; devices: cpu, cuda:0",
    )
    expect_rpc_error(
        lambda: _route(control, model.id, weight_format="tensorflow_saved_model_bundle"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidArgumentError",
        f"model {model.id[:12]} has no tensorflow_saved_model_bundle weights; it has onnx, "
        "torchscript",
    )


def test_unavailable_runtimes_are_not_routed_to(control: Running) -> None:
    model = add_model(control.stub, path=str(NUCLEI))[0].model
    _register(control, _runtime_info("sick", "grpc://sick:1", available=False))
    expect_rpc_error(
        lambda: _route(control, model.id),
        grpc.StatusCode.UNAVAILABLE,
        "UnavailableError",
        "no runtime available (sick: out of memory)",
    )


def test_silent_runtimes_are_dropped_after_three_intervals(
    start_server: ServerFactory,
) -> None:
    control = start_server(heartbeat_interval_s=0.2)
    model = add_model(control.stub, path=str(NUCLEI))[0].model
    _register(control, _runtime_info("a", "grpc://a:1"))
    assert _route(control, model.id).runtime_id == "a"
    time.sleep(0.7)  # more than three intervals
    expect_rpc_error(
        lambda: _route(control, model.id),
        grpc.StatusCode.UNAVAILABLE,
        "UnavailableError",
        "no runtime registered",
    )


def test_heartbeats_keep_a_runtime(tmp_path: Path) -> None:
    now = [0.0]
    directory = RuntimeDirectory(
        make_settings(tmp_path, heartbeat_interval_s=10), clock=lambda: now[0]
    )
    info = types.RuntimeInfo(runtime_id="a", flight_uri="grpc://a:1")
    directory.register(info)
    for _ in range(5):
        now[0] += 25  # within three intervals of the last beat
        directory.register(info)
    assert [r.runtime_id for r in directory.runtimes()] == ["a"]
    now[0] += 31
    assert directory.runtimes() == []


def test_test_model_is_forwarded_to_a_runtime(control: Running, runtime: FakeRuntime) -> None:
    model = add_model(control.stub, path=str(NUCLEI))[0].model
    _register(control, _runtime_info("r", runtime.uri))
    answer = control.stub.TestModel(
        control_pb2.TestModelRequest(model_id=model.id[:8], weight_format="onnx", device="cpu")
    )
    assert (answer.report.status, answer.report.id) == ("passed", model.id)
    (request,) = runtime.requests
    assert (request.model_id, request.weight_format, request.device) == (model.id, "onnx", "cpu")


def test_a_runtime_error_keeps_its_type(control: Running, runtime: FakeRuntime) -> None:
    model = add_model(control.stub, path=str(NUCLEI))[0].model
    _register(control, _runtime_info("r", runtime.uri))
    runtime.error = errors.DeviceNotAvailableError("device 'cuda' is not available: cpu only")
    expect_rpc_error(
        lambda: control.stub.TestModel(control_pb2.TestModelRequest(model_id=model.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "DeviceNotAvailableError",
        "device 'cuda' is not available: cpu only",
    )


def test_an_unreachable_runtime_is_skipped(control: Running, runtime: FakeRuntime) -> None:
    model = add_model(control.stub, path=str(NUCLEI))[0].model
    other = "1" * 64
    _register(control, _runtime_info("gone", "grpc://127.0.0.1:9"))
    _register(control, _runtime_info("r", runtime.uri, loaded=(other,)))
    answer = control.stub.TestModel(control_pb2.TestModelRequest(model_id=model.id), timeout=30)
    assert answer.report.status == "passed"
    assert len(runtime.requests) == 1


def test_test_model_without_a_reachable_runtime_is_unavailable(control: Running) -> None:
    model = add_model(control.stub, path=str(NUCLEI))[0].model
    _register(control, _runtime_info("gone", "grpc://127.0.0.1:9"))
    expect_rpc_error(
        lambda: control.stub.TestModel(control_pb2.TestModelRequest(model_id=model.id), timeout=30),
        grpc.StatusCode.UNAVAILABLE,
        "UnavailableError",
        "no runtime could be reached to test the model: gone: runtime unavailable: ",
    )


def test_fetch_model_package_streams_a_verified_zip(control: Running, tmp_path: Path) -> None:
    model = add_model(control.stub, path=str(NUCLEI))[0].model
    parts = list(
        control.stub.FetchModelPackage(control_pb2.FetchModelPackageRequest(model_id=model.id[:7]))
    )
    head, chunks = parts[0], [p.chunk for p in parts[1:]]
    assert head.chunk == b"" and head.size_bytes > 0
    assert all(0 < len(c) <= 1024**2 for c in chunks)
    data = b"".join(chunks)
    assert (len(data), hashlib.sha256(data).hexdigest()) == (head.size_bytes, head.sha256)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        zf.extractall(tmp_path / "unpacked")
    assert hash_package(tmp_path / "unpacked")[0] == model.id
    again = list(
        control.stub.FetchModelPackage(control_pb2.FetchModelPackageRequest(model_id=model.id))
    )
    assert again[0].sha256 == head.sha256  # built once, same bytes


def test_fetching_an_unknown_model_is_not_found(control: Running) -> None:
    expect_rpc_error(
        lambda: list(
            control.stub.FetchModelPackage(control_pb2.FetchModelPackageRequest(model_id="0" * 64))
        ),
        grpc.StatusCode.NOT_FOUND,
        "ModelNotFoundError",
        f"no model '{'0' * 64}' in the registry",
    )


def test_an_embedded_runtime_registers_in_process(start_server: ServerFactory) -> None:
    control = start_server()
    model = add_model(control.stub, path=str(NUCLEI))[0].model
    registration = control.server.control.register_runtime(
        types.RuntimeInfo(runtime_id="embedded", flight_uri="grpc://127.0.0.1:8815"),
        cache_dir=str(control.cache_dir),
    )
    assert registration.shared_cache_dir == str(control.cache_dir)
    with control.server.registry.use(model.id[:10]) as package:
        assert package.model_id == model.id
        assert package.path == control.cache_dir / "models" / model.id
    assert _route(control, model.id).flight_uris == ["grpc://127.0.0.1:8815"]


def test_removing_a_model_a_runtime_has_warm_unloads_it_there_first(
    control: Running, runtime: FakeRuntime
) -> None:
    model = add_model(control.stub, path=str(NUCLEI))[0].model
    _register(control, _runtime_info("r", runtime.uri, loaded=(model.id,)))
    control.stub.RemoveModel(control_pb2.RemoveModelRequest(model_id=model.id[:10]))
    assert [u.model_id for u in runtime.unloads] == [model.id]
    expect_rpc_error(
        lambda: control.stub.DescribeModel(control_pb2.DescribeModelRequest(model_id=model.id)),
        grpc.StatusCode.NOT_FOUND,
        "ModelNotFoundError",
    )


def test_removing_a_model_a_runtime_is_serving_fails(
    control: Running, runtime: FakeRuntime
) -> None:
    model = add_model(control.stub, path=str(NUCLEI))[0].model
    _register(control, _runtime_info("r", runtime.uri, loaded=(model.id,)))
    runtime.error = errors.ModelInUseError(f"model {model.id} is in use on cpu")
    expect_rpc_error(
        lambda: control.stub.RemoveModel(control_pb2.RemoveModelRequest(model_id=model.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ModelInUseError",
        f"model {model.id} is in use on cpu",
    )
    control.stub.DescribeModel(control_pb2.DescribeModelRequest(model_id=model.id))  # still there


# -- restarts and start-up (issue 14) ---------------------------------------------------------


def test_a_route_during_start_up_waits_for_the_first_runtime(start_server: ServerFactory) -> None:
    control = start_server(runtime_wait_s=5)
    model = add_model(control.stub, path=str(NUCLEI))[0].model
    timer = threading.Timer(0.3, lambda: _register(control, _runtime_info("a", "grpc://a:1")))
    timer.start()
    try:
        assert _route(control, model.id).runtime_id == "a"
    finally:
        timer.join()


def test_a_route_waits_only_runtime_wait_s(start_server: ServerFactory) -> None:
    control = start_server(runtime_wait_s=0.3)
    model = add_model(control.stub, path=str(NUCLEI))[0].model
    start = time.monotonic()
    expect_rpc_error(
        lambda: _route(control, model.id),
        grpc.StatusCode.UNAVAILABLE,
        "UnavailableError",
        "no runtime registered",
    )
    assert time.monotonic() - start >= 0.3


def test_a_runtime_restarted_at_the_same_address_replaces_the_old_one(tmp_path: Path) -> None:
    """A new process on the port of one that missed its heartbeat is routed to at once, not
    after three heartbeats."""
    now = [0.0]
    directory = RuntimeDirectory(
        make_settings(tmp_path, heartbeat_interval_s=10), clock=lambda: now[0]
    )
    directory.register(types.RuntimeInfo(runtime_id="old", flight_uri="grpc://h:7"))
    now[0] += 11  # the old process missed a heartbeat
    directory.register(types.RuntimeInfo(runtime_id="new", flight_uri="grpc://h:7"))
    assert [r.runtime_id for r in directory.runtimes()] == ["new"]


def test_runtimes_sharing_an_address_do_not_evict_each_other(tmp_path: Path) -> None:
    """Attack (accidental): two replicas behind one Kubernetes Service advertise the same
    flight_uri; each heartbeat must not drop the other, or routes and readiness flap."""
    now = [0.0]
    directory = RuntimeDirectory(
        make_settings(tmp_path, heartbeat_interval_s=10), clock=lambda: now[0]
    )
    a = types.RuntimeInfo(runtime_id="a", flight_uri="grpc://svc:7")
    b = types.RuntimeInfo(runtime_id="b", flight_uri="grpc://svc:7")
    directory.register(a)
    now[0] += 1
    directory.register(b)
    for _ in range(5):
        now[0] += 9
        directory.register(a)
        now[0] += 1
        directory.register(b)
        assert [r.runtime_id for r in directory.runtimes()] == ["a", "b"]


def test_a_leaving_runtime_is_routed_to_no_more(control: Running) -> None:
    model = add_model(control.stub, path=str(NUCLEI))[0].model
    _register(control, _runtime_info("a", "grpc://a:1", available=False))
    _register(control, _runtime_info("b", "grpc://b:1"))
    assert _route(control, model.id).runtime_id == "b"
