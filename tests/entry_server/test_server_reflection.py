"""Server reflection on the running control service, in both versions tools ask for: v1 through
a raw stub compiled from ``protos/grpc/reflection/v1/reflection.proto``, v1alpha through
grpcio-reflection's own stub."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from modelrunner.serving import RunningServer
from tests.compiled_protos import REFLECTION, CompiledProto, compile_proto
from tests.conftest import Secured

SERVICES = {
    "modelrunner.v1.ControlService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "inference.GRPCInferenceService",
}
"""Every service the control service lists, and where each is defined."""
DEFINED_IN = {
    "modelrunner.v1.ControlService": "modelrunner/v1/control.proto",
    "grpc.health.v1.Health": "grpc_health/v1/health.proto",
    "grpc.reflection.v1.ServerReflection": "grpc/reflection/v1/reflection.proto",
    "grpc.reflection.v1alpha.ServerReflection": "grpc_reflection/v1alpha/reflection.proto",
    "inference.GRPCInferenceService": "modelrunner/open_inference/grpc_predict_v2.proto",
}


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory) -> CompiledProto:
    return compile_proto(REFLECTION, tmp_path_factory.mktemp("reflection-v1"))


@pytest.fixture
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as channel:
        yield channel


def _ask_v1(v1: CompiledProto, channel: grpc.Channel, **request: Any) -> Any:
    stub = v1.stub(channel, "ServerReflection")
    ask = v1.message("ServerReflectionRequest")(**request)
    (answer,) = stub["ServerReflectionInfo"](iter([ask]), timeout=10)
    return answer


def _ask_v1alpha(channel: grpc.Channel, **request: Any) -> Any:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    ask = reflection_pb2.ServerReflectionRequest(**request)
    (answer,) = stub.ServerReflectionInfo(iter([ask]), timeout=10)
    return answer


def _files(answer: Any) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    protos = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in answer.file_descriptor_response.file_descriptor_proto
    ]
    return {p.name: p for p in protos}


def test_v1_lists_every_service(v1: CompiledProto, channel: grpc.Channel) -> None:
    answer = _ask_v1(v1, channel, list_services="")
    assert {s.name for s in answer.list_services_response.service} == SERVICES


def test_v1alpha_lists_every_service(channel: grpc.Channel) -> None:
    answer = _ask_v1alpha(channel, list_services="")
    assert {s.name for s in answer.list_services_response.service} == SERVICES


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_both_versions_give_the_file_containing_each_service(
    v1: CompiledProto, channel: grpc.Channel, service: str
) -> None:
    for answer in (
        _ask_v1(v1, channel, file_containing_symbol=service),
        _ask_v1alpha(channel, file_containing_symbol=service),
    ):
        files = _files(answer)
        package, _, name = service.rpartition(".")
        defining = files[DEFINED_IN[service]]
        assert defining.package == package
        assert name in [s.name for s in defining.service]
        assert answer.original_request.file_containing_symbol == service


def test_v1_gives_a_files_imports_with_it(v1: CompiledProto, channel: grpc.Channel) -> None:
    """Enough to build every message of the control service: its file and what it imports."""
    files = _files(_ask_v1(v1, channel, file_containing_symbol="modelrunner.v1.ControlService"))
    for name, proto in files.items():
        assert set(proto.dependency) <= set(files), name


def test_v1_answers_an_unknown_symbol_with_not_found_and_goes_on(
    v1: CompiledProto, channel: grpc.Channel
) -> None:
    stub = v1.stub(channel, "ServerReflection")
    request = v1.message("ServerReflectionRequest")
    unknown, listing = stub["ServerReflectionInfo"](
        iter([request(file_containing_symbol="no.such.Symbol"), request(list_services="")]),
        timeout=10,
    )
    assert unknown.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert unknown.error_response.error_message == "not found"
    assert len(listing.list_services_response.service) == len(SERVICES)


def test_v1_needs_no_token_on_a_server_that_wants_them(v1: CompiledProto, secured: Secured) -> None:
    with grpc.insecure_channel(secured.address) as channel:
        answer = _ask_v1(v1, channel, list_services="")
    assert "grpc.reflection.v1.ServerReflection" in {
        s.name for s in answer.list_services_response.service
    }
