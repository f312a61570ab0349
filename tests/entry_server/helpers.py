"""Helpers for the control service tests: calling the service, building packages, asserting
errors exactly."""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest

from modelrunner.transport_errors import from_rpc_error
from modelrunner.v1 import control_pb2, control_pb2_grpc, models_pb2
from tests.zoo import CAREAMICS_ZIP, MULTI, NUCLEI, ZOO

__all__ = ["CAREAMICS_ZIP", "MULTI", "NUCLEI", "ZOO"]


def source(**kind: str) -> models_pb2.ModelSource:
    return models_pb2.ModelSource(**kind)


def add_model(
    stub: control_pb2_grpc.ControlServiceStub, **kind: str
) -> tuple[control_pb2.AddModelResult, list[models_pb2.Progress]]:
    """Add a model; returns the result and the progress events streamed before it."""
    progress: list[models_pb2.Progress] = []
    result = None
    for event in stub.AddModel(control_pb2.AddModelRequest(source=source(**kind))):
        if event.HasField("progress"):
            progress.append(event.progress)
        else:
            assert result is None, "more than one result"
            result = event.result
    assert result is not None, "AddModel ended without a result"
    return result, progress


def expect_rpc_error(
    call: Callable[[], Any], code: grpc.StatusCode, type_name: str, *fragments: str
) -> str:
    """Run ``call`` (which must fail), check the status code, the modelrunner type from the
    error trailer and that the message contains every fragment; returns the message."""
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if isinstance(result, Iterable):
            list(result)
    error = info.value
    assert error.code() == code, error.details()
    message = error.details()
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    typed = from_rpc_error(error)
    assert type(typed).__name__ == type_name, repr(typed)
    assert typed.message == message
    return message


def copy_package(src: Path, dest: Path) -> Path:
    """A writable copy of a read-only zoo folder."""
    shutil.copytree(src, dest)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


def zip_folder(folder: Path, archive: Path, *, top: str = "") -> Path:
    """Zip the files of ``folder`` (under the folder name ``top`` when given)."""
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                name = path.relative_to(folder).as_posix()
                zf.write(path, f"{top}/{name}" if top else name)
    return archive


def zip_with_extra_entry(folder: Path, archive: Path, info: zipfile.ZipInfo, data: bytes) -> Path:
    """A copy of the package ``folder`` as a zip plus one crafted entry."""
    zip_folder(folder, archive)
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr(info, data)
    return archive


def edit_yaml(package: Path, old: str, new: str) -> None:
    rdf = package / "bioimageio.yaml"
    text = rdf.read_text()
    assert old in text, old
    rdf.write_text(text.replace(old, new, 1))


def upload_requests(
    data: bytes,
    filename: str,
    *,
    chunk: int = 256 * 1024,
    size: int | None = None,
    sha256: str = "",
) -> list[control_pb2.UploadPackageRequest]:
    header = control_pb2.UploadHeader(
        filename=filename, size_bytes=len(data) if size is None else size, sha256=sha256
    )
    requests = [control_pb2.UploadPackageRequest(header=header)]
    requests += [
        control_pb2.UploadPackageRequest(chunk=data[i : i + chunk])
        for i in range(0, len(data), chunk)
    ]
    return requests
