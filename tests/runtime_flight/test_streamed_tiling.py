"""Streamed tiled prediction: the outputs come in bands of rows and equal bioimageio.core's
blockwise prediction."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from bioimageio.core import Sample, Tensor
from bioimageio.spec.model import v0_5

from modelrunner.errors import CancelledError
from modelrunner.runtime_flight.outputs import Outputs, StreamedOutputs
from tests.reference import Pipelines
from tests.runtime_flight.predicting import predict, start
from tests.zoo import NUCLEI, needs_zoo

Tiny = Callable[[str], Path]
STREAM = {"stream_tiles_min_bytes": 0}


def _image(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 1000).astype(dtype)


def _core_tiled(pipeline, inputs: dict[str, np.ndarray], **kwargs: object) -> dict:  # type: ignore[no-untyped-def]
    """bioimageio.core's own blockwise prediction, assembled whole."""
    model = pipeline.model_description
    sample = Sample(
        members={
            t.id: Tensor(inputs[str(t.id)], dims=[a.id for a in t.axes]) for t in model.inputs
        },
        stat={},
        id=None,
    )
    out = pipeline.predict_sample_with_blocking(sample, **kwargs)
    return {str(m): t.data.to_numpy() for m, t in out.members.items()}


def _assemble(stream: StreamedOutputs) -> tuple[dict[str, np.ndarray], int]:
    """The outputs put together from their bands, and the number of bands."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in stream.shapes}
    count = 0
    for bands in stream.bands:
        count += 1
        assert set(bands) == set(stream.shapes)
        for name, band in bands.items():
            assert band.flags.c_contiguous
            assert band.dtype == stream.dtypes[name]
            parts[name].append(band.copy())
    return {
        name: np.concatenate([p.reshape(-1) for p in ps]).reshape(stream.shapes[name])
        for name, ps in parts.items()
    }, count


def _streamed(pipeline, inputs, **options: object) -> tuple[dict[str, np.ndarray], int]:  # type: ignore[no-untyped-def]
    result = start(pipeline, inputs, **STREAM, **options)
    assert isinstance(result, StreamedOutputs), "expected a streamed prediction"
    return _assemble(result)


@pytest.mark.parametrize("dtype", ["float32", "uint16"])
@pytest.mark.parametrize("blocksize", [0, 2, 5])
def test_halo_model_bands_equal_bioimageio_core(
    pipelines: Pipelines, tiny: Tiny, dtype: str, blocksize: int
) -> None:
    """5x5 convolution, output halo 4, reflect padding, sample-wise zero-mean-unit-variance."""
    pipeline = pipelines.get(tiny("halo"), "pytorch_state_dict")
    image = _image((1, 1, 200, 150), dtype)
    got, bands = _streamed(pipeline, {"raw": image}, blocksize=blocksize)
    # a mapping: bioimageio.core takes an int 0 for "not given"
    ns = {(v0_5.TensorId("raw"), v0_5.AxisId(a)): blocksize for a in ("y", "x")}
    expected = _core_tiled(pipeline, {"raw": image}, ns=ns)
    assert bands > 1
    assert got["out"].shape == expected["out"].shape == (1, 1, 200, 150)
    np.testing.assert_allclose(got["out"], expected["out"], rtol=1e-5, atol=1e-5)


@needs_zoo
@pytest.mark.parametrize("dtype", ["float32", "uint16"])
def test_nuclei_bands_equal_bioimageio_core(pipelines: Pipelines, dtype: str) -> None:
    """Fixed 512x512 input, output halo 32: 12 blocks of 448x448 for 1500x1300."""
    pipeline = pipelines.get(NUCLEI, "onnx")
    image = _image((1, 1, 1500, 1300), dtype, seed=3)
    got, bands = _streamed(pipeline, {"raw": image})
    expected = _core_tiled(pipeline, {"raw": image})
    # one band per row of blocks; the last row overlaps the one before, whose rows it shares go
    # out in a piece of their own
    assert bands == 5
    assert got["probability"].dtype == np.float32
    np.testing.assert_allclose(got["probability"], expected["probability"], atol=1e-5)


def test_two_outputs_stream_together(pipelines: Pipelines, tiny: Tiny) -> None:
    pipeline = pipelines.get(tiny("two_inputs"), "pytorch_state_dict")
    inputs = {"a": _image((1, 1, 120, 88), "float32"), "b": _image((1, 1, 120, 88), "float32", 1)}
    got, bands = _streamed(pipeline, inputs, blocksize=2)
    expected = _core_tiled(pipeline, inputs, ns=2)
    assert bands > 1
    for name in ("first", "second"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-6)


def test_fixed_size_outputs_that_follow_their_input_stream(
    pipelines: Pipelines, tiny: Tiny
) -> None:
    """CAREamics-style outputs (fixed size equal to the input's) are placed like the assembled
    prediction places them."""
    pipeline = pipelines.get(tiny("fixed_output"), "pytorch_state_dict")
    image = _image((1, 1, 100, 70), "float32")
    got, _ = _streamed(pipeline, {"raw": image})
    expected = predict(pipeline, {"raw": image})
    np.testing.assert_allclose(got["out"], expected["out"], rtol=1e-6, atol=1e-6)


def test_skipping_preprocessing_casts_block_by_block(pipelines: Pipelines, tiny: Tiny) -> None:
    pipeline = pipelines.get(tiny("halo"), "pytorch_state_dict")
    image = _image((1, 1, 130, 120), "uint16")
    got, _ = _streamed(pipeline, {"raw": image}, blocksize=1, skip_preprocessing=True)
    expected = _core_tiled(
        pipeline, {"raw": image.astype("float32")}, ns=1, skip_preprocessing=True
    )
    np.testing.assert_array_equal(got["out"], expected["out"])


def test_bands_leave_before_the_last_block_is_predicted(pipelines: Pipelines, tiny: Tiny) -> None:
    pipeline = pipelines.get(tiny("halo"), "pytorch_state_dict")
    events: list[str] = []
    result = start(
        pipeline,
        {"raw": _image((1, 1, 200, 150), "float32")},
        blocksize=2,
        **STREAM,
        progress=lambda done, total: events.append(f"block {done}/{total}"),
    )
    assert isinstance(result, StreamedOutputs)
    assert events == [f"block 1/{result.blocks}"]  # the first block runs before bands are read
    rows = 0
    for bands in result.bands:
        rows += bands["out"].shape[2]
        events.append(f"rows {rows}")
    assert rows == 200
    assert events.index("rows 200") == len(events) - 1
    first_band = next(i for i, e in enumerate(events) if e.startswith("rows"))
    assert first_band < events.index(f"block {result.blocks}/{result.blocks}")


def test_small_and_padded_inputs_are_assembled_whole(pipelines: Pipelines, tiny: Tiny) -> None:
    pipeline = pipelines.get(tiny("halo"), "pytorch_state_dict")
    image = _image((1, 1, 200, 150), "float32")
    below = start(
        pipeline,
        {"raw": image},
        blocksize=2,
        stream_tiles_min_bytes=1 << 30,
    )
    assert isinstance(below, Outputs)
    # blocks of 32 + 16 * 20 = 352 pixels are larger than the image: the plan pads it
    padded = start(pipeline, {"raw": image}, blocksize=20, **STREAM)
    assert isinstance(padded, Outputs)
    np.testing.assert_array_equal(
        padded.arrays["out"],
        predict(pipeline, {"raw": image}, blocksize=20)["out"],
    )


def test_cancelling_stops_between_blocks(pipelines: Pipelines, tiny: Tiny) -> None:
    pipeline = pipelines.get(tiny("halo"), "pytorch_state_dict")
    cancel = {"now": False}
    result = start(
        pipeline,
        {"raw": _image((1, 1, 200, 150), "float32")},
        blocksize=2,
        **STREAM,
        cancelled=lambda: cancel["now"],
    )
    assert isinstance(result, StreamedOutputs)
    next(result.bands)
    cancel["now"] = True
    with pytest.raises(CancelledError):
        next(result.bands)
    # the pipeline is intact for the next request
    image = _image((1, 1, 64, 64), "float32")
    np.testing.assert_array_equal(
        predict(pipeline, {"raw": image})["out"], _core_whole(pipeline, image)
    )


def _core_whole(pipeline, image: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    sample = Sample(
        members={v0_5.TensorId("raw"): Tensor(image, dims=("batch", "channel", "y", "x"))},
        stat={},
        id=None,
    )
    out = pipeline.predict_sample_without_blocking(
        sample, skip_input_padding=True, skip_output_cropping=True
    )
    return out.members[v0_5.TensorId("out")].data.to_numpy()


def test_samplewise_postprocessing_is_assembled_whole(pipelines: Pipelines, tiny: Tiny) -> None:
    """Cellpose's flow decoding needs the whole output."""
    pytest.importorskip("cellpose")
    pipeline = pipelines.get(tiny("cellpose"), "pytorch_state_dict")
    image = _image((1, 1, 96, 80), "float32")
    result = start(pipeline, {"raw": image}, blocksize=1, **STREAM)
    assert isinstance(result, Outputs)


def _build_three_channel_output(directory: Path) -> Path:
    """A 3x3 convolution from one channel to three: outputs (batch, channel=3, y, x)."""
    import tempfile

    from tests import tiny_models as tm

    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        net = tm._tiny_conv_net(3, out_channels=3)
        weights = tm._state_dict_weights(
            staging, net, "TinyConvNet", {"kernel_size": 3, "out_channels": 3}
        )
        model = tm._model(
            "tiny-three-channels",
            [tm._input("raw", tm._test_input(staging, "raw", (1, 1, 24, 24)), size=(16, 8))],
            [
                tm._output(
                    "out",
                    tm._placeholder(staging, "out", (1, 3, 24, 24), "float32"),
                    reference="raw",
                    channels=("c0", "c1", "c2"),
                )
            ],
            weights,
        )
        return tm._finish(model, staging, directory)


def test_outputs_with_channels_before_the_rows_are_assembled_whole(
    pipelines: Pipelines, tmp_path: Path
) -> None:
    """Rows of a (batch, channel=3, y, x) output are not contiguous in C order."""
    package = _build_three_channel_output(tmp_path / "three")
    pipeline = pipelines.get(package, "pytorch_state_dict")
    image = _image((1, 1, 64, 48), "float32")
    result = start(pipeline, {"raw": image}, blocksize=1, **STREAM)
    assert isinstance(result, Outputs)
    assert result.arrays["out"].shape == (1, 3, 64, 48)
    np.testing.assert_allclose(
        result.arrays["out"], _core_tiled(pipeline, {"raw": image}, ns=1)["out"], rtol=1e-6
    )
