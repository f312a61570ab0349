"""The third-party protos in ``protos/`` (written from the specifications, for clients in other
languages) are wire-compatible with what modelrunner runs: each is compiled here with
grpc_tools' protoc and compared field by field with the descriptors of the libraries that serve
it, or used, with nothing else, to call a running server."""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from modelrunner.client import ModelInfo
from modelrunner.entry_server.edge.server_reflection import V1_FILE_NAME
from modelrunner.runtime_flight.server import RuntimeFlightServer
from modelrunner.serving import RunningServer
from modelrunner.v1 import models_pb2, runtime_pb2
from modelrunner.wire import SampleLayout, encode_sample
from tests.compiled_protos import (
    FLIGHT,
    HEALTH,
    PROTOS,
    REFLECTION,
    CompiledProto,
    comparable_file,
    compile_proto,
    file_proto,
)
from tests.runtime_flight.hand_built import decode, exchange_messages

LICENSES = PROTOS / "LICENSES"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CompiledProto]:
    out = tmp_path_factory.mktemp("third-party-protos")
    return {name: compile_proto(name, out) for name in (FLIGHT, HEALTH, REFLECTION)}


@pytest.fixture
def flight_channel(runtime: RuntimeFlightServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        yield channel


# -- field for field ------------------------------------------------------------------------------


def test_health_proto_equals_grpcio_health_checking_field_for_field(
    compiled: dict[str, CompiledProto],
) -> None:
    ours = compiled[HEALTH].proto
    assert ours.package == health_pb2.DESCRIPTOR.package == "grpc.health.v1"
    assert comparable_file(ours) == comparable_file(file_proto(health_pb2.DESCRIPTOR))
    methods = [m.name for m in ours.service[0].method]
    assert methods == ["Check", "List", "Watch"]


def test_reflection_v1_proto_is_v1alpha_field_for_field_under_the_v1_package(
    compiled: dict[str, CompiledProto],
) -> None:
    ours = compiled[REFLECTION].proto
    assert ours.package == "grpc.reflection.v1"
    assert comparable_file(ours) == comparable_file(file_proto(reflection_pb2.DESCRIPTOR))


def test_the_servers_v1_reflection_file_equals_the_proto(
    compiled: dict[str, CompiledProto], server: RunningServer
) -> None:
    """The file a v1 client receives for grpc.reflection.v1 (derived from v1alpha at start-up)
    is the one in protos/."""
    from google.protobuf import descriptor_pool

    served = file_proto(descriptor_pool.Default().FindFileByName(V1_FILE_NAME))
    assert served.package == "grpc.reflection.v1"
    assert comparable_file(served) == comparable_file(compiled[REFLECTION].proto)


def _arrow_flights_own_descriptor() -> descriptor_pb2.FileDescriptorProto | None:
    """Flight.proto as Apache Arrow compiled it into pyarrow's libarrow_flight (protobuf's C++
    code embeds each file's serialized FileDescriptorProto): the specification itself."""
    import pyarrow

    libraries = glob.glob(str(Path(pyarrow.__file__).parent / "libarrow_flight.so*"))
    if not libraries:
        return None
    data = Path(libraries[0]).read_bytes()
    start = data.find(b"\n\x0cFlight.proto\x12\x15arrow.flight.protocol")
    end = data.find(b"b\x06proto3", start)  # field 12, syntax: the file's last field
    if start < 0 or end < 0:
        return None
    return descriptor_pb2.FileDescriptorProto.FromString(data[start : end + 8])


def test_flight_proto_equals_the_one_compiled_into_pyarrow(
    compiled: dict[str, CompiledProto],
) -> None:
    real = _arrow_flights_own_descriptor()
    if real is None:
        pytest.skip("this pyarrow build has no libarrow_flight with an embedded Flight.proto")
    ours = comparable_file(compiled[FLIGHT].proto)
    theirs = comparable_file(real)
    assert ours["services"] == theirs["services"]
    by_name = {m["name"]: m for m in theirs["messages"]}
    for message in ours["messages"]:
        assert message == by_name[message["name"]], message["name"]
    # ours leaves out only the bodies of Flight's optional actions, which modelrunner does not
    # serve (CancelFlightInfo, RenewFlightEndpoint, session options)
    left_out = set(by_name) - {m["name"] for m in ours["messages"]}
    assert left_out == {
        "CancelFlightInfoRequest",
        "CancelFlightInfoResult",
        "RenewFlightEndpointRequest",
        "SessionOptionValue",
        "SetSessionOptionsRequest",
        "SetSessionOptionsResult",
        "GetSessionOptionsRequest",
        "GetSessionOptionsResult",
        "CloseSessionRequest",
        "CloseSessionResult",
    }


# -- calling a running server ---------------------------------------------------------------------


def test_flight_proto_lists_the_runtimes_actions(
    compiled: dict[str, CompiledProto], flight_channel: grpc.Channel
) -> None:
    flight = compiled[FLIGHT]
    stub = flight.stub(flight_channel, "FlightService")
    actions = list(stub["ListActions"](flight.message("Empty")(), timeout=30))
    assert [a.type for a in actions] == ["load_model", "unload_model", "test_model", "runtime_info"]
    assert actions[3].description == "Devices, warm models and versions: (empty) -> RuntimeInfo"


def test_flight_proto_calls_runtime_info(
    compiled: dict[str, CompiledProto],
    flight_channel: grpc.Channel,
    runtime: RuntimeFlightServer,
) -> None:
    flight = compiled[FLIGHT]
    stub = flight.stub(flight_channel, "FlightService")
    (result,) = stub["DoAction"](flight.message("Action")(type="runtime_info"), timeout=30)
    info = models_pb2.RuntimeInfo.FromString(result.body)
    assert info.runtime_id == runtime.service.runtime_id


def test_flight_proto_runs_a_prediction(
    compiled: dict[str, CompiledProto], flight_channel: grpc.Channel, identity: ModelInfo
) -> None:
    flight = compiled[FLIGHT]
    stub = flight.stub(flight_channel, "FlightService")
    image = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8)
    layout = SampleLayout.plan({"input": image}, {"input": ("batch", "channel", "y", "x")})
    command = runtime_pb2.PredictCommand(model_id=identity.id).SerializeToString()
    messages = exchange_messages(
        flight, command, layout.schema(), encode_sample(layout, {"input": image})
    )
    answer = decode(list(stub["DoExchange"](iter(messages), timeout=60)))
    (batch,) = answer.batches
    assert batch.schema.names == ["output"]
    np.testing.assert_array_equal(batch.column(0).to_numpy_ndarray()[0], image)
    frame = runtime_pb2.FrameResult.FromString(answer.metadata[-1])
    assert (frame.frame, frame.weight_format, frame.device) == (0, "onnx", "cpu")


def test_health_proto_checks_the_control_service(
    compiled: dict[str, CompiledProto], server: RunningServer
) -> None:
    health = compiled[HEALTH]
    with grpc.insecure_channel(server.address) as channel:
        stub = health.stub(channel, "Health")
        request = health.message("HealthCheckRequest")
        serving = health.pool.FindEnumTypeByName(
            "grpc.health.v1.HealthCheckResponse.ServingStatus"
        ).values_by_name["SERVING"]
        for service in ("", "modelrunner.v1.ControlService"):
            assert stub["Check"](request(service=service), timeout=10).status == serving.number
        watch = stub["Watch"](request(service=""), timeout=10)
        assert next(watch).status == serving.number
        watch.cancel()
        with pytest.raises(grpc.RpcError) as info:
            stub["Check"](request(service="no.such.Service"), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        # grpcio-health-checking 1.85 has no List (health.proto says so)
        with pytest.raises(grpc.RpcError) as info:
            stub["List"](health.message("HealthListRequest")(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


# -- licences -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("proto", "licences"),
    [
        (FLIGHT, ["Apache-2.0.txt"]),
        (HEALTH, ["Apache-2.0.txt"]),
        (REFLECTION, ["Apache-2.0.txt"]),
        # the KServe V2 protocol, and Triton's ModelStreamInfer extension of it
        (
            "modelrunner/open_inference/grpc_predict_v2.proto",
            ["Apache-2.0.txt", "BSD-3-Clause.txt"],
        ),
    ],
)
def test_each_third_party_proto_is_in_the_readme_with_its_licences_beside_it(
    proto: str, licences: list[str]
) -> None:
    readme = (PROTOS / "README.md").read_text()
    assert f"`{proto}`" in readme
    for licence in licences:
        assert (LICENSES / licence).is_file()
        assert f"LICENSES/{licence}" in readme


def test_the_licence_texts_are_complete() -> None:
    apache = (LICENSES / "Apache-2.0.txt").read_text()
    assert apache.lstrip().startswith("Apache License\n                           Version 2.0")
    assert "END OF TERMS AND CONDITIONS" in apache
    bsd = (LICENSES / "BSD-3-Clause.txt").read_text()
    assert bsd.startswith("BSD 3-Clause License\n")
    assert "3. Neither the name of the copyright holder" in bsd
