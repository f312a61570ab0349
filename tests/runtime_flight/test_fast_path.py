"""The fast path serves a model only after it matched bioimageio.core on the package's test
inputs; otherwise, and on request, bioimageio.core's pipeline serves it, and the runtime says
which path serves each model and why."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelrunner.client import ModelRunnerClient
from modelrunner.errors import FailedPreconditionError, InvalidArgumentError
from modelrunner.predict_request import PredictRequest
from modelrunner.runtime_flight import fast_path
from modelrunner.runtime_flight.pipelines import PipelinePool, create_pipeline
from tests.reference import Pipelines, descr, sample_inputs
from tests.runtime_flight.predicting import predict, request, warm_pipeline
from tests.zoo import MULTI, NUCLEI, needs_zoo

Tiny = Callable[[str], Path]


@pytest.fixture(scope="module")
def pipelines() -> Pipelines:
    """Pipelines of this module's own: a checked fast path changes how a pipeline predicts,
    and other tests compare the shared ones with bioimageio.core bit for bit."""
    return Pipelines()


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("onnx", "onnx"),
        ("torchscript", "torchscript"),
        ("pytorch_state_dict", "pytorch_state_dict"),
        ("halo", "pytorch_state_dict"),
        ("two_inputs", "pytorch_state_dict"),
        ("heavy_processing", "onnx"),
    ],
)
def test_tiny_models_take_the_fast_path(
    tiny: Tiny, pipelines: Pipelines, name: str, fmt: str
) -> None:
    package = tiny(name)
    pipeline = pipelines.get(package, fmt)
    warmed = warm_pipeline(pipeline, fmt, "cpu")
    serving = warmed.serving
    assert serving.name == "fast", serving.reason
    inputs = sample_inputs(package)
    fast = predict(warmed, inputs)
    reference = predict(warmed, inputs, reference_path=True)
    assert (fast.path, reference.path) == ("fast", "reference")
    for k in reference:
        assert fast[k].dtype == reference[k].dtype
        np.testing.assert_allclose(fast[k], reference[k], rtol=0, atol=1e-5)


@needs_zoo
@pytest.mark.parametrize(
    ("package", "fmt"), [(NUCLEI, "onnx"), (NUCLEI, "torchscript"), (MULTI, "torchscript")]
)
def test_zoo_models_take_the_fast_path_and_match_their_test_outputs(
    pipelines: Pipelines, package: Path, fmt: str
) -> None:
    pipeline = pipelines.get(package, fmt)
    warmed = warm_pipeline(pipeline, fmt, "cpu")
    serving = warmed.serving
    assert serving.name == "fast", serving.reason
    assert "max |difference|" in serving.reason
    model = descr(package)
    outputs = predict(warmed, sample_inputs(package))
    assert outputs.path == "fast"
    for t in model.outputs:
        assert t.test_tensor is not None
        expected = np.load(package / Path(str(t.test_tensor.source)).name)
        np.testing.assert_allclose(outputs[str(t.id)], expected, rtol=0, atol=1e-4)


def test_inputs_of_another_dtype_take_the_fast_path(tiny: Tiny, pipelines: Pipelines) -> None:
    pipeline = pipelines.get(tiny("onnx"), "onnx")
    warmed = warm_pipeline(pipeline, "onnx", "cpu")
    x = np.arange(64, dtype=np.uint8).reshape(1, 1, 8, 8)
    outputs = predict(warmed, x)
    assert outputs.path == "fast"
    np.testing.assert_array_equal(outputs["output"], x.astype(np.float32))


def test_calls_the_fast_path_does_not_cover_take_the_pipeline(
    tiny: Tiny, pipelines: Pipelines
) -> None:
    """Skipped processing runs bioimageio.core's pipeline (the fast path was checked with the
    model's processing), and so does a call that asks for the reference."""
    pipeline = pipelines.get(tiny("torchscript"), "torchscript")  # sizes 16 + n*8
    warmed = warm_pipeline(pipeline, "torchscript", "cpu")
    x = np.random.default_rng(0).random((1, 1, 24, 24), dtype=np.float32)
    assert predict(warmed, x).path == "fast"
    for options in (
        {"skip_preprocessing": True},
        {"skip_postprocessing": True},
        {"reference_path": True},
    ):
        assert predict(warmed, x, **options).path == "reference"
    padded = np.random.default_rng(1).random((1, 1, 20, 20), dtype=np.float32)
    assert predict(warmed, padded, reference_path=True).path == ("reference")


def test_a_fast_path_that_deviates_is_not_used(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attacks the check with a fast path whose outputs are off by 0.01: the model is served
    by bioimageio.core and the reason names the output and the deviation."""
    real = fast_path.FastPath.predict

    def off(self: fast_path.FastPath, arrays: Any, *, nan_possible: bool) -> dict[str, Any]:
        return {
            k: v + np.float32(0.01)
            for k, v in real(self, arrays, nan_possible=nan_possible).items()
        }

    monkeypatch.setattr(fast_path.FastPath, "predict", off)
    package = tiny("onnx")
    pipeline = create_pipeline(descr(package), "onnx", "cpu")
    try:
        warmed = warm_pipeline(pipeline, "onnx", "cpu")
        serving = warmed.serving
        assert serving.name == "reference"
        assert "output 'output' deviates from bioimageio.core" in serving.reason
        assert "max |difference| 1.00e-02" in serving.reason
        assert predict(warmed, sample_inputs(package)).path == "reference"
    finally:
        pipeline.unload()


def test_a_fast_path_that_fails_is_not_used(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: fast_path.FastPath, arrays: Any, *, nan_possible: bool) -> dict[str, Any]:
        raise RuntimeError("no such kernel")

    monkeypatch.setattr(fast_path.FastPath, "predict", broken)
    pipeline = create_pipeline(descr(tiny("onnx")), "onnx", "cpu")
    try:
        warmed = warm_pipeline(pipeline, "onnx", "cpu")
        serving = warmed.serving
        assert serving.name == "reference"
        assert serving.reason == (
            "the fast path failed on the package's test inputs: RuntimeError: no such kernel"
        )
    finally:
        pipeline.unload()


def test_the_pool_reports_the_serving_path(tiny: Tiny) -> None:
    package = tiny("onnx")
    on = PipelinePool(lambda _: package)
    off = PipelinePool(lambda _: package, fast_path=False)
    try:
        loaded = on.load("tiny").model
        assert loaded.serving_path == "fast"
        assert loaded.serving_path_reason.startswith("matches bioimageio.core")
        loaded = off.load("tiny").model
        assert loaded.serving_path == "reference"
        assert "switched off" in loaded.serving_path_reason
    finally:
        on.close()
        off.close()


def test_describe_says_which_path_serves_the_model(client: ModelRunnerClient, tiny: Tiny) -> None:
    model = client.add_model(tiny("heavy_processing"))
    client.load(model.id)
    try:
        deadline = time.monotonic() + 10  # the runtime's heartbeat after a load is sent at once
        while not (loaded := client.describe(model.id).loaded) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [(m.serving_path, m.weight_format) for m in loaded] == [("fast", "onnx")]
        assert loaded[0].serving_path_reason.startswith("matches bioimageio.core")
    finally:
        client.remove_model(model.id)


def test_reduced_precision_is_measured_and_reported(tiny: Tiny) -> None:
    package = tiny("torchscript")
    pool = PipelinePool(lambda _: package)
    try:
        with pool.use("tiny") as warm:
            x = np.random.default_rng(0).random((1, 1, 24, 24), dtype=np.float32)
            full = predict(warm, x)
            for precision in ("bfloat16", "float16"):
                reduced = predict(warm, x, precision=precision)
                assert reduced.path == "fast"
                assert reduced["out"].dtype == np.float32
                np.testing.assert_allclose(reduced["out"], full["out"], rtol=0, atol=0.05)
        errors = pool.loaded()[0].precision_max_abs_error
        assert set(errors) == {"bfloat16", "float16"}
        assert all(0 < e < 0.05 for e in errors.values())
    finally:
        pool.close()


def test_reduced_precision_where_the_fast_path_cannot_go_is_refused(
    tiny: Tiny, pipelines: Pipelines
) -> None:
    """Attacks the precision option with calls that cannot honour it: an ONNX network, an
    input that must be padded, and a bad precision name. Each is refused, none runs silently at
    full precision."""
    onnx = pipelines.get(tiny("onnx"), "onnx")
    onnx_warm = warm_pipeline(onnx, "onnx", "cpu")
    x = np.zeros((1, 1, 8, 8), np.float32)
    with pytest.raises(FailedPreconditionError) as caught:
        predict(onnx_warm, x, precision="float16")
    assert caught.value.message == (
        "float16 precision runs on the fast path with PyTorch or TorchScript weights only, and "
        "this call cannot take it: the onnx network has no reduced precision"
    )
    script = pipelines.get(tiny("torchscript"), "torchscript")  # sizes 16 + n*8
    script_warm = warm_pipeline(script, "torchscript", "cpu")
    with pytest.raises(FailedPreconditionError, match="the input must be padded or tiled"):
        predict(
            script_warm,
            np.zeros((1, 1, 20, 20), np.float32),
            precision="bfloat16",
        )
    with pytest.raises(InvalidArgumentError, match="precision must be 'float16' or 'bfloat16'"):
        request(precision="int8")
    with pytest.raises(InvalidArgumentError, match="cannot go with reference_path"):
        request(precision="float16", reference_path=True)


def test_streams_stack_frames_on_a_gpu_only_unless_told(tiny: Tiny) -> None:
    from modelrunner.runtime_flight.service import GPU_STREAM_BATCH, RuntimeService
    from modelrunner.settings import Settings

    package = tiny("onnx")
    service = RuntimeService(Settings(device="cpu"), lambda _: package)
    try:
        assert service.stream_batch_limit(PredictRequest(model_id="tiny")) == 1
        assert service.stream_batch_limit(PredictRequest(model_id="tiny", max_batch_size=4)) == 4
        assert GPU_STREAM_BATCH == 8
    finally:
        service.close()


def test_a_fast_path_that_cannot_be_built_leaves_the_model_to_bioimageio_core(
    tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(fast_path, "build_fast_path", broken)
    pool = PipelinePool(lambda _: tiny("onnx"))
    try:
        loaded = pool.load("tiny").model
        assert loaded.serving_path == "reference"
        assert loaded.serving_path_reason == (
            "building the fast path failed: RuntimeError: CUDA error: out of memory"
        )
    finally:
        pool.close()


def test_unloading_drops_the_fast_path(tiny: Tiny) -> None:
    pool = PipelinePool(lambda _: tiny("torchscript"))
    with pool.use("tiny") as warm:
        assert warm.fast is not None
    pool.unload("tiny")
    assert warm.fast is None
    pool.close()


def test_a_reduced_precision_that_fails_is_refused_and_withdrawn(
    tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attacks the precision option with a network that fails in reduced precision: the call
    is refused with FAILED_PRECONDITION, and the precision is no longer offered."""
    real = fast_path.FastPath.predict

    def no_half(self: fast_path.FastPath, arrays: Any, **kwargs: Any) -> dict[str, Any]:
        if kwargs.get("precision") == "float16":
            raise RuntimeError("\"slow_conv2d_cpu\" not implemented for 'Half'")
        return real(self, arrays, **kwargs)

    monkeypatch.setattr(fast_path.FastPath, "predict", no_half)
    pool = PipelinePool(lambda _: tiny("torchscript"))
    try:
        with pool.use("tiny") as warm:
            x = np.zeros((1, 1, 24, 24), np.float32)
            with pytest.raises(FailedPreconditionError, match="float16 precision fails on this"):
                predict(warm, x, precision="float16")
            with pytest.raises(FailedPreconditionError) as caught:
                predict(warm, x, precision="float16")
            assert caught.value.message == (
                "float16 precision fails on this model: "
                "RuntimeError: \"slow_conv2d_cpu\" not implemented for 'Half'"
            )
            assert predict(warm, x, precision="bfloat16").path == "fast"
    finally:
        pool.close()


@pytest.mark.parametrize(
    ("name", "fmt", "shape", "blocksize"),
    [
        ("torchscript", "torchscript", (1, 1, 20, 20), None),  # padded to 24
        ("halo", "pytorch_state_dict", (1, 1, 90, 70), 1),  # tiled, with a halo
        ("heavy_processing", "onnx", (1, 1, 200, 136), 2),  # tiled, percentiles and sigmoid
    ],
)
def test_padded_and_tiled_inputs_take_the_fast_processing(
    tiny: Tiny,
    pipelines: Pipelines,
    name: str,
    fmt: str,
    shape: tuple[int, ...],
    blocksize: int | None,
) -> None:
    """A padded or tiled sample's processing runs as torch operations on the whole sample and
    bioimageio.core predicts the blocks: the same results as its own blockwise prediction."""
    pipeline = pipelines.get(tiny(name), fmt)
    warmed = warm_pipeline(pipeline, fmt, "cpu")
    x = np.random.default_rng(3).gamma(2.0, 10.0, shape).astype(np.float32)
    steps: list[tuple[int, int]] = []
    fast = predict(
        warmed,
        x,
        blocksize=blocksize,
        progress=lambda done, total: steps.append((done, total)),
    )
    reference = predict(warmed, x, blocksize=blocksize, reference_path=True)
    assert (fast.path, reference.path) == ("fast", "reference")
    if blocksize is not None:
        assert steps and steps[-1][0] == steps[-1][1] > 1
    for k in reference:
        assert fast[k].shape == reference[k].shape and fast[k].dtype == reference[k].dtype
        np.testing.assert_allclose(fast[k], reference[k], rtol=1e-5, atol=1e-5)


def test_tiles_go_through_the_network_in_stacks(
    tiny: Tiny, pipelines: Pipelines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of a model whose batch axis is free reach the network several at a time."""
    pipeline = pipelines.get(tiny("heavy_processing"), "onnx")
    warmed = warm_pipeline(pipeline, "onnx", "cpu")
    stacks: list[int] = []
    real = fast_path.FastPath.run_network

    def counting(self: fast_path.FastPath, arrays: Any) -> dict[str, Any]:
        stacks.append(arrays["input"].shape[0])
        return real(self, arrays)

    monkeypatch.setattr(fast_path.FastPath, "run_network", counting)
    x = np.random.default_rng(0).random((1, 1, 200, 136), dtype=np.float32)
    steps: list[tuple[int, int]] = []
    predict(
        warmed,
        x,
        blocksize=2,
        progress=lambda done, total: steps.append((done, total)),
    )
    blocks = steps[-1][1]
    assert sum(stacks) == blocks > 8
    assert max(stacks) == 8  # device_tiles.BLOCKS_PER_CALL


@needs_zoo
def test_the_nuclei_model_tiled_on_the_fast_path(pipelines: Pipelines) -> None:
    """A fixed 512x512 model with an output halo, on a 1024x700 image: bioimageio.core's own
    blocks, one per network call (its batch axis is fixed), the same results."""
    pipeline = pipelines.get(NUCLEI, "onnx")
    warmed = warm_pipeline(pipeline, "onnx", "cpu")
    x = np.tile(np.load(NUCLEI / "test_input.npy"), (1, 1, 2, 2))[..., :1024, :700]
    fast = predict(warmed, x)
    reference = predict(warmed, x, reference_path=True)
    assert fast.path == "fast"
    np.testing.assert_allclose(fast["probability"], reference["probability"], rtol=0, atol=1e-5)
