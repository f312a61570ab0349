"""``modelrunner predict`` on real image files against the session's server: axes from the
files' metadata or ``--axes``, RGB as channels, planes one by one, OME-TIFF and OME-Zarr out
with their metadata, many files under one command, paths checked before any work, and the
errors that say how to fix the call."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from modelrunner import errors
from modelrunner.app.cli import build_parser, main
from modelrunner.client import ModelInfo, ModelRunnerClient
from modelrunner.serving import RunningServer
from tests.tiny_models import build_onnx_identity


@pytest.fixture(scope="module")
def rgb_identity(client: ModelRunnerClient, tmp_path_factory: pytest.TempPathFactory) -> ModelInfo:
    """A 3-channel ONNX identity (float32 BCYX) on the session server."""
    package = build_onnx_identity(
        tmp_path_factory.mktemp("rgb-identity"), channels=3, name="tiny-rgb-identity"
    )
    return client.add_model(package)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["predict", *argv, "--no-progress"])
    return code, capsys.readouterr().err


def _raised(*argv: str) -> errors.ModelRunnerError:
    """The error ``modelrunner predict argv`` raises (main() prints it as exit 1)."""
    args = build_parser().parse_args(["predict", *argv, "--no-progress"])
    with pytest.raises(errors.ModelRunnerError) as caught:
        args.run(args)
    return caught.value


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _stack(n: int = 3, side: int = 32) -> np.ndarray:
    return np.arange(n * side * side, dtype=np.float32).reshape(n, side, side) / (n * side * side)


def test_rgb_png_is_three_channels(
    server: RunningServer,
    rgb_identity: ModelInfo,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "cells.png")
    code, err = _run(
        capsys,
        rgb_identity.id,
        str(tmp_path / "cells.png"),
        "-o",
        str(tmp_path / "out") + "/",
        "--server",
        server.address,
    )
    assert code == 0, err
    written = tmp_path / "out" / "cells_output.ome.tif"  # PNG holds no floats: OME-TIFF
    with tifffile.TiffFile(written) as tif:
        assert tif.series[0].axes == "CYX"
        np.testing.assert_array_equal(tif.asarray(), np.moveaxis(rgb, -1, 0).astype(np.float32))
    # the same pixels as a .npy, whose axes only --axes can name
    np.save(tmp_path / "cells.npy", rgb)
    code, err = _run(
        capsys, rgb_identity.id, str(tmp_path / "cells.npy"), "--axes", "yxs",
        "-o", str(tmp_path / "cells_out.npy"), "--server", server.address,
    )  # fmt: skip
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "cells_out.npy"), np.moveaxis(rgb, -1, 0))


def test_wrong_channels_say_what_the_image_has_and_the_model_wants(
    server: RunningServer, identity: ModelInfo, tmp_path: Path
) -> None:
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "image.png")
    error = _raised(
        identity.id, str(tmp_path / "image.png"), "-o", str(tmp_path / "o.tif"),
        "--server", server.address,
    )  # fmt: skip
    assert type(error) is errors.InvalidTensorError
    assert error.message == (
        "image.png has 3 channels (RGB, axes yxs); model 'tiny-onnx-identity' input 'input' "
        "(axes bcyx) wants 1 channel: pick one channel with --channel N (0-based), or convert "
        "it to grayscale first"
    )
    tifffile.imwrite(tmp_path / "stack.tif", _stack(), photometric="minisblack")
    error = _raised(
        identity.id, str(tmp_path / "stack.tif"), "-o", str(tmp_path / "o.tif"),
        "--server", server.address,
    )  # fmt: skip
    assert type(error) is errors.InvalidArgumentError
    assert error.message == (
        "stack.tif (shape (3, 32, 32)) looks like 3 planes, but its file does not say what "
        "they are; model 'tiny-onnx-identity' input 'input' (axes bcyx): say it with "
        "--axes zyx --per-plane (z planes; tyx for time points) or --axes cyx (channels)"
    )
    assert not (tmp_path / "o.tif").exists()


def test_ome_tiff_keeps_axes_and_pixel_sizes(
    server: RunningServer,
    identity: ModelInfo,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import modelrunner.app.predict_files as predict_files

    # gathered in the file-backed buffer large outputs take, which is gone afterwards
    monkeypatch.setattr(predict_files, "IN_MEMORY_BYTES", 0)
    stack = _stack()
    tifffile.imwrite(
        tmp_path / "zstack.ome.tif",
        stack,
        ome=True,
        photometric="minisblack",
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.3, "PhysicalSizeZ": 1.5},
    )
    out = tmp_path / "result.ome.tif"
    code, err = _run(
        capsys, identity.id, str(tmp_path / "zstack.ome.tif"), "-o", str(out),
        "--server", server.address,
    )  # fmt: skip
    assert code == 0, err
    assert "running 3 z planes one by one" in err
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "ZYX"
        np.testing.assert_array_equal(tif.asarray(), stack)
        ome = tif.ome_metadata or ""
    for attribute in ('PhysicalSizeX="0.2"', 'PhysicalSizeY="0.3"', 'PhysicalSizeZ="1.5"'):
        assert attribute in ome
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_imagej_and_plain_stacks_with_axes_and_per_plane(
    server: RunningServer, identity: ModelInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = _stack(4)
    tifffile.imwrite(
        tmp_path / "timelapse.tif", stack, imagej=True, metadata={"axes": "TYX"},
        resolution=(1 / 0.5, 1 / 0.5),
    )  # fmt: skip
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        for plane in stack:
            tif.write(plane, photometric="minisblack", metadata=None)
    code, err = _run(
        capsys, identity.id, str(tmp_path / "timelapse.tif"), str(tmp_path / "pages.tif"),
        "--axes", "zyx", "--per-plane", "-o", str(tmp_path / "out") + "/",
        "--server", server.address,
    )  # fmt: skip
    assert code == 0, err
    assert "pages.tif: running 4 z planes one by one (--per-plane)" in err
    with tifffile.TiffFile(tmp_path / "out" / "pages_output.ome.tif") as tif:
        assert tif.series[0].axes == "ZYX"
        np.testing.assert_array_equal(tif.asarray(), stack)
    with tifffile.TiffFile(tmp_path / "out" / "timelapse_output.ome.tif") as tif:
        # --axes names the ImageJ file's axes too; its pixel size stays
        assert tif.series[0].axes == "ZYX"
        assert 'PhysicalSizeX="0.5"' in (tif.ome_metadata or "")


def test_ome_zarr_in_ome_zarr_out_plane_by_plane(
    server: RunningServer, identity: ModelInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = np.random.default_rng(1).random((2, 3, 16, 24), dtype=np.float32)  # t, z, y, x
    source = tmp_path / "movie.ome.zarr"
    group = zarr.open_group(str(source), mode="w", zarr_format=3)
    group.create_array("0", shape=data.shape, chunks=(1, 1, 16, 24), dtype="float32")[:] = data
    axes = [
        {"name": "t", "type": "time", "unit": "second"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    scale = [5.0, 2.0, 0.4, 0.4]
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": axes,
                "datasets": [
                    {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
                ],
            }
        ],
    }
    code, err = _run(
        capsys, identity.id, str(source), "-o", str(tmp_path / "out") + "/",
        "--server", server.address,
    )  # fmt: skip
    assert code == 0, err
    written = zarr.open_group(str(tmp_path / "out" / "movie_output.ome.zarr"), mode="r")
    assert written.metadata.zarr_format == 3  # NGFF 0.5 in, 0.5 out
    multiscale = written.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in multiscale["axes"]] == ["t", "z", "y", "x"]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == scale
    array = written["0"]
    assert array.chunks == (1, 1, 16, 24)  # written one plane per chunk, as predicted
    np.testing.assert_array_equal(array[:], data)


def test_folders_and_globs_give_one_output_per_file(
    server: RunningServer, identity: ModelInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data").mkdir()
    for i in range(3):
        tifffile.imwrite(tmp_path / "data" / f"cell_{i}.tif", _stack(1)[0] + i)
    np.save(tmp_path / "data" / "extra.npy", _stack(1)[0])
    code, err = _run(
        capsys, identity.id, str(tmp_path / "data" / "*.tif"), "-o", str(tmp_path / "glob") + "/",
        "--server", server.address,
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "glob").iterdir()) == [
        f"cell_{i}_output.ome.tif" for i in range(3)
    ]
    code, err = _run(
        capsys, identity.id, str(tmp_path / "data"), "-o", str(tmp_path / "folder"),
        "--server", server.address,
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == [
        *(f"cell_{i}_output.ome.tif" for i in range(3)),
        "extra_output.npy",
    ]
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "folder" / "cell_2_output.ome.tif"), _stack(1)[0] + 2
    )
    error = _raised(
        identity.id, str(tmp_path / "data"), "-o", str(tmp_path / "one.tif"),
        "--server", server.address,
    )  # fmt: skip
    assert type(error) is errors.InvalidArgumentError
    assert (
        error.message
        == f"-o {tmp_path / 'one.tif'}: 4 input files need an output folder (end it in /)"
    )
    assert not (tmp_path / "one.tif").exists()


def test_bad_outputs_are_refused_before_any_work(tmp_path: Path) -> None:
    """Nothing answers at the address: an error about -o proves no server was even asked."""
    tifffile.imwrite(tmp_path / "a.tif", _stack(1)[0])
    tifffile.imwrite(tmp_path / "b.tif", _stack(1)[0])
    nowhere = ["--server", _closed_port()]
    started = time.monotonic()
    error = _raised("some-model", str(tmp_path / "a.tif"), "-o", str(tmp_path / "x.jpg"), *nowhere)
    assert type(error) is errors.InvalidArgumentError
    assert error.message.startswith(f"-o {tmp_path / 'x.jpg'}: cannot write .jpg")
    assert time.monotonic() - started < 5  # generous: no model, no server involved
    error = _raised("m", str(tmp_path / "a.tif"), "-o", str(tmp_path / "a.tif" / "sub") + "/")
    assert type(error) is errors.PermissionDeniedError  # a file where a folder should be
    assert error.message.startswith("-o ") and "cannot write in" in error.message
    assert not list(tmp_path.glob("*.jpg"))


def test_hostile_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nowhere = ["--server", _closed_port()]
    out = ["-o", str(tmp_path / "out") + "/"]
    # OME metadata that claims 5 z planes over 3 pages (tifffile would fill 2 with zeros)
    tifffile.imwrite(tmp_path / "ok.ome.tif", _stack(), ome=True, metadata={"axes": "ZYX"})
    raw = (tmp_path / "ok.ome.tif").read_bytes().replace(b'SizeZ="3"', b'SizeZ="5"')
    (tmp_path / "lying.ome.tif").write_bytes(raw)
    error = _raised("m", str(tmp_path / "lying.ome.tif"), *out, *nowhere)
    assert type(error) is errors.InvalidArgumentError
    assert error.message == (
        "lying.ome.tif: its metadata claims axes ZYX of shape (5, 32, 32), but it holds 3 "
        "plane(s) of (32, 32); give its axes with --axes"
    )
    tifffile.imwrite(tmp_path / "ij.tif", _stack(), imagej=True, metadata={"axes": "ZYX"})
    error = _raised("m", str(tmp_path / "nothing-*.tif"), *out, *nowhere)
    assert type(error) is errors.SourceNotFoundError
    assert error.message == f"no files match {str(tmp_path / 'nothing-*.tif')!r}"
    for axes, message in (
        ("zzyx", "--axes 'zzyx' names z more than once (c and s are both the channel axis)"),
        ("csyx", "--axes 'csyx' names channel more than once (c and s are both the channel axis)"),
        ("qyx", "--axes 'qyx': unknown letter(s) q; use t (time), c or s (channel; s for an "
         "RGB image's samples), z, y, x, b (batch), e.g. --axes zyx, cyx, tyx or yxs"),
        ("yx", "ij.tif: --axes names 2 axes, but the image has 3 (shape (3, 32, 32))"),
    ):  # fmt: skip
        error = _raised("m", str(tmp_path / "ij.tif"), "--axes", axes, *out, *nowhere)
        assert type(error) is errors.InvalidArgumentError
        assert error.message == message
    # damaged files of each kind: one error naming the file, not a traceback
    (tmp_path / "noise.tif").write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "empty.ome.zarr").mkdir()
    flat = zarr.open_group(str(tmp_path / "flat.ome.zarr"), mode="w", zarr_format=2)
    flat.create_array("0", shape=(2, 8, 8), dtype="float32")
    flat.attrs["multiscales"] = [
        {"version": "0.4", "axes": [{"name": "y"}, {"name": "x"}], "datasets": [{"path": "0"}]}
    ]
    for name, start in (
        ("noise.tif", "noise.tif: no image in this TIFF file"),
        ("objects.npy", "objects.npy: cannot read it as .npy: ValueError: "),
        ("empty.ome.zarr", f"{tmp_path / 'empty.ome.zarr'}: not a zarr group"),
        ("flat.ome.zarr", "flat.ome.zarr: its metadata names 2 axes but the array has 3 (shape "
         "(2, 8, 8)); give its axes with --axes"),
    ):  # fmt: skip
        error = _raised("m", str(tmp_path / name), *out, *nowhere)
        assert type(error) is errors.InvalidArgumentError, error
        assert error.message.startswith(start), error.message
    code, err = _run(capsys, "m", str(tmp_path / "nothing-*.tif"), *out, *nowhere)
    assert code == 1 and err.startswith("error (NOT_FOUND): no files match")


def test_a_failed_run_leaves_no_output(
    server: RunningServer, identity: ModelInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tifffile.imwrite(tmp_path / "a.ome.tif", _stack(), ome=True, metadata={"axes": "ZYX"})
    code, err = _run(
        capsys, identity.id, str(tmp_path / "a.ome.tif"), "-o", str(tmp_path / "out") + "/",
        "--server", server.address, "--precision", "float16",
    )  # fmt: skip
    assert code == 1 and "error (FAILED_PRECONDITION)" in err
    assert list((tmp_path / "out").iterdir()) == []


def test_predict_uses_the_named_server_and_refuses_a_silent_one(
    server: RunningServer,
    identity: ModelInfo,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    np.save(tmp_path / "in.npy", _stack(1)[0])
    monkeypatch.delenv("MODELRUNNER_SERVER", raising=False)
    monkeypatch.setenv("MODELRUNNER_ADDRESS", server.address)
    code, err = _run(capsys, identity.id, str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"))
    assert code == 0, err
    assert err.startswith(f"using the server at {server.address}\n")
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), _stack(1)[0])
    address = _closed_port()
    error = _raised(identity.id, str(tmp_path / "in.npy"), "-o", "o.npy", "--server", address)
    assert type(error) is errors.UnavailableError
    assert error.message == (
        f"no modelrunner server answers at {address}: start one with `modelrunner serve` (in "
        "another terminal, or as a service), or name a running one with --server HOST:PORT or "
        "$MODELRUNNER_SERVER; or run the model in this process with --embedded"
    )


def test_predict_without_a_server_runs_the_model_in_process(
    tiny: object,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slow (an embedded runner starts): the one test of the fallback."""
    import modelrunner.app.predict_files as predict_files

    address = _closed_port()
    monkeypatch.setattr(predict_files, "DEFAULT_ADDRESS", address)
    monkeypatch.delenv("MODELRUNNER_SERVER", raising=False)
    monkeypatch.delenv("MODELRUNNER_ADDRESS", raising=False)
    monkeypatch.setenv("MODELRUNNER_CACHE_DIR", str(tmp_path / "cache"))
    package = tiny("onnx")  # type: ignore[operator]
    tifffile.imwrite(tmp_path / "in.tif", _stack(1)[0])
    code, err = _run(capsys, str(package), str(tmp_path / "in.tif"), "-o", str(tmp_path) + "/")
    assert code == 0, err
    assert (
        f"no server at {address}: running the model in this process (start one with "
        "`modelrunner serve`)"
    ) in err
    # this process reads the package where it is: no upload to itself, no add stages
    assert "upload" not in err and "add model" not in err, err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "in_output.ome.tif"), _stack(1)[0])


def test_channels_from_metadata_channel_choice_and_singletons(
    server: RunningServer, identity: ModelInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    two = _stack(2)
    tifffile.imwrite(tmp_path / "two.ome.tif", two, ome=True, metadata={"axes": "CYX"})
    at = ["--server", server.address]
    error = _raised(identity.id, str(tmp_path / "two.ome.tif"), "-o", str(tmp_path) + "/", *at)
    assert type(error) is errors.InvalidTensorError
    assert error.message == (
        "two.ome.tif has 2 channels (axes cyx); model 'tiny-onnx-identity' input 'input' "
        "(axes bcyx) wants 1 channel: pick one channel with --channel N (0-based), or, if its "
        "2 'channels' are z planes, --axes zyx --per-plane"
    )
    code, err = _run(
        capsys, identity.id, str(tmp_path / "two.ome.tif"), "--channel", "1",
        "-o", str(tmp_path / "one.npy"), "--keep-singletons", *at,
    )  # fmt: skip
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "one.npy"), two[1][None, None])
    code, err = _run(
        capsys, identity.id, str(tmp_path / "two.ome.tif"), "--channel", "0",
        "-o", str(tmp_path / "one.ome.zarr"), "--keep-singletons", *at,
    )  # fmt: skip
    assert code == 0, err
    written = zarr.open_group(str(tmp_path / "one.ome.zarr"), mode="r")
    assert [a["name"] for a in written.attrs["multiscales"][0]["axes"]] == ["c", "y", "x"]
    np.testing.assert_array_equal(written["0"][:], two[:1])
    error = _raised(identity.id, str(tmp_path / "two.ome.tif"), "--channel", "2", "-o", "x/", *at)
    assert type(error) is errors.InvalidArgumentError
    assert error.message == "--channel 2: two.ome.tif has channels 0 to 1"
