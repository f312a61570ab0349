"""Zip packages that try to escape, link, bomb or lie are refused, naming the entry."""

from __future__ import annotations

import copy
import stat
import struct
import zipfile
from pathlib import Path
from typing import Any

import grpc
import pytest

from modelrunner import errors
from modelrunner.safe_zip import unpack_zip
from modelrunner.v1 import control_pb2
from tests.entry_server.conftest import Running, ServerFactory
from tests.entry_server.helpers import (
    CAREAMICS_ZIP,
    NUCLEI,
    add_model,
    expect_rpc_error,
    source,
    zip_folder,
    zip_with_extra_entry,
)


def _symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix, so the mode bits count
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("../evil.txt", "path leaves the package folder ('..')"),
        ("docs/../../evil.txt", "path leaves the package folder ('..')"),
        ("/etc/evil.txt", "absolute path"),
        ("C:/evil.txt", "absolute path"),
        ("docs\\..\\evil.txt", "backslash in the path"),
        ("bad\nname.txt", "empty name or control characters in the name"),
    ],
)
def test_unsafe_entry_names_are_refused(
    control: Running, tmp_path: Path, entry: str, why: str
) -> None:
    archive = zip_with_extra_entry(NUCLEI, tmp_path / "bad.zip", zipfile.ZipInfo(entry), b"x")
    message = expect_rpc_error(
        lambda: add_model(control.stub, path=str(archive)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidPackageError",
    )
    assert message == f"unsafe zip entry {entry!r}: {why}"
    assert not (tmp_path / "evil.txt").exists()
    assert list((control.cache_dir / "tmp").iterdir()) == []


def test_a_symlink_entry_is_refused(control: Running, tmp_path: Path) -> None:
    info, target = _symlink_entry("weights_link.onnx", "/etc/passwd")
    archive = zip_with_extra_entry(NUCLEI, tmp_path / "link.zip", info, target)
    message = expect_rpc_error(
        lambda: add_model(control.stub, path=str(archive)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidPackageError",
    )
    assert message == "unsafe zip entry 'weights_link.onnx': symbolic link"


def test_validation_refuses_unsafe_zips_too(control: Running, tmp_path: Path) -> None:
    archive = zip_with_extra_entry(NUCLEI, tmp_path / "bad.zip", zipfile.ZipInfo("../x"), b"x")
    expect_rpc_error(
        lambda: control.stub.ValidateModel(
            control_pb2.ValidateModelRequest(source=source(path=str(archive)))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidPackageError",
        "unsafe zip entry '../x'",
    )


def test_a_zip_bomb_over_the_unpacked_limit_is_refused(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    control = start_server(max_unpacked_bytes=5 * 1024**2)
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bioimageio.yaml", "type: model\n")
        zf.writestr("zeros.bin", bytes(50 * 1024**2))
    assert archive.stat().st_size < 100_000
    message = expect_rpc_error(
        lambda: add_model(control.stub, path=str(archive)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ResourceExhaustedError",
    )
    assert message == (
        "package would unpack to 52428812 bytes, over the limit of 5242880 bytes "
        "(setting max_unpacked_bytes)"
    )
    assert list((control.cache_dir / "tmp").iterdir()) == []


def _shrink_declared_size(archive: Path, name: str, declared: int) -> None:
    """Make the central directory claim ``declared`` bytes for ``name`` (a lying header)."""
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(name)
    encoded = name.encode()
    central = data.find(b"PK\x01\x02")
    while central != -1:
        name_length = struct.unpack_from("<H", data, central + 28)[0]
        if bytes(data[central + 46 : central + 46 + name_length]) == encoded:
            struct.pack_into("<I", data, central + 24, declared)
            break
        central = data.find(b"PK\x01\x02", central + 4)
    else:
        raise AssertionError(f"{name} not in the central directory")
    assert info.file_size != declared
    archive.write_bytes(bytes(data))


def test_a_zip_whose_headers_lie_about_sizes_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", bytes(10 * 1024**2))
    _shrink_declared_size(archive, "zeros.bin", 100)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(errors.InvalidPackageError) as info:
        unpack_zip(archive, dest, max_bytes=1024**2, max_files=10)
    # zipfile reads no more than the declared size, then its CRC check fails.
    assert info.value.message.startswith("liar.zip is not a valid zip file: Bad CRC-32")
    assert sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()) <= 1024**2


def test_actual_bytes_are_counted_while_unpacking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Declared sizes that pass the first check cannot smuggle more bytes past the second."""
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", bytes(3 * 1024**2))
    real_infolist, real_open = zipfile.ZipFile.infolist, zipfile.ZipFile.open

    def lying_infolist(self: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
        lies = [copy.copy(info) for info in real_infolist(self)]
        for info in lies:
            info.file_size = 10
        return lies

    def truthful_open(self: zipfile.ZipFile, name: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(name, zipfile.ZipInfo):
            name = self.getinfo(name.filename)
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "infolist", lying_infolist)
    monkeypatch.setattr(zipfile.ZipFile, "open", truthful_open)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(errors.ResourceExhaustedError) as info:
        unpack_zip(archive, dest, max_bytes=1024**2, max_files=10)
    assert info.value.message == (
        "zip entry 'zeros.bin' unpacks to more than its archive declares; the package exceeds "
        "the limit of 1048576 bytes (setting max_unpacked_bytes)"
    )
    assert (dest / "zeros.bin").stat().st_size <= 1024**2


def test_too_many_files_are_refused(start_server: ServerFactory, tmp_path: Path) -> None:
    control = start_server(max_package_files=5)
    message = expect_rpc_error(
        lambda: add_model(control.stub, path=str(zip_folder(NUCLEI, tmp_path / "many.zip"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidPackageError",
    )
    assert message == "package has 9 files, more than the limit of 5 (setting max_package_files)"


def test_a_folder_over_the_limits_is_refused(start_server: ServerFactory) -> None:
    control = start_server(max_unpacked_bytes=1024**2)
    expect_rpc_error(
        lambda: add_model(control.stub, path=str(NUCLEI)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ResourceExhaustedError",
        "package exceeds the limit of 1048576 bytes (setting max_unpacked_bytes) at ",
    )


def test_a_file_that_is_not_a_zip_is_refused(control: Running, tmp_path: Path) -> None:
    fake = tmp_path / "model.zip"
    fake.write_bytes(b"this is no zip")
    message = expect_rpc_error(
        lambda: add_model(control.stub, path=str(fake)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidPackageError",
    )
    assert message == "model.zip is not a valid zip file: File is not a zip file"


def test_a_zip_without_a_description_is_refused(control: Running, tmp_path: Path) -> None:
    archive = tmp_path / "empty.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "hello")
    message = expect_rpc_error(
        lambda: add_model(control.stub, path=str(archive)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidPackageError",
    )
    assert message == f"{archive} holds no bioimageio.yaml or rdf.yaml: not a bioimage.io package"


def test_safe_zips_unpack(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    written = unpack_zip(CAREAMICS_ZIP, dest, max_bytes=10 * 1024**2, max_files=100)
    assert sorted(written) == sorted(p.name for p in dest.iterdir())
    assert "rdf.yaml" in written
