"""Metrics labels are bounded by construction: a ``model`` label is only ever a model's canonical
short id (or the empty placeholder), whatever spelling a caller used on whichever plane; and a
model reference is accepted or refused the same way by the control service, Open Inference and
Flight (control characters and surrounding whitespace are INVALID_ARGUMENT everywhere). Attacked
on the shared server without authentication, where nothing else stops a made-up id."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from modelrunner import errors
from modelrunner.client import ModelInfo, ModelRunnerClient
from modelrunner.metrics import REGISTRY, model_label
from modelrunner.open_inference import grpc_predict_v2_pb2 as v2
from modelrunner.open_inference import grpc_predict_v2_pb2_grpc as v2_grpc
from modelrunner.serving import RunningServer
from modelrunner.transport_errors import from_flight_error, from_rpc_error
from modelrunner.v1 import control_pb2, control_pb2_grpc, runtime_pb2

IMAGE = np.arange(64, dtype="float32").reshape(1, 1, 8, 8)


def _model_labels() -> set[str]:
    return {s.labels["model"] for m in REGISTRY.collect() for s in m.samples if "model" in s.labels}


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as c:
        yield c


def _describe(channel: grpc.Channel, ref: str) -> None:
    control_pb2_grpc.ControlServiceStub(channel).DescribeModel(
        control_pb2.DescribeModelRequest(model_id=ref), timeout=30
    )


def _v2_infer(channel: grpc.Channel, ref: str) -> None:
    request = v2.ModelInferRequest(
        model_name=ref,
        inputs=[
            v2.ModelInferRequest.InferInputTensor(
                name="input", datatype="FP32", shape=list(IMAGE.shape)
            )
        ],
        raw_input_contents=[IMAGE.tobytes()],
    )
    v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)


def _v2_metadata(channel: grpc.Channel, ref: str) -> None:
    v2_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
        v2.ModelMetadataRequest(name=ref), timeout=30
    )


def _flight_predict(server: RunningServer, ref: str) -> None:
    from modelrunner.wire import SampleLayout, encode_sample

    assert server.runtime is not None
    command = runtime_pb2.PredictCommand(model_id=ref)
    layout = SampleLayout.plan({"input": IMAGE}, {})
    with flight.connect(server.runtime.flight_uri) as raw:
        writer, reader = raw.do_exchange(
            flight.FlightDescriptor.for_command(command.SerializeToString())
        )
        writer.begin(layout.schema())
        for batch in encode_sample(layout, {"input": IMAGE}):
            writer.write_batch(batch)
        writer.done_writing()
        reader.read_all()
        writer.close()


def _error(call: Callable[[], object]) -> errors.ModelRunnerError:
    try:
        call()
    except grpc.RpcError as exc:
        return from_rpc_error(exc)  # type: ignore[arg-type]
    except (flight.FlightError, pa.ArrowException) as exc:
        return from_flight_error(exc)
    raise AssertionError("the call succeeded")


def _spellings(model: ModelInfo) -> list[str]:
    spellings = [model.id, model.id.upper(), *(model.id[:n] for n in range(6, 64, 7))]
    spellings += [model.id[:n].upper() for n in range(6, 64, 11)]
    return spellings


def test_every_spelling_of_one_model_is_counted_under_its_short_id(
    server: RunningServer, channel: grpc.Channel, identity: ModelInfo
) -> None:
    """Attack: name one model by every prefix length and letter case on each plane, to make a
    series per spelling."""
    before = _model_labels()
    for ref in _spellings(identity):
        _describe(channel, ref)
        _v2_infer(channel, ref)
        _flight_predict(server, ref)
    assert _model_labels() - before <= {identity.id[:12]}


def test_made_up_ids_make_no_series_on_any_plane(
    server: RunningServer, channel: grpc.Channel
) -> None:
    """Attack: made-up ids, well-formed full ids among them, without authentication (where
    nothing refuses a caller first)."""
    before = _model_labels()
    made_up = [f"{i:064x}" for i in range(1, 6)] + [f"no-such-model-{i}" for i in range(5)]
    for ref in made_up:
        for call in (
            lambda r=ref: _describe(channel, r),
            lambda r=ref: _v2_infer(channel, r),
            lambda r=ref: _flight_predict(server, r),
        ):
            assert isinstance(_error(call), errors.NotFoundError)
    assert _model_labels() - before == set()


@pytest.mark.parametrize(
    "ref",
    [" {id}", "{id} ", "\t{id}", "{id}\n", "{id}\r\n", "{id6}\x00", "\x1b[31m{id6}", "{id6}\x7f"],
    ids=["space-before", "space-after", "tab", "newline", "crlf", "nul", "ansi-escape", "del"],
)
def test_control_characters_and_whitespace_around_an_id_are_invalid_on_every_plane(
    server: RunningServer, channel: grpc.Channel, identity: ModelInfo, ref: str
) -> None:
    """Attack: spellings the control service and V2 used to accept (stripped) and Flight
    refused; now every plane refuses them with the same message, before any lookup."""
    spelled = ref.format(id=identity.id, id6=identity.id[:6])
    found = [
        _error(lambda: _describe(channel, spelled)),
        _error(lambda: _v2_infer(channel, spelled)),
        _error(lambda: _v2_metadata(channel, spelled)),
        _error(lambda: _flight_predict(server, spelled)),
    ]
    assert all(isinstance(e, errors.InvalidArgumentError) for e in found), found
    assert len({e.message for e in found}) == 1, [e.message for e in found]


def test_the_typed_client_refuses_the_same_spellings(
    client: ModelRunnerClient, identity: ModelInfo
) -> None:
    with pytest.raises(errors.InvalidArgumentError, match="whitespace around it"):
        client.describe(f" {identity.id}")
    with pytest.raises(errors.InvalidArgumentError, match="control characters"):
        client.predict(f"{identity.id[:8]}\n", IMAGE)


def test_a_label_is_a_canonical_short_id_or_the_placeholder() -> None:
    full = "0123456789abcdef" * 4
    assert model_label(full) == full[:12]
    for spelled in (full.upper(), full[:12], full[:63], f" {full}", "affable-shark", ""):
        assert model_label(spelled) == ""
