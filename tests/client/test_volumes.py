"""``client.predict_volume`` against real servers: block by block from OME-Zarr, TIFF, .npy and
arrays into OME-Zarr, equal to bioimageio.core's blockwise prediction of the whole array (2-D,
a stack run plane by plane, 3-D, the zoo's nuclei U-Net), over two runtimes (a runtime gone
before the first block leaves it to the others), resumed after a kill -9 to the same bytes with
the weights and device the run started with, refusing destinations of other runs, with the NGFF
pyramid metadata read back, blocks inside the volume sent as read, and memory that does not
grow with the volume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.flight as flight
import pytest
import tifffile
import zarr
from bioimageio.core import Sample, Tensor
from bioimageio.core.common import MemberId

from modelrunner import errors
from modelrunner.client import ModelInfo, ModelRunnerClient
from modelrunner.client._volume_prediction import _plan
from modelrunner.client._volume_run import read_block
from modelrunner.client._volume_sources import open_volume
from modelrunner.serving import RunningServer, start_embedded, start_runtime
from modelrunner.settings import Settings
from modelrunner.v1 import runtime_pb2
from tests.reference import Pipelines
from tests.zoo import NUCLEI, needs_zoo

Tiny = Callable[[str], Path]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def halo(client: ModelRunnerClient, tiny: Tiny) -> ModelInfo:
    """2-D 5x5 convolution, halo 4, sizes 32 + n*16, zero-mean-unit-variance over c, y, x."""
    return client.add_model(tiny("halo"))


@pytest.fixture(scope="module")
def halo_3d(client: ModelRunnerClient, tiny: Tiny) -> ModelInfo:
    return client.add_model(tiny("halo_3d"))


def _blockwise(
    pipelines: Pipelines, package: Path, array: np.ndarray, dims: tuple[str, ...], n: int,
    weight_format: str,
) -> np.ndarray:  # fmt: skip
    """bioimageio.core's blockwise prediction of the whole array, in process."""
    pipeline = pipelines.get(package, weight_format)
    tensor = Tensor(array.reshape((1, 1, *array.shape)), dims=("batch", "channel", *dims))
    sample = Sample(members={MemberId("raw"): tensor}, stat={}, id=None)
    out = pipeline.predict_sample_with_blocking(sample, ns=n)
    return next(iter(out.members.values())).data.to_numpy()[0, 0]


def _image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape, dtype=np.float32) * 1000 + 100).astype(np.float32)


def _ome_zarr(
    path: Path, data: np.ndarray, axes: str, *, version: str = "0.5",
    scale: list[float] | None = None, translation: list[float] | None = None,
    chunks: tuple[int, ...] | None = None,
) -> Path:  # fmt: skip
    """An OME-Zarr image with one level (and a second, halved in y and x, for levels)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3 if version == "0.5" else 2)
    group.create_array("0", data=data, chunks=chunks or data.shape)
    group.create_array("1", data=data[..., ::2, ::2].copy())
    names = {"t": ("t", "time"), "c": ("c", "channel"), "z": ("z", "space")}
    ngff_axes = [
        {"name": names.get(a, (a, "space"))[0], "type": names.get(a, (a, "space"))[1]}
        | ({"unit": "micrometer"} if a in "zyx" else {})
        for a in axes
    ]
    scale = scale or [1.0] * len(axes)
    datasets = []
    for level in (0, 1):
        factor = [2.0 if a in "yx" and level else 1.0 for a in axes]
        transforms: list[dict[str, object]] = [
            {"type": "scale", "scale": [s * f for s, f in zip(scale, factor, strict=True)]}
        ]
        if translation:
            transforms.append({"type": "translation", "translation": translation})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    multiscale = {"axes": ngff_axes, "datasets": datasets}
    if version == "0.5":
        group.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}
    else:
        group.attrs["multiscales"] = [{"version": "0.4", **multiscale}]
    return path


def read_ngff(path: Path) -> tuple[str, dict, list[np.ndarray]]:
    """An OME-Zarr image read as the NGFF specification says: its version, its first
    multiscale, and the array of each dataset in order (each checked against the axes)."""
    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    if "ome" in attrs:
        assert group.metadata.zarr_format == 3
        version, multiscale = attrs["ome"]["version"], attrs["ome"]["multiscales"][0]
        assert "version" not in multiscale
    else:
        assert group.metadata.zarr_format == 2
        multiscale = attrs["multiscales"][0]
        version = multiscale["version"]
    axes = multiscale["axes"]
    assert [a["type"] for a in axes if a["type"] == "space"] and len(axes) <= 5
    arrays = []
    for dataset in multiscale["datasets"]:
        array = group[dataset["path"]]
        assert isinstance(array, zarr.Array) and array.ndim == len(axes)
        kinds = [t["type"] for t in dataset["coordinateTransformations"]]
        assert kinds[0] == "scale" and kinds[1:] in ([], ["translation"])
        arrays.append(array[:])
    return version, multiscale, arrays


# -- equal to bioimageio.core -------------------------------------------------------------------


def test_a_2d_image_equals_bioimageio_cores_blockwise_prediction(
    client: ModelRunnerClient, halo: ModelInfo, tiny: Tiny, pipelines: Pipelines, tmp_path: Path
) -> None:
    """Blocks of 48 (n=1) with a halo of 4 over 137x150: the last blocks shifted back,
    symmetric... reflect padding at the edges, the statistics of the whole image."""
    data = _image((137, 150))
    result = client.predict_volume(halo.id, data, tmp_path / "out.ome.zarr", axes="yx", blocksize=1)
    assert (result.blocks, result.blocks_predicted, result.runtimes) == (16, 16, 1)
    written = zarr.open_group(str(tmp_path / "out.ome.zarr"), mode="r")["0"][:]
    expected = _blockwise(pipelines, tiny("halo"), data, ("y", "x"), 1, "pytorch_state_dict")
    np.testing.assert_allclose(written, expected, atol=1e-5)
    # and equal to the runtime's own tiling of the whole image with the same blocks
    tiled = client.predict(halo.id, data, blocksize=1)["out"][0, 0]
    np.testing.assert_allclose(written, tiled, atol=1e-5)


def test_a_stack_runs_plane_by_plane_each_with_its_own_statistics(
    client: ModelRunnerClient, halo: ModelInfo, tmp_path: Path
) -> None:
    """A z-stack through a 2-D model: each plane is a sample of its own (as `modelrunner
    predict` runs planes), normalised with its own statistics; x (40) smaller than a block (48)
    is padded at its end first, as the runtime's own tiling pads (bioimageio.core refuses a
    sample smaller than its blocks)."""
    data = _image((3, 70, 40), seed=1) * np.array([1, 5, 20], np.float32)[:, None, None]
    result = client.predict_volume(halo.id, data, tmp_path / "o.ome.zarr", axes="zyx", blocksize=0)
    assert result.blocks == 3 * 3 * 2
    written = zarr.open_group(str(tmp_path / "o.ome.zarr"), mode="r")["0"][:]
    for z in range(3):
        expected = client.predict(halo.id, data[z], blocksize=0)["out"][0, 0]
        np.testing.assert_allclose(written[z], expected, atol=1e-5)


def test_a_3d_volume_equals_bioimageio_cores_blockwise_prediction(
    client: ModelRunnerClient, halo_3d: ModelInfo, tiny: Tiny, pipelines: Pipelines,
    tmp_path: Path,
) -> None:  # fmt: skip
    data = _image((30, 50, 45), seed=2)
    result = client.predict_volume(
        halo_3d.id, data, tmp_path / "v.ome.zarr", axes="zyx", blocksize=1
    )
    assert result.blocks == 4 * 3 * 3  # blocks of 12x24x24, inner 8x20x20
    written = zarr.open_group(str(tmp_path / "v.ome.zarr"), mode="r")["0"][:]
    expected = _blockwise(pipelines, tiny("halo_3d"), data, ("z", "y", "x"), 1, "torchscript")
    np.testing.assert_allclose(written, expected, atol=1e-5)


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_percentile_normalisation_uses_the_whole_planes_percentiles(
    client: ModelRunnerClient, tiny: Tiny, tmp_path: Path, dtype: str
) -> None:
    """scale_range with the 1st and 99.8th percentiles over each whole plane (exact histograms
    for uint16, narrowing passes for float32), then clip and sigmoid: equal to the runtime's
    own tiling of each plane with the same blocks."""
    model = client.add_model(tiny("heavy_processing"))
    rng = np.random.default_rng(10)
    data = (rng.gamma(2.0, 300.0, (2, 100, 90)) * [[[1.0]], [[3.0]]]).astype(dtype)
    client.predict_volume(model.id, data, tmp_path / "p.ome.zarr", axes="zyx", blocksize=4)
    written = zarr.open_group(str(tmp_path / "p.ome.zarr"), mode="r")["0"][:]
    for z in range(2):
        expected = client.predict(model.id, data[z], blocksize=4, reference_path=True)["output"]
        np.testing.assert_allclose(written[z], expected[0, 0], atol=1e-5)


@needs_zoo
def test_the_nuclei_unet_equals_bioimageio_cores_blockwise_prediction(
    client: ModelRunnerClient, nuclei: ModelInfo, pipelines: Pipelines, tmp_path: Path
) -> None:
    """Fixed 512x512 blocks with a halo of 32, on an image of 700x760: 2x2 blocks, the second
    of each row and column shifted back over the first."""
    test_input = np.load(NUCLEI / "test_input.npy")[0, 0]
    data = np.tile(test_input, (2, 2))[:700, :760].copy()
    client.predict_volume(nuclei.id, data, tmp_path / "n.ome.zarr", axes="yx", weight_format="onnx")
    written = zarr.open_group(str(tmp_path / "n.ome.zarr"), mode="r")["0"][:]
    expected = _blockwise(pipelines, NUCLEI, data, ("y", "x"), 0, "onnx")
    assert written.shape == (700, 760)
    np.testing.assert_allclose(written, expected, atol=1e-5)


# -- sources and output metadata ----------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_the_output_is_ome_zarr_with_the_inputs_scale_translation_and_a_pyramid(
    client: ModelRunnerClient, halo: ModelInfo, tmp_path: Path, version: str
) -> None:
    data = _image((2, 600, 530), seed=3)
    source = _ome_zarr(
        tmp_path / "in.ome.zarr", data, "zyx", version=version, scale=[2.0, 0.5, 0.5],
        translation=[10.0, 5.0, 3.0], chunks=(1, 128, 128),
    )  # fmt: skip
    client.predict_volume(halo.id, source, tmp_path / "out.ome.zarr")
    got_version, multiscale, levels = read_ngff(tmp_path / "out.ome.zarr")
    assert got_version == version  # as the input's
    assert multiscale["axes"] == [
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    assert [lv.shape for lv in levels] == [(2, 600, 530), (2, 300, 265), (2, 150, 133)]
    transforms = [d["coordinateTransformations"] for d in multiscale["datasets"]]
    assert [t[0]["scale"] for t in transforms] == [
        [2.0, 0.5, 0.5],
        [2.0, 1.0, 1.0],
        [2.0, 2.0, 2.0],
    ]
    # averaged levels: a pixel's centre is the centre of the pixels it averages
    assert [t[1]["translation"] for t in transforms] == [
        [10.0, 5.0, 3.0], [10.0, 5.25, 3.25], [10.0, 5.75, 3.75],
    ]  # fmt: skip
    assert multiscale["type"] == "mean"
    level0 = levels[0]
    np.testing.assert_allclose(
        levels[1], level0.reshape(2, 300, 2, 265, 2).mean(axis=(2, 4)), atol=1e-6
    )
    # the input's level 1 (halved) is read when asked for
    coarse = client.predict_volume(halo.id, source, tmp_path / "coarse.ome.zarr", level=1)
    _, multiscale, levels = read_ngff(tmp_path / "coarse.ome.zarr")
    assert levels[0].shape == (2, 300, 265) and coarse.blocks == 2 * 2 * 2
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [2.0, 1.0, 1.0]


def test_tiff_npy_zarr_and_dask_sources_give_the_same_output(
    client: ModelRunnerClient, halo: ModelInfo, tmp_path: Path
) -> None:
    data = _image((2, 90, 100), seed=4)
    tifffile.imwrite(tmp_path / "in.ome.tif", data, ome=True, metadata={"axes": "ZYX"})
    np.save(tmp_path / "in.npy", data)
    array = zarr.create_array(str(tmp_path / "plain.zarr"), data=data, chunks=(1, 32, 32))
    sources: list[tuple[object, str | None]] = [
        (tmp_path / "in.ome.tif", None),
        (tmp_path / "in.npy", "zyx"),
        (array, "zyx"),
        (data, "zyx"),
    ]
    try:
        import dask.array as da

        sources.append((da.from_array(data, chunks=(1, 45, 50)), "zyx"))
    except ImportError:  # the dev extra brings dask; a bare install may not
        pass
    outputs = []
    for i, (source, axes) in enumerate(sources):
        client.predict_volume(halo.id, source, tmp_path / f"o{i}.ome.zarr", axes=axes)
        outputs.append(zarr.open_group(str(tmp_path / f"o{i}.ome.zarr"), mode="r")["0"][:])
    for other in outputs[1:]:
        np.testing.assert_array_equal(other, outputs[0])


def test_a_model_with_several_inputs_is_refused_before_any_work(
    client: ModelRunnerClient, tiny: Tiny, tmp_path: Path
) -> None:
    model = client.add_model(tiny("two_inputs"))
    with pytest.raises(errors.FailedPreconditionError) as raised:
        client.predict_volume(model.id, _image((40, 40)), tmp_path / "x.ome.zarr", axes="yx")
    assert raised.value.message == (
        "model 'tiny-two-inputs' takes 2 inputs; volumes are predicted block by block for "
        "single-input models"
    )
    assert not (tmp_path / "x.ome.zarr").exists()


def test_the_async_client_predicts_volumes_too(
    server: RunningServer, halo: ModelInfo, tmp_path: Path
) -> None:
    import asyncio

    from modelrunner.client import AsyncModelRunnerClient

    async def run() -> int:
        async with AsyncModelRunnerClient(server.address) as client:
            result = await client.predict_volume(
                halo.id, _image((64, 70)), tmp_path / "a.ome.zarr", axes="yx"
            )
            return result.blocks

    assert asyncio.run(run()) == 4
    assert zarr.open_group(str(tmp_path / "a.ome.zarr"), mode="r")["0"].shape == (64, 70)


# -- several runtimes --------------------------------------------------------------------------


def test_blocks_spread_over_every_runtime_with_the_same_result(
    client: ModelRunnerClient, halo: ModelInfo, tiny: Tiny, tmp_path: Path
) -> None:
    data = _image((300, 280), seed=5)
    client.predict_volume(halo.id, data, tmp_path / "one.ome.zarr", axes="yx", blocksize=1)
    settings = Settings(
        host="127.0.0.1", port=0, flight_port=0, cache_dir=tmp_path / "cache",
        heartbeat_interval_s=0.5, log_level="WARNING",
    )  # fmt: skip
    with start_embedded(settings) as running:
        second = start_runtime(
            settings.model_copy(update={"runtime_id": "second"}), running.address
        )
        try:
            with ModelRunnerClient(running.address) as two:
                model_id = two.add_model(tiny("halo")).id
                deadline = time.monotonic() + 30
                while len(two.server_info().runtimes) < 2 and time.monotonic() < deadline:
                    time.sleep(0.1)
                result = two.predict_volume(
                    model_id, data, tmp_path / "two.ome.zarr", axes="yx", blocksize=1
                )
            assert result.runtimes == 2
            assert running.runtime is not None
            assert running.runtime.server.exchanges_opened >= 1
            assert second.server.exchanges_opened >= 1
        finally:
            second.stop()
    one = zarr.open_group(str(tmp_path / "one.ome.zarr"), mode="r")["0"][:]
    both = zarr.open_group(str(tmp_path / "two.ome.zarr"), mode="r")["0"][:]
    np.testing.assert_array_equal(both, one)


def test_a_runtime_gone_before_the_first_block_leaves_it_to_the_others(
    client: ModelRunnerClient, halo: ModelInfo, tiny: Tiny, tmp_path: Path
) -> None:
    """The runtime routed first (it has the model loaded) is gone, its registration not yet
    expired: the run used to fail on its first block instead of trying the other runtime."""
    data = _image((120, 100), seed=11)
    client.predict_volume(halo.id, data, tmp_path / "one.ome.zarr", axes="yx", blocksize=1)
    settings = Settings(
        host="127.0.0.1", port=0, flight_port=0, cache_dir=tmp_path / "cache",
        heartbeat_interval_s=10.0, log_level="WARNING",
    )  # fmt: skip
    with start_embedded(settings) as running, ModelRunnerClient(running.address) as two:
        model_id = two.add_model(tiny("halo")).id
        gone = start_runtime(
            settings.model_copy(update={"runtime_id": "gone", "cache_dir": tmp_path / "gone"}),
            running.address,
        )
        try:
            load = runtime_pb2.LoadModelRequest(model_id=model_id).SerializeToString()
            with flight.connect(gone.flight_uri) as raw:
                list(raw.do_action(flight.Action("load_model", load)))
            deadline = time.monotonic() + 30
            while not any(  # its heartbeat told it loaded the model: it is routed first
                r.runtime_id == "gone" and any(m.model_id == model_id for m in r.loaded_models)
                for r in two.server_info().runtimes
            ):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            gone.stop(leave=False)  # as a crash: still registered
        result = two.predict_volume(
            model_id, data, tmp_path / "two.ome.zarr", axes="yx", blocksize=1
        )
    assert result.blocks_predicted == result.blocks
    one = zarr.open_group(str(tmp_path / "one.ome.zarr"), mode="r")["0"][:]
    both = zarr.open_group(str(tmp_path / "two.ome.zarr"), mode="r")["0"][:]
    np.testing.assert_array_equal(both, one)


# -- resumable and safe ------------------------------------------------------------------------

_RUN = """
import sys
import numpy as np
from modelrunner.client import ModelRunnerClient
address, model, source, destination = sys.argv[1:5]
with ModelRunnerClient(address, timeout=None) as client:
    client.predict_volume(model, np.load(source), destination, axes="yx", blocksize=0,
                          resume=True, workers_per_runtime=1)
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELRUNNER_")}
    return {**env, "PYTHONPATH": str(REPO)}


def _done_lines(destination: Path) -> int:
    try:
        return (destination / ".modelrunner" / "blocks.done").read_bytes().count(b"\n")
    except OSError:
        return 0


def _all_levels(path: Path) -> list[np.ndarray]:
    return read_ngff(path)[2]


def test_a_run_killed_at_a_random_block_resumes_to_the_same_bytes(
    server: RunningServer, client: ModelRunnerClient, halo: ModelInfo, tmp_path: Path
) -> None:
    data = _image((700, 640), seed=6)
    np.save(tmp_path / "in.npy", data)
    destination = tmp_path / "killed.ome.zarr"
    kill_at = random.Random().randint(10, 300)
    process = subprocess.Popen(
        [sys.executable, "-c", _RUN, server.address, halo.id, str(tmp_path / "in.npy"),
         str(destination)],
        env=_env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while _done_lines(destination) < kill_at and process.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.002)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    done = _done_lines(destination)
    assert done >= kill_at, f"the run ended before block {kill_at}"
    resumed = client.predict_volume(halo.id, data, destination, axes="yx", blocksize=0, resume=True)
    assert resumed.blocks == 30 * 27
    assert resumed.blocks_predicted <= resumed.blocks - done
    client.predict_volume(halo.id, data, tmp_path / "whole.ome.zarr", axes="yx", blocksize=0)
    for got, expected in zip(
        _all_levels(destination), _all_levels(tmp_path / "whole.ome.zarr"), strict=True
    ):
        assert np.array_equal(got, expected)  # bit for bit, every level
    again = client.predict_volume(halo.id, data, destination, axes="yx", blocksize=0, resume=True)
    assert again.blocks_predicted == 0


class _Stopped(Exception):
    """Raised from a progress callback: the run stops there, resumable."""


def _stop_after(blocks: int) -> Callable[[object], None]:
    def progress(event: object) -> None:
        if getattr(event, "stage", "") == "predict" and getattr(event, "done", 0) >= blocks:
            raise _Stopped

    return progress


def test_a_resumed_run_keeps_the_weights_and_device_it_started_with(
    client: ModelRunnerClient, example_nuclei: ModelInfo, tmp_path: Path
) -> None:
    """The destination records the weight format and device its blocks were computed with,
    also where the server chose them; a resume without naming them uses those (it used to be
    refused, or to mix, when the server would choose others), and one naming others is refused
    before any work."""
    data = _image((256, 256), seed=12)
    destination = tmp_path / "out.ome.zarr"
    with pytest.raises(_Stopped):  # the server chooses: torchscript on this CPU runtime
        client.predict_volume(
            example_nuclei.id, data, destination, axes="yx", blocksize=0,
            progress=_stop_after(2), workers_per_runtime=1,
        )  # fmt: skip
    record = json.loads((destination / ".modelrunner" / "run.json").read_text())
    assert record["identity"]["weights"] == {"weight_format": "torchscript", "device": "cpu"}
    with pytest.raises(errors.FailedPreconditionError) as raised:
        client.predict_volume(
            example_nuclei.id, data, destination, axes="yx", blocksize=0, resume=True,
            weight_format="pytorch_state_dict",
        )  # fmt: skip
    assert raised.value.message == (
        f"{destination} was predicted with torchscript weights on cpu, and this run asks for "
        "pytorch_state_dict weights on any device: resume it with the same weight format and "
        "device, or without naming them (it then uses those it started with)"
    )
    assert raised.value.details == {"destination": str(destination), "differs": "weights"}
    with pytest.raises(errors.FailedPreconditionError) as raised:
        client.predict_volume(
            example_nuclei.id, data, destination, axes="yx", blocksize=0, resume=True,
            device="cuda",
        )  # fmt: skip
    assert raised.value.details["differs"] == "weights"
    resumed = client.predict_volume(
        example_nuclei.id, data, destination, axes="yx", blocksize=0, resume=True,
        weight_format="torchscript", device="cpu",
    )  # fmt: skip
    assert 0 < resumed.blocks_predicted < resumed.blocks
    whole = tmp_path / "whole.ome.zarr"
    client.predict_volume(
        example_nuclei.id, data, whole, axes="yx", blocksize=0, weight_format="torchscript"
    )
    for got, expected in zip(_all_levels(destination), _all_levels(whole), strict=True):
        assert np.array_equal(got, expected)


def test_a_block_inside_the_volume_is_sent_as_read(
    client: ModelRunnerClient, halo: ModelInfo, tmp_path: Path
) -> None:
    """A block needing no halo or padding arranged is the array read from the source, not a
    copy of it through index arrays; the others are arranged by index."""
    data = _image((300, 280), seed=13)
    source = _ome_zarr(tmp_path / "in.ome.zarr", data, "yx", chunks=(64, 64))
    image = open_volume(source, axes=None, level=0, channel=None)
    run = _plan(
        client._volume_calls(), halo.id, image, tmp_path / "out.ome.zarr", level=0, channel=None,
        per_plane=False, keep_singletons=False, blocksize=1, weight_format=None, device=None,
        nan_policy="reject", source=source,
    )  # fmt: skip
    read: list[np.ndarray] = []
    real_read = image.read

    def recording_read(region: tuple[int | slice, ...]) -> np.ndarray:
        read.append(real_read(region))
        return read[-1]

    image.read = recording_read  # type: ignore[method-assign]
    inside = sent_as_read = 0
    for block in run.grid.blocks():
        indices = [run.grid.read_indices(block)[axis] for axis in run.sent]
        got = read_block(run, block)
        np.testing.assert_array_equal(got, data[np.ix_(*indices)])
        inside += all(
            (i >= 0).all() and i[-1] < n and (np.diff(i) == 1).all()
            for i, n in zip(indices, data.shape, strict=True)
        )
        sent_as_read += np.shares_memory(got, read[-1])
    image.close()
    assert inside > 0 and sent_as_read == inside


def _snapshot(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def test_a_destination_of_another_run_is_refused_untouched(
    client: ModelRunnerClient, halo: ModelInfo, identity: ModelInfo, tmp_path: Path
) -> None:
    data = _image((64, 64), seed=7)
    destination = tmp_path / "out.ome.zarr"
    client.predict_volume(halo.id, data, destination, axes="yx")
    before = _snapshot(destination)

    def refused(**call: object) -> errors.ModelRunnerError:
        arguments: dict[str, object] = {"model_id": halo.id, "source": data, "axes": "yx"}
        arguments.update(call)
        with pytest.raises(errors.FailedPreconditionError) as raised:
            client.predict_volume(destination=destination, resume=True, **arguments)  # type: ignore[arg-type]
        assert _snapshot(destination) == before
        return raised.value

    other_model = refused(model_id=identity.id)
    assert other_model.message.startswith(
        f"{destination} holds the output of another run (its model is {halo.id}, this run's "
        f"{identity.id}): refusing to overwrite it"
    )
    assert other_model.details == {"destination": str(destination), "differs": "model"}
    other_data = refused(source=data[::-1].copy())
    assert other_data.details["differs"] == "source"
    other_options = refused(blocksize=0)
    assert other_options.details["differs"] == "grid"
    with pytest.raises(errors.FailedPreconditionError) as raised:
        client.predict_volume(halo.id, data, destination, axes="yx")  # no resume
    assert raised.value.message == (
        f"{destination} already holds this run (complete): pass resume=True (--resume) to "
        "finish it, or remove it to start again"
    )
    foreign = tmp_path / "mine.ome.zarr"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(errors.FailedPreconditionError) as raised:
        client.predict_volume(halo.id, data, foreign, axes="yx", resume=True)
    assert raised.value.message == (
        f"{foreign} exists and is not a modelrunner prediction: refusing to overwrite it; "
        "choose another destination or remove it"
    )
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_a_source_that_is_the_destination_is_refused(
    client: ModelRunnerClient, halo: ModelInfo, tmp_path: Path
) -> None:
    source = _ome_zarr(tmp_path / "in.ome.zarr", _image((40, 40)), "yx")
    with pytest.raises(errors.InvalidArgumentError) as raised:
        client.predict_volume(halo.id, source, source)
    assert raised.value.message == f"the destination {source} is the source"


# -- memory -------------------------------------------------------------------------------------

_PEAK = """
import resource, sys
from modelrunner.client import ModelRunnerClient
address, model, source, destination = sys.argv[1:5]
with ModelRunnerClient(address, timeout=None) as client:
    client.predict_volume(model, source, destination, blocksize=511)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def _smooth_volume(path: Path, planes: int) -> Path:
    """A uint16 OME-Zarr stack of 1024x1024 planes that compresses well."""
    y, x = np.mgrid[0:1024, 0:1024]
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    array = group.create_array("0", shape=(planes, 1024, 1024), chunks=(1, 512, 512), dtype="u2")
    for z in range(planes):
        array[z] = ((x // 64 + y // 64 + z) % 17 * 100).astype(np.uint16)
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [{"name": a, "type": "space"} for a in "zyx"],
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}],
                    }
                ],
            }
        ],
    }
    return path


def test_client_memory_does_not_grow_with_the_volume(
    server: RunningServer, identity: ModelInfo, tmp_path: Path
) -> None:
    """Peak RSS of a client process predicting 4x the planes (64 MiB in, 128 MiB out) stays
    within a small margin of the 1x run's: blocks stream through, nothing gathers."""
    peaks = []
    for planes in (8, 32):
        source = _smooth_volume(tmp_path / f"in{planes}.ome.zarr", planes)
        done = subprocess.run(
            [sys.executable, "-c", _PEAK, server.address, identity.id, str(source),
             str(tmp_path / f"out{planes}.ome.zarr")],
            env=_env(), capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
        peaks.append(int(done.stdout.strip().splitlines()[-1]))
    one, four = peaks
    assert four - one < 48 * 1024**2, f"peak RSS {one / 2**20:.0f} MiB -> {four / 2**20:.0f} MiB"


# -- Ctrl-C and the command line ---------------------------------------------------------------


def _stack_zarr(path: Path, seed: int = 8) -> Path:
    return _ome_zarr(
        path, _image((4, 300, 320), seed=seed), "zyx", version="0.4", chunks=(1, 64, 64)
    )


def test_ctrl_c_stops_at_once_and_resume_finishes_the_same(
    server: RunningServer, client: ModelRunnerClient, halo: ModelInfo, tmp_path: Path
) -> None:
    source = _stack_zarr(tmp_path / "in.ome.zarr")
    destination = tmp_path / "out.ome.zarr"
    argv = [
        sys.executable, "-m", "modelrunner.app.cli", "predict", halo.id, str(source),
        "-o", str(destination), "--blocksize", "0", "--server", server.address, "--resume",
    ]  # fmt: skip
    process = subprocess.Popen(
        argv, env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while _done_lines(destination) < 20 and process.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        started = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        stopped = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert stopped < 3.0  # the interpreter's own exit included; the threads stop in 0.5 s
    done = _done_lines(destination)
    assert 20 <= done < 4 * 13 * 14
    finished = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    client.predict_volume(halo.id, source, tmp_path / "whole.ome.zarr", blocksize=0)
    for got, expected in zip(
        _all_levels(destination), _all_levels(tmp_path / "whole.ome.zarr"), strict=True
    ):
        assert np.array_equal(got, expected)


def test_the_command_line_predicts_a_zarr_volume_and_refuses_to_overwrite(
    server: RunningServer, halo: ModelInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelrunner.app.cli import main

    source = _stack_zarr(tmp_path / "in.ome.zarr", seed=9)
    destination = tmp_path / "out.ome.zarr"
    argv = ["predict", halo.id, str(source), "-o", str(destination), "--server", server.address]
    assert main([*argv, "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"in.ome.zarr -> {destination} (out: [4, 300, 320], axes zyx;" in err
    record = json.loads((destination / ".modelrunner" / "run.json").read_text())
    assert record["complete"] is True
    assert main([*argv, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"error (FAILED_PRECONDITION): {destination} already holds this run (complete)" in err
    assert main([*argv, "--no-progress", "--resume"]) == 0
    assert "(out: [4, 300, 320], axes zyx; all 16 blocks were done already)" in (
        capsys.readouterr().err
    )
