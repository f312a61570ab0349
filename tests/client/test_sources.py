"""How the client reads what ``add_model``/``validate`` are given."""

from __future__ import annotations

import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from modelrunner.client import ModelRunnerClient
from modelrunner.client._sources import Upload, interpret_source, is_local_address
from modelrunner.errors import InvalidSourceError, SourceNotFoundError
from modelrunner.types import ModelSourceSpec

ZOO = Path(__file__).resolve().parents[2].parent / "shared" / "zoo"


def test_urls_and_ids_are_fetched_by_the_server() -> None:
    assert interpret_source("https://x.org/m.zip", upload=None, server_is_local=True) == (
        ModelSourceSpec(kind="url", value="https://x.org/m.zip")
    )
    for text in ("affable-shark", "affable-shark/1.1", "affable-shark/draft"):
        spec = interpret_source(text, upload=None, server_is_local=False)
        assert spec == ModelSourceSpec(kind="bioimageio_id", value=text)


def test_local_path_is_read_by_a_local_server_and_uploaded_to_a_remote_one(tmp_path: Path) -> None:
    folder = ZOO / "unet2d_multi_tensor"
    local = interpret_source(folder, upload=None, server_is_local=True)
    assert local == ModelSourceSpec(kind="path", value=str(folder.resolve()))
    remote = interpret_source(folder, upload=None, server_is_local=False)
    assert isinstance(remote, Upload) and remote.filename == "unet2d_multi_tensor.zip"
    names = zipfile.ZipFile(BytesIO(b"".join(remote.chunks()))).namelist()
    assert "bioimageio.yaml" in names and "weights_torchscript_traced.pt" in names
    forced = interpret_source(ZOO / "careamics_n2v_tiny.zip", upload=True, server_is_local=True)
    assert isinstance(forced, Upload) and forced.path == ZOO / "careamics_n2v_tiny.zip"


def test_bytes_are_uploaded() -> None:
    up = interpret_source(b"PK\x03\x04rest", upload=None, server_is_local=True)
    assert isinstance(up, Upload) and up.filename == "package.zip" and up.size == 8


def test_missing_paths_and_nonsense_are_clear_errors() -> None:
    with pytest.raises(SourceNotFoundError, match=r"no such file or folder: \./nope/model\.zip"):
        interpret_source("./nope/model.zip", upload=None, server_is_local=True)
    with pytest.raises(InvalidSourceError, match="cannot tell what 'Not An Id!' is"):
        interpret_source("Not An Id!", upload=None, server_is_local=True)


@pytest.mark.parametrize(
    ("address", "local"),
    [("localhost:50051", True), ("127.0.0.1:1", True), ("[::1]:5", True), ("gpu-3:50051", False)],
)
def test_local_addresses(address: str, local: bool) -> None:
    assert is_local_address(address) is local


def test_a_description_file_travels_with_its_folder(tmp_path: Path) -> None:
    """A bioimageio.yaml names the files beside it: uploading it alone would lose them."""
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "my-model.yaml").write_text("name: mine\n")
    (folder / "rdf.yaml").write_text("name: another description\n")
    (folder / "weights.pt").write_bytes(b"w")
    (folder / "sub").mkdir()
    (folder / "sub" / "test.npy").write_bytes(b"t")
    up = interpret_source(folder / "my-model.yaml", upload=True, server_is_local=True)
    assert isinstance(up, Upload) and up.filename == "pkg.zip"
    archive = zipfile.ZipFile(BytesIO(b"".join(up.chunks())))
    assert sorted(archive.namelist()) == ["bioimageio.yaml", "sub/test.npy", "weights.pt"]
    assert archive.read("bioimageio.yaml") == b"name: mine\n"


def test_a_description_file_is_added_to_a_server_that_reads_no_paths(
    client: ModelRunnerClient,
) -> None:
    """The shared server has no path_source_roots: the client uploads the description with its
    folder, and the model keeps every file it names."""
    info = client.add_model(ZOO / "unet2d_nuclei_broad" / "bioimageio.yaml")
    assert info.name == "UNet 2D Nuclei Broad"
    report = client.validate(ZOO / "unet2d_nuclei_broad" / "bioimageio.yaml")
    assert report.status in ("passed", "valid-format"), report.markdown
