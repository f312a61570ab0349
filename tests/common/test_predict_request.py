"""``PredictRequest``: one checked, frozen value for a prediction, built the same from the
Python client's keywords, a ``PredictCommand`` and V2 parameters; the command converters keep
every option."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from modelrunner.client import ModelRunnerClient
from modelrunner.entry_server.edge.open_inference_tensors import predict_request
from modelrunner.errors import InvalidArgumentError
from modelrunner.open_inference import grpc_predict_v2_pb2 as v2
from modelrunner.predict_command import NAN_POLICY_TO_PB, exchange_kind, from_command, to_command
from modelrunner.predict_request import PredictRequest
from modelrunner.v1 import runtime_pb2

EVERY_OPTION = {
    "weight_format": "onnx",
    "device": "cuda:1",
    "blocksize": 3,
    "nan_policy": "allow",
    "skip_preprocessing": True,
    "skip_postprocessing": True,
    "reference_path": False,
    "precision": "bfloat16",
    "keep_shape": False,
    "input_padding": "none",
    "max_batch_size": 4,
}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"blocksize": -1}, "blocksize must be 0 or more, got -1"),
        ({"nan_policy": "ignore"}, "nan_policy must be 'reject' or 'allow', got 'ignore'"),
        ({"precision": "int8"}, "precision must be 'float16' or 'bfloat16'"),
        ({"input_padding": "zero"}, "input_padding must be 'none' or 'halo', got 'zero'"),
        ({"max_batch_size": -2}, "max_batch_size must be 0 (no limit) or more, got -2"),
        ({"timeout_s": -1.0}, "timeout_s must be 0 or more"),
        (
            {"precision": "float16", "reference_path": True},
            "reduced precision runs on the fast path only; it cannot go with reference_path",
        ),
        (
            {"precision": "float16", "keep_shape": True},
            "keep_shape runs bioimageio.core's pipeline; reduced precision runs on the fast "
            "path only",
        ),
        (
            {"precision": "float16", "input_padding": "halo"},
            "input_padding='halo' runs bioimageio.core's pipeline",
        ),
        ({"model_id": ""}, "name the model"),
    ],
)
def test_every_option_is_checked_once_where_the_request_is_built(
    options: dict[str, object], message: str
) -> None:
    fields: dict[str, object] = {"model_id": "m", **options}
    with pytest.raises(InvalidArgumentError) as refused:
        PredictRequest(**fields)  # type: ignore[arg-type]
    assert refused.value.message.startswith(message)


def test_a_request_is_frozen_and_keeps_its_options_for_other_inputs() -> None:
    request = PredictRequest(model_id="m", **EVERY_OPTION)  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.blocksize = 2  # type: ignore[misc]
    frame = {"raw": np.zeros((4, 4), np.float32)}
    again = request.with_inputs(frame, {"raw": ("y", "x")}).with_model("0" * 64)
    assert again.options() == request.options()
    assert (again.model_id, again.inputs, again.dim_names) == ("0" * 64, frame, {"raw": ("y", "x")})
    assert request.inputs == {} and request.model_id == "m"


@pytest.mark.parametrize("kind", ["predict", "stream", "session"])
def test_the_command_converters_keep_every_option(kind: str) -> None:
    request = PredictRequest(model_id="m", **EVERY_OPTION)  # type: ignore[arg-type]
    command = runtime_pb2.PredictCommand.FromString(
        to_command(request, kind=kind, report_progress=True).SerializeToString()  # type: ignore[arg-type]
    )
    assert exchange_kind(command) == kind
    assert command.report_progress
    assert from_command(command).options() == {**request.options(), "timeout_s": None}
    halo = PredictRequest(model_id="m", input_padding="halo", blocksize=0)
    assert from_command(to_command(halo)).options() == halo.options()


def test_what_a_command_leaves_unset_reads_as_the_defaults() -> None:
    default = from_command(runtime_pb2.PredictCommand(model_id="m"))
    assert default.options() == PredictRequest(model_id="m").options()
    assert default.blocksize is None and default.nan_policy == "reject"


def test_one_nan_policy_table_and_odd_values_from_the_wire() -> None:
    assert {from_command(runtime_pb2.PredictCommand(model_id="m", nan_policy=v)).nan_policy
            for v in NAN_POLICY_TO_PB.values()} == {"reject", "allow"}  # fmt: skip
    unknown = runtime_pb2.PredictCommand(model_id="m", nan_policy=99)  # type: ignore[arg-type]
    assert from_command(unknown).nan_policy == "reject"
    negative = runtime_pb2.PredictCommand(model_id="m", max_batch_size=-5)
    assert from_command(negative).max_batch_size == 0
    with pytest.raises(InvalidArgumentError, match="precision must be"):
        from_command(runtime_pb2.PredictCommand(model_id="m", precision="int4"))


def test_v2_parameters_build_the_same_request() -> None:
    parameters = {
        "weight_format": v2.InferParameter(string_param="onnx"),
        "device": v2.InferParameter(string_param="cuda:1"),
        "blocksize": v2.InferParameter(int64_param=3),
        "nan_policy": v2.InferParameter(string_param="allow"),
        "reference_path": v2.InferParameter(bool_param=True),
        "input_padding": v2.InferParameter(string_param="halo"),
        "timeout": v2.InferParameter(int64_param=2_000_000),
        "priority": v2.InferParameter(uint64_param=1),  # tritonclient's, ignored
    }
    request = predict_request("m", parameters, 60.0)
    assert request.options() == {
        **PredictRequest(model_id="m").options(),
        "weight_format": "onnx",
        "device": "cuda:1",
        "blocksize": 3,
        "nan_policy": "allow",
        "reference_path": True,
        "input_padding": "halo",
        "timeout_s": 2.0,
    }
    assert predict_request("m", {}, 1e12).timeout_s is None  # grpc's "no deadline"


def test_the_client_builds_the_same_request_from_its_keywords() -> None:
    client = ModelRunnerClient("127.0.0.1:1", timeout=7.0)
    try:
        image = np.zeros((8, 8), np.float32)
        request = client.build_request(
            "m", image, weight_format=None, precision=None, blocksize=0, input_padding="halo"
        )
        assert request.options() == {
            **PredictRequest(model_id="m").options(),
            "blocksize": 0,
            "input_padding": "halo",
            "timeout_s": 7.0,
        }
        assert list(request.inputs) == [""] and request.inputs[""] is image
        with pytest.raises(InvalidArgumentError, match="nan_policy must be"):
            client.build_request("m", image, nan_policy="drop")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            client.build_request("m", image, colour="red")  # type: ignore[call-arg]
    finally:
        client.close()
