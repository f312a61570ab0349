"""The service itself: health checking, reflection, server info, start-up, error mapping."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from modelrunner import __version__, errors
from modelrunner.converters import to_pb_runtime
from modelrunner.entry_server import start_control_server
from modelrunner.entry_server.server import SERVICE_NAME
from modelrunner.open_inference import grpc_predict_v2_pb2 as v2
from modelrunner.open_inference import grpc_predict_v2_pb2_grpc as v2_grpc
from modelrunner.types import RuntimeInfo
from modelrunner.v1 import control_pb2, control_pb2_grpc
from tests.entry_server.conftest import Running, ServerFactory, make_settings
from tests.entry_server.helpers import NUCLEI, add_model, expect_rpc_error, upload_requests


def test_health_is_ready_only_while_a_runtime_can_predict(start_server: ServerFactory) -> None:
    """Readiness ("", the services) waits for a runtime; liveness does not."""
    control = start_server(heartbeat_interval_s=0.2)
    health = health_pb2_grpc.HealthStub(control.channel)
    v2_ready = v2_grpc.GRPCInferenceServiceStub(control.channel).ServerReady

    def statuses() -> dict[str, int]:
        return {
            service: health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            for service in ("", SERVICE_NAME, "inference.GRPCInferenceService", "liveness")
        }

    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    assert statuses() == {
        "": not_serving,
        SERVICE_NAME: not_serving,
        "inference.GRPCInferenceService": not_serving,
        "liveness": serving,
    }
    assert not v2_ready(v2.ServerReadyRequest(), timeout=5).ready
    control.stub.RegisterRuntime(
        control_pb2.RegisterRuntimeRequest(
            runtime=to_pb_runtime(
                RuntimeInfo(runtime_id="a", flight_uri="grpc://127.0.0.1:9", available=True)
            )
        ),
        timeout=5,
    )
    assert set(statuses().values()) == {serving}
    assert v2_ready(v2.ServerReadyRequest(), timeout=5).ready
    deadline = time.monotonic() + 5
    while statuses()[""] == serving and time.monotonic() < deadline:
        time.sleep(0.1)  # three missed heartbeats (0.6 s), noticed within a second
    assert statuses() == {
        "": not_serving,
        SERVICE_NAME: not_serving,
        "inference.GRPCInferenceService": not_serving,
        "liveness": serving,
    }
    assert not v2_ready(v2.ServerReadyRequest(), timeout=5).ready


def test_health_check_of_an_unknown_service_is_not_found(control: Running) -> None:
    health = health_pb2_grpc.HealthStub(control.channel)
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(service="nope.Service"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_control_service(control: Running) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(control.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answer = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
    names = {s.name for s in answer.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
    assert SERVICE_NAME == "modelrunner.v1.ControlService"


def test_reflection_describes_the_service_from_its_proto(control: Running) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(control.channel)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)
    answer = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
    assert answer.file_descriptor_response.file_descriptor_proto


def test_server_info_reports_versions_cache_and_runtimes(control: Running) -> None:
    add_model(control.stub, path=str(NUCLEI))
    info = control.stub.GetServerInfo(control_pb2.GetServerInfoRequest(), timeout=5)
    assert info.modelrunner_version == __version__
    assert {"bioimageio.core", "bioimageio.spec", "grpcio", "pyarrow"} <= set(info.package_versions)
    assert info.python_version == ".".join(map(str, sys.version_info[:3]))
    assert info.platform
    assert info.cache.directory == str(control.cache_dir)
    assert info.cache.models == 1
    assert info.cache.used_bytes == sum(f.stat().st_size for f in NUCLEI.iterdir())
    assert info.cache.budget_bytes == control.server.settings.cache_budget_bytes
    assert list(info.runtimes) == []


def test_the_server_binds_a_free_port_and_starts_fast(tmp_path: Path) -> None:
    started = time.perf_counter()
    server = start_control_server(make_settings(tmp_path / "cache"))
    try:
        assert time.perf_counter() - started < 1.0
        assert server.port > 0
        assert server.address == f"127.0.0.1:{server.port}"
    finally:
        server.stop(0)


def test_a_busy_port_is_refused(control: Running, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "other", port=control.server.port)
    with pytest.raises(
        errors.UnavailableError,
        match=f"^port {settings.port} is in use on 127.0.0.1: a modelrunner control service",
    ):
        start_control_server(settings)


def test_starting_the_server_imports_no_bioimageio_and_no_framework() -> None:
    code = (
        "import sys, modelrunner.entry_server.server\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('bioimageio', 'torch', 'tensorflow', 'onnxruntime')]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_an_unexpected_exception_is_internal_and_names_what_failed(
    control: Running, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise KeyError("boom")

    monkeypatch.setattr(control.server.registry, "list_models", broken)
    with caplog.at_level(logging.ERROR, logger="modelrunner.entry_server.edge.error_interceptor"):
        message = expect_rpc_error(
            lambda: control.stub.ListModels(control_pb2.ListModelsRequest(), timeout=5),
            grpc.StatusCode.INTERNAL,
            "InternalError",
        )
    assert message == "/modelrunner.v1.ControlService/ListModels failed: KeyError: 'boom'"
    assert [r.exc_info is not None for r in caplog.records] == [True]
    monkeypatch.undo()


def test_an_unexpected_exception_in_a_stream_is_internal(
    control: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(control.server.registry, "add", broken)
    message = expect_rpc_error(
        lambda: list(
            control.stub.AddModel(
                control_pb2.AddModelRequest(source={"path": str(NUCLEI)}), timeout=5
            )
        ),
        grpc.StatusCode.INTERNAL,
        "InternalError",
    )
    assert message == "/modelrunner.v1.ControlService/AddModel failed: RuntimeError: disk on fire"
    monkeypatch.undo()


def test_stop_is_graceful_and_idempotent(start_server: ServerFactory) -> None:
    running = start_server()
    address = running.server.address
    start_server.stop(running)
    running.server.stop()  # a second stop does nothing
    with grpc.insecure_channel(address) as channel:
        stub = control_pb2_grpc.ControlServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListModels(control_pb2.ListModelsRequest(), timeout=1)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_shutdown_during_an_upload_leaves_nothing_half_written(
    start_server: ServerFactory,
) -> None:
    """The drain's grace period ends an upload still sending: its client gets an error, and
    neither the upload folder nor the cache keeps a partial file."""
    control = start_server()
    first, *rest = upload_requests(b"x" * (4 * 256 * 1024), "package.zip", size=8 * 256 * 1024)

    def slow() -> Iterator[control_pb2.UploadPackageRequest]:
        yield first
        yield rest[0]
        time.sleep(30)  # the client stalls; the server stops meanwhile
        yield from rest[1:]

    call = control.stub.UploadPackage.future(slow(), timeout=60)
    uploads = control.server.registry.uploads.directory
    deadline = time.monotonic() + 10
    while not any(uploads.rglob("*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(p.is_file() for p in uploads.rglob("*"))  # the partial file, while it streams
    control.server.stop(0.2)
    with pytest.raises(grpc.RpcError) as caught:
        call.result(timeout=10)
    assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    deadline = time.monotonic() + 5
    while any(p.is_file() for p in uploads.rglob("*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(p.is_file() for p in uploads.rglob("*"))
    assert not any((control.cache_dir / "models").iterdir())
    start_server.running.remove(control)  # stopped already
