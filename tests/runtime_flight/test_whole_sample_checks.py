"""Inputs checked as a whole before the network, on Flight and on the Open Inference endpoint:
sizes a description ties across tensors are INVALID_ARGUMENT naming both tensors and axes; a
network that fails on inputs its description allows answers with the model, the shapes and the
framework's one-line reason, never an interpreter's traceback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from modelrunner.client import ModelRunnerClient
from modelrunner.errors import InternalError, InvalidTensorError, ModelRunnerError
from modelrunner.open_inference import grpc_predict_v2_pb2 as v2
from modelrunner.open_inference import grpc_predict_v2_pb2_grpc as v2_grpc
from modelrunner.serving import RunningServer
from modelrunner.types import ModelInfo
from tests.zoo import MULTI, needs_zoo

Tiny = Callable[[str], Path]


@pytest.fixture(scope="module")
def two_inputs(client: ModelRunnerClient, tiny: Tiny) -> ModelInfo:
    """``a`` 16 + n*8, ``b`` whose y and x follow ``a``'s; a batch axis of any size on both."""
    return client.add_model(tiny("two_inputs"))


@pytest.fixture(scope="module")
def multi(client: ModelRunnerClient) -> ModelInfo:
    return client.add_model(MULTI)


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[v2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield v2_grpc.GRPCInferenceServiceStub(channel)


def _v2(
    stub: v2_grpc.GRPCInferenceServiceStub,
    model: str,
    arrays: dict[str, np.ndarray],
    **parameters: str,
) -> grpc.RpcError:
    request = v2.ModelInferRequest(
        model_name=model,
        inputs=[
            v2.ModelInferRequest.InferInputTensor(name=k, datatype="FP32", shape=a.shape)
            for k, a in arrays.items()
        ],
        raw_input_contents=[a.tobytes() for a in arrays.values()],
    )
    for key, value in parameters.items():
        request.parameters[key].string_param = value
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request, timeout=60)
    return refused.value


def _images(*shapes: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random(shape, dtype=np.float32) for shape in shapes]


def test_a_size_tied_to_another_input_is_refused_naming_both(
    client: ModelRunnerClient, two_inputs: ModelInfo, stub: v2_grpc.GRPCInferenceServiceStub
) -> None:
    """Attack: a sample sent as it is (keep_shape, halo padding) whose ``b`` is not the size
    its description derives from ``a``."""
    a, b = _images((1, 1, 32, 32), (1, 1, 24, 32))
    message = (
        "input 'b' axis 'y' has size 24, but its size follows input 'a' axis 'y' (size 32): "
        "expected 32"
    )
    for options in ({"keep_shape": True}, {"input_padding": "halo"}):
        with pytest.raises(InvalidTensorError) as refused:
            client.predict(two_inputs.id, {"a": a, "b": b}, **options)  # type: ignore[arg-type]
        assert refused.value.message == message
        assert refused.value.details == {"tensor": "b", "axis": "y", "expected": "32", "got": "24"}
    error = _v2(stub, two_inputs.id, {"a": a, "b": b}, input_padding="halo")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == message


def test_two_batch_sizes_in_one_sample_are_refused_naming_both(
    client: ModelRunnerClient, two_inputs: ModelInfo, stub: v2_grpc.GRPCInferenceServiceStub
) -> None:
    """Attack: batches of 2 and 3 samples for the two inputs of one sample."""
    a, b = _images((2, 1, 24, 24), (3, 1, 24, 24))
    message = (
        "input 'b' axis 'batch' has size 3 and input 'a' axis 'batch' has size 2: every input "
        "of a sample has the same batch size"
    )
    with pytest.raises(InvalidTensorError) as refused:
        client.predict(two_inputs.id, {"a": a, "b": b})
    assert refused.value.message == message
    error = _v2(stub, two_inputs.id, {"a": a, "b": b})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == message


@needs_zoo
def test_a_network_failing_on_allowed_inputs_says_why_in_one_line(
    client: ModelRunnerClient, multi: ModelInfo, stub: v2_grpc.GRPCInferenceServiceStub
) -> None:
    """Attack: ``unet2d_multi_tensor``'s inputs at 64x64 and 128x128, sizes its description
    allows one by one, which its network concatenates."""
    input0, input1 = _images((1, 1, 64, 64), (1, 1, 128, 128))
    message = (
        "prediction with 'Multi-tensor' failed on inputs 'input0' (1, 1, 64, 64), 'input1' "
        "(1, 1, 128, 128): RuntimeError: Sizes of tensors must match except in dimension 1. "
        "Expected size 64 but got size 128 for tensor number 1 in the list."
    )
    refusals: list[ModelRunnerError] = []
    for options in ({}, {"reference_path": True}):
        with pytest.raises(InternalError) as refused:
            client.predict(multi.id, {"input0": input0, "input1": input1}, **options)  # type: ignore[arg-type]
        refusals.append(refused.value)
    for error in refusals:
        assert error.message == message
        assert error.details == {
            "model": "Multi-tensor",
            "inputs": "'input0' (1, 1, 64, 64), 'input1' (1, 1, 128, 128)",
        }
    v2_error = _v2(stub, multi.id, {"input0": input0, "input1": input1})
    assert v2_error.code() == grpc.StatusCode.INTERNAL
    assert v2_error.details() == message
    for text in (message, v2_error.details()):
        assert "Traceback" not in text and "code/__torch__" not in text
