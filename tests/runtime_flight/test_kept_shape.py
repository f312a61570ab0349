"""``PredictRequest.keep_shape``: bioimageio.core's own call on the sample exactly as sent, the
network alone when both processing steps are skipped (what a bioimageio.core model adapter on a
modelrunner server asks for)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from bioimageio.core import Sample, Tensor
from bioimageio.spec.model import v0_5

from modelrunner.client import ModelInfo
from modelrunner.errors import InvalidArgumentError, ResourceExhaustedError
from modelrunner.predict_command import from_command
from modelrunner.predict_request import PredictRequest
from modelrunner.runtime_flight.server import RuntimeFlightServer
from modelrunner.v1 import runtime_pb2
from tests.reference import Pipelines, descr
from tests.runtime_flight.predicting import predict, request

Tiny = Callable[[str], Path]
BCYX = ("batch", "channel", "y", "x")
NETWORK_ONLY = {"keep_shape": True, "skip_preprocessing": True, "skip_postprocessing": True}


def test_the_network_alone_runs_a_shape_outside_the_model_sizes_as_sent(
    tiny: Tiny, pipelines: Pipelines
) -> None:
    """25x25 is not 20 + n*12: fitted, it would be padded to 32x32; kept, the convolution runs
    on 25x25 as bioimageio.core's model adapter would run it."""
    package = tiny("parameterized")
    pipeline = pipelines.get(package, "pytorch_state_dict")
    image = np.random.default_rng(1).random((1, 1, 25, 25), dtype=np.float32)
    ours = predict(pipeline, {"raw": image}, **NETWORK_ONLY)["out"]
    sample = Sample(members={"raw": Tensor(image, dims=BCYX)}, stat={}, id=None)  # type: ignore[dict-item]
    core = pipeline.predict_sample_without_blocking(
        sample,
        skip_preprocessing=True,
        skip_postprocessing=True,
        skip_input_padding=True,
        skip_output_cropping=True,
    )
    np.testing.assert_array_equal(ours, core.members["out"].data.to_numpy())  # type: ignore[index]


def test_a_blocksize_is_bioimageio_cores_blockwise_prediction(
    tiny: Tiny, pipelines: Pipelines
) -> None:
    package = tiny("halo")
    pipeline = pipelines.get(package, "pytorch_state_dict")
    image = np.random.default_rng(2).random((1, 1, 80, 96), dtype=np.float32)
    ours = predict(pipeline, {"raw": image}, keep_shape=True, blocksize=1)
    sample = Sample(members={"raw": Tensor(image, dims=BCYX)}, stat={}, id=None)  # type: ignore[dict-item]
    core = pipeline.predict_sample_with_blocking(sample, ns=1)
    want = core.members["out"].data.transpose(*[a.id for a in descr(package).outputs[0].axes])  # type: ignore[index]
    np.testing.assert_allclose(ours["out"], want.to_numpy(), rtol=1e-6, atol=1e-6)


def test_keep_shape_with_reduced_precision_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="fast path"):
        request(keep_shape=True, precision="float16")


def test_the_command_field_reaches_the_request() -> None:
    command = runtime_pb2.PredictCommand(model_id="m", keep_shape=True)
    assert from_command(command).keep_shape
    assert not from_command(runtime_pb2.PredictCommand(model_id="m")).keep_shape


def test_a_frame_stream_with_keep_shape_is_refused(
    runtime: RuntimeFlightServer, identity: ModelInfo
) -> None:
    stream = PredictRequest(model_id=identity.id, keep_shape=True)
    frame = {"raw": np.zeros((1, 1, 8, 8), np.float32)}
    results = runtime.service.predict_frames(stream, [frame, frame])
    assert all(isinstance(r, InvalidArgumentError) for r in results)
    assert "frame streams" in str(results[0])


@pytest.mark.parametrize("blocksize", [None, 1000], ids=["whole", "huge-blocks"])
def test_a_kept_sample_or_block_beyond_the_tile_bound_is_refused(
    tiny: Tiny, pipelines: Pipelines, blocksize: int | None
) -> None:
    """Attack: keep_shape to make the network take a whole sample (or blocks) larger than the
    bound every other call is tiled under."""
    pipeline = pipelines.get(tiny("halo"), "pytorch_state_dict")
    image = np.zeros((1, 1, 64, 64), np.float32)
    options = {"keep_shape": True, "blocksize": blocksize, "max_tile_input_bytes": 8192}
    with pytest.raises(ResourceExhaustedError, match="max_tile_input_bytes") as caught:
        predict(pipeline, {"raw": image}, **options)
    assert caught.value.details["limit"] == "max_tile_input_bytes"


def test_blocksize_zero_is_checked_at_the_blocksize_bioimageio_core_uses(
    tiny: Tiny, pipelines: Pipelines
) -> None:
    """Attack: blocksize 0 passes the bound as the smallest block, but bioimageio.core runs
    ``ns or default``: its default blocksize, whose blocks (halo included) exceed the bound."""
    package = tiny("halo")
    pipeline = pipelines.get(package, "pytorch_state_dict")
    model = descr(package)

    def block_bytes(n: int) -> int:
        ns = {
            (t.id, a.id): n
            for t in model.inputs
            for a in t.axes
            if isinstance(a.size, v0_5.ParameterizedSize)
        }
        shape = model.get_tensor_sizes(ns, 1).inputs[model.inputs[0].id]
        return int(np.prod(list(shape.values()))) * 4  # float32 at the network's input

    default = pipeline._default_blocksize_parameter
    assert isinstance(default, int) and block_bytes(0) < block_bytes(default)
    image = np.zeros((1, 1, 256, 256), np.float32)
    options = {"keep_shape": True, "blocksize": 0, "max_tile_input_bytes": block_bytes(0)}
    with pytest.raises(ResourceExhaustedError, match="max_tile_input_bytes") as caught:
        predict(pipeline, {"raw": image}, **options)
    assert caught.value.details["got"] == str(block_bytes(default))
    assert caught.value.details["limit"] == "max_tile_input_bytes"
