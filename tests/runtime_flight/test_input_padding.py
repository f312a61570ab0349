"""``input_padding="halo"``: bioimageio.core.predict()'s own call (the sample padded by the
outputs' halo, processed, run and cropped), end to end: the request and its converters, the
runtime's plane, the Python client, the command line and the Open Inference parameter all give
what ``bioimageio.core.predict()`` gives, where the default (no halo padding) does not."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from bioimageio.core import PredictionPipeline
from bioimageio.core import predict as core_predict

from modelrunner.client import FrameError, ModelRunnerClient
from modelrunner.errors import InvalidArgumentError
from modelrunner.open_inference import grpc_predict_v2_pb2 as v2
from modelrunner.open_inference import grpc_predict_v2_pb2_grpc as v2_grpc
from modelrunner.predict_command import from_command, to_command
from modelrunner.runtime_flight.descriptions import load_description
from modelrunner.runtime_flight.pipelines import create_pipeline
from modelrunner.serving import RunningServer
from modelrunner.types import ModelInfo
from tests.reference import Pipelines
from tests.runtime_flight.predicting import predict, request
from tests.zoo import NUCLEI, needs_zoo

Tiny = Callable[[str], Path]
TOLERANCE = 1e-4


def _core_predict(package: Path, weight_format: str, inputs: dict[str, np.ndarray]) -> dict:
    """``bioimageio.core.predict()`` with its defaults, on a pipeline of its own (it unloads the
    pipeline it is given)."""
    pipeline: PredictionPipeline = create_pipeline(
        load_description(package, "core"), weight_format, "cpu"
    )
    sample = core_predict(model=pipeline, inputs=inputs)
    outputs = pipeline.model_description.outputs
    return {
        str(t.id): sample.members[t.id].data.transpose(*[a.id for a in t.axes]).to_numpy()
        for t in outputs
    }


@pytest.fixture(scope="module")
def nuclei_core() -> dict[str, np.ndarray]:
    x = np.load(NUCLEI / "test_input.npy")
    return {"input": x, **_core_predict(NUCLEI, "torchscript", {"raw": x})}


def test_the_option_travels_in_the_command_and_back() -> None:
    halo = request(input_padding="halo")
    command = to_command(halo)
    assert command.input_padding == "halo"
    assert from_command(command).input_padding == "halo"
    assert to_command(request()).input_padding == ""  # the default: an unset field
    assert from_command(to_command(request())).input_padding == "none"


def test_a_padding_that_does_not_exist_or_cannot_go_with_precision_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="input_padding must be 'none' or 'halo'"):
        request(input_padding="reflect")
    with pytest.raises(InvalidArgumentError, match=r"runs bioimageio\.core's pipeline"):
        request(input_padding="halo", precision="float16")


@needs_zoo
def test_nuclei_outputs_equal_bioimageio_core_predict(
    pipelines: Pipelines, nuclei_core: dict[str, np.ndarray]
) -> None:
    """512x512 is padded by the halo of 32 to 576x576 (which the TorchScript network takes),
    the outputs cropped back; without the option the runtime runs bioimageio.core's model-test
    call, which differs near the borders."""
    pipeline = pipelines.get(NUCLEI, "torchscript")
    x, want = nuclei_core["input"], nuclei_core["probability"]
    got = predict(pipeline, {"raw": x}, input_padding="halo")["probability"]
    assert got.shape == want.shape == (1, 1, 512, 512)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)
    unpadded = predict(pipeline, {"raw": x})["probability"]
    assert np.abs(unpadded - want).max() > 0.01


def test_a_tiny_halo_model_equals_bioimageio_core_predict(pipelines: Pipelines, tiny: Tiny) -> None:
    """A parameterized model with an output halo of 4 and reflect padding, at a size its
    description allows (no zoo needed)."""
    package = tiny("halo")
    x = (np.random.default_rng(4).random((1, 1, 64, 80)) * 100).astype(np.float32)
    want = _core_predict(package, "pytorch_state_dict", {"raw": x})["out"]
    got = predict(pipelines.get(package, "pytorch_state_dict"), {"raw": x}, input_padding="halo")
    assert got.path == "reference"
    np.testing.assert_allclose(got["out"], want, rtol=0, atol=TOLERANCE)


@needs_zoo
def test_the_python_client_sends_it(
    client: ModelRunnerClient, nuclei: ModelInfo, nuclei_core: dict[str, np.ndarray]
) -> None:
    got = client.predict(
        nuclei.id, nuclei_core["input"], weight_format="torchscript", input_padding="halo"
    )["probability"]
    np.testing.assert_allclose(got, nuclei_core["probability"], rtol=0, atol=TOLERANCE)


def test_a_frame_stream_refuses_it(client: ModelRunnerClient, identity: ModelInfo) -> None:
    frame = np.zeros((1, 1, 16, 16), np.float32)
    options = {"input_padding": "halo"}  # not a stream's option: the runtime says so per frame
    stream = client.predict_stream(identity.id, [frame], **options)  # type: ignore[arg-type]
    with stream, pytest.raises(FrameError, match="not frame streams") as refused:
        next(stream)
    assert isinstance(refused.value.cause, InvalidArgumentError)


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[v2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield v2_grpc.GRPCInferenceServiceStub(channel)


@needs_zoo
def test_the_open_inference_parameter_sets_it(
    stub: v2_grpc.GRPCInferenceServiceStub,
    nuclei: ModelInfo,
    nuclei_core: dict[str, np.ndarray],
) -> None:
    x = nuclei_core["input"]
    infer = v2.ModelInferRequest(
        model_name=nuclei.id,
        inputs=[v2.ModelInferRequest.InferInputTensor(name="raw", datatype="FP32", shape=x.shape)],
        raw_input_contents=[x.tobytes()],
    )
    infer.parameters["weight_format"].string_param = "torchscript"
    infer.parameters["input_padding"].string_param = "halo"
    response = stub.ModelInfer(infer, timeout=120)
    got = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(x.shape)
    np.testing.assert_allclose(got, nuclei_core["probability"], rtol=0, atol=TOLERANCE)
    infer.parameters["input_padding"].string_param = "mirror"
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(infer, timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input_padding must be 'none' or 'halo', got 'mirror'" in str(refused.value.details())


@needs_zoo
def test_the_command_line_takes_it(
    server: RunningServer, nuclei: ModelInfo, nuclei_core: dict[str, np.ndarray], tmp_path: Path
) -> None:
    image = tmp_path / "nuclei.npy"
    np.save(image, nuclei_core["input"])
    out = tmp_path / "out.npy"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelrunner.app.cli",
            "predict",
            nuclei.id,
            str(image),
            "-o",
            str(out),
            "--server",
            server.address,
            "--weight-format",
            "torchscript",
            "--input-padding",
            "halo",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    got = np.load(out)
    np.testing.assert_allclose(
        got.reshape(-1), nuclei_core["probability"].reshape(-1), rtol=0, atol=TOLERANCE
    )
