"""Open Inference (V2) values are checked, never wrapped: a typed content outside its datatype's
range, or a value the model's input dtype cannot hold, is INVALID_ARGUMENT naming the input and
the first bad value. Each case names the value it attacks with (what it used to become)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from modelrunner import errors
from modelrunner.client import ModelInfo, ModelRunnerClient
from modelrunner.open_inference import grpc_predict_v2_pb2 as v2
from modelrunner.open_inference import grpc_predict_v2_pb2_grpc as v2_grpc
from modelrunner.serving import RunningServer

Input = v2.ModelInferRequest.InferInputTensor
SHAPE = [1, 1, 2, 2]


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[v2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield v2_grpc.GRPCInferenceServiceStub(channel)


def _typed(model: str, datatype: str, field: str, values: list[object]) -> v2.ModelInferRequest:
    return v2.ModelInferRequest(
        model_name=model,
        inputs=[
            Input(
                name="input",
                datatype=datatype,
                shape=SHAPE,
                contents=v2.InferTensorContents(**{field: values}),
            )
        ],
    )


def _raw(model: str, array: np.ndarray, datatype: str) -> v2.ModelInferRequest:
    return v2.ModelInferRequest(
        model_name=model,
        inputs=[Input(name="input", datatype=datatype, shape=list(array.shape))],
        raw_input_contents=[array.tobytes()],
    )


def _refused(stub: v2_grpc.GRPCInferenceServiceStub, request: v2.ModelInferRequest) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return caught.value.details() or ""


@pytest.mark.parametrize(
    ("datatype", "field", "bad"),
    [
        ("UINT8", "uint_contents", 300),  # became 44
        ("UINT16", "uint_contents", 70000),
        ("INT8", "int_contents", -200),
        ("INT8", "int_contents", 128),
        ("INT16", "int_contents", 40000),  # came out as -76608
        ("INT16", "int_contents", -40000),
    ],
)
def test_a_typed_value_outside_its_datatype_is_invalid_naming_it(
    stub: v2_grpc.GRPCInferenceServiceStub,
    identity: ModelInfo,
    datatype: str,
    field: str,
    bad: int,
) -> None:
    """Attack: a typed contents field holds wider values than its datatype (UINT8 travels in
    uint_contents, a uint32)."""
    details = _refused(stub, _typed(identity.id, datatype, field, [0, 1, bad, 2]))
    assert f"input 'input': value {bad} (element 2) does not fit {datatype}" in details


def test_a_value_the_models_dtype_cannot_hold_is_invalid(
    stub: v2_grpc.GRPCInferenceServiceStub, identity: ModelInfo
) -> None:
    """FP64 1e300 into a float32 model became inf; raw and typed alike."""
    array = np.array([1.0, 2.0, 3.0, 1e300]).reshape(SHAPE)
    details = _refused(stub, _raw(identity.id, array, "FP64"))
    assert "input 'input'" in details and "1e+300" in details and "float32" in details
    details = _refused(stub, _typed(identity.id, "FP64", "fp64_contents", array.ravel().tolist()))
    assert "1e+300" in details


def test_values_that_fit_still_predict(
    stub: v2_grpc.GRPCInferenceServiceStub, identity: ModelInfo
) -> None:
    for request in (
        _typed(identity.id, "UINT8", "uint_contents", [0, 1, 254, 255]),
        _typed(identity.id, "INT16", "int_contents", [-32768, 0, 1, 32767]),
        _typed(identity.id, "FP64", "fp64_contents", [0.5, -1.5, 3.4e38, 1.0]),
    ):
        response = stub.ModelInfer(request, timeout=30)
        assert response.outputs[0].datatype == "FP32"


def test_flight_refuses_the_same_overflowing_cast(
    client: ModelRunnerClient, identity: ModelInfo
) -> None:
    """The check is the runtime's: a Flight client gets it too, as InvalidTensorError."""
    array = np.array([1.0, 2.0, -1e300, 3.0]).reshape(SHAPE)
    with pytest.raises(errors.InvalidTensorError) as caught:
        client.predict(identity.id, array)
    assert "-1e+300 (element 2) does not fit the model's float32" in caught.value.message
    assert caught.value.details["tensor"] == "input"
