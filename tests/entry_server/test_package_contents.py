"""Packages hold only what they declare, and no source reads a file outside its package or
outside the server's path source roots (issue 10, item 3). Each test names what it attacks."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import grpc
import pytest

from modelrunner.client import ModelRunnerClient
from modelrunner.entry_server.packages import staging
from modelrunner.entry_server.packages.content_hash import hash_package
from modelrunner.v1 import control_pb2
from tests.entry_server.conftest import Running, ServerFactory
from tests.entry_server.helpers import (
    CAREAMICS_ZIP,
    NUCLEI,
    ZOO,
    add_model,
    copy_package,
    edit_yaml,
    expect_rpc_error,
    source,
    upload_requests,
    zip_folder,
)
from tests.entry_server.test_add_and_describe import V04_RDF

NUCLEI_ID = hash_package(NUCLEI)[0] if NUCLEI.is_dir() else ""  # tests.zoo skips its users
SECRET = b"DATABASE_PASSWORD=hunter2\n"


def _stored_files(control: Running, model_id: str) -> set[str]:
    folder = control.cache_dir / "models" / model_id
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _fetched_names(control: Running, model_id: str) -> set[str]:
    request = control_pb2.FetchModelPackageRequest(model_id=model_id)
    parts = list(control.stub.FetchModelPackage(request))
    data = b"".join(p.chunk for p in parts[1:])
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return set(zf.namelist())


def _validate(
    control: Running, *, io_checks: bool = False, **kind: str
) -> control_pb2.ValidateModelResponse:
    request = control_pb2.ValidateModelRequest(source=source(**kind), perform_io_checks=io_checks)
    return control.stub.ValidateModel(request)


def _outside_message(ref: str, why: str = "outside its folder") -> str:
    return (
        f"bioimageio.yaml names the file {ref!r}, which is {why}: a package may name only files "
        "inside its folder (or http(s) URLs)"
    )


def _not_under_roots(path: str) -> str:
    return (
        f"{path} is not under a folder this server reads packages from (setting "
        "path_source_roots): upload the package instead"
    )


# -- a package holds only the files its description names -----------------------------------------


def test_a_dotenv_file_in_a_folder_is_neither_stored_nor_downloadable(
    control: Running, tmp_path: Path
) -> None:
    package = copy_package(NUCLEI, tmp_path / "with-secrets")
    (package / ".env").write_bytes(SECRET)
    (package / "notes").mkdir()
    (package / "notes" / "passwords.txt").write_bytes(SECRET)
    result, progress = add_model(control.stub, path=str(package))
    assert result.model.id == NUCLEI_ID  # the same content as the clean package
    assert result.model.size_bytes == sum(f.stat().st_size for f in NUCLEI.iterdir())
    expected = {p.name for p in NUCLEI.iterdir()}
    assert _stored_files(control, result.model.id) == expected
    assert _fetched_names(control, result.model.id) == expected
    (dropped,) = [p for p in progress if p.stage == "drop"]
    assert (dropped.done, dropped.unit) == (2, "files")


def test_extra_files_in_a_zip_are_dropped(control: Running, tmp_path: Path) -> None:
    archive = zip_folder(NUCLEI, tmp_path / "nuclei.zip", top="nuclei")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("nuclei/.env", SECRET)
        zf.writestr("nuclei/.git/config", b"[remote]\n")
        zf.writestr("__MACOSX/._weights.onnx", b"junk")
    result, progress = add_model(control.stub, path=str(archive))
    assert result.model.id == NUCLEI_ID
    assert _fetched_names(control, NUCLEI_ID) == {p.name for p in NUCLEI.iterdir()}
    assert [p.done for p in progress if p.stage == "drop"] == [2]
    assert list((control.cache_dir / "tmp").iterdir()) == []


def test_extra_files_in_an_uploaded_zip_are_dropped(control: Running, tmp_path: Path) -> None:
    archive = zip_folder(NUCLEI, tmp_path / "upload.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("id_rsa", SECRET)
    upload_id = control.stub.UploadPackage(
        iter(upload_requests(archive.read_bytes(), "upload.zip"))
    ).upload_id
    result, _ = add_model(control.stub, upload_id=upload_id)
    assert result.model.id == NUCLEI_ID
    assert "id_rsa" not in _stored_files(control, NUCLEI_ID)


def test_a_zoo_zip_with_attachments_and_dependencies_keeps_every_declared_file(
    control: Running,
) -> None:
    """The CAREamics package names its config as an attachment and an environment file as
    dependencies: both are declared, so both stay."""
    result, progress = add_model(control.stub, path=str(CAREAMICS_ZIP))
    with zipfile.ZipFile(CAREAMICS_ZIP) as zf:
        assert _stored_files(control, result.model.id) == set(zf.namelist())
    assert not [p for p in progress if p.stage == "drop"]


def test_format_0_4_architecture_and_dependency_files_count_as_declared(tmp_path: Path) -> None:
    """Format 0.4 names files inside strings (``unet.py:UNet``, ``conda:environment.yaml``)."""
    (tmp_path / "unet.py").write_text("class UNet: ...\n")
    (tmp_path / "environment.yaml").write_text("name: x\n")
    (tmp_path / "weights.pt").write_bytes(b"weights")
    (tmp_path / "private.key").write_bytes(SECRET)
    for name in ("weights.onnx", "test_input.npy", "test_output.npy", "README.md"):
        (tmp_path / name).write_bytes((NUCLEI / name).read_bytes())
    sha = hash_package(tmp_path)[1]
    unet_sha = next(r.sha256 for r in sha if r.path == "unet.py")
    rdf = V04_RDF.replace(
        "weights:\n",
        "weights:\n  pytorch_state_dict:\n    source: weights.pt\n"
        f"    architecture: unet.py:UNet\n    architecture_sha256: {unet_sha}\n"
        "    dependencies: conda:environment.yaml\n",
    )
    (tmp_path / "rdf.yaml").write_text(rdf)
    declared = staging.checked_references(tmp_path, tmp_path / "rdf.yaml")
    assert "unet.py" in declared and "environment.yaml" in declared
    assert "private.key" not in declared


# -- references outside the package: refused by add and validate alike, no oracle -----------------


@pytest.mark.parametrize(
    "ref",
    [
        "../outside.onnx",  # exists (created below)
        "../missing.onnx",
        "/etc/passwd",
        "/etc/no-such-file",
        "file:///etc/passwd",
        "file:///no/such/file",
        "~/.ssh/id_rsa",
        "sub/../../outside.onnx",
    ],
)
@pytest.mark.parametrize("action", ["add", "validate", "validate-io"])
def test_a_reference_outside_the_package_is_refused_without_an_existence_oracle(
    control: Running, tmp_path: Path, ref: str, action: str
) -> None:
    """The message is the same whether the outside file exists or not, and never has a hash."""
    (tmp_path / "outside.onnx").write_bytes((NUCLEI / "weights.onnx").read_bytes())
    package = copy_package(NUCLEI, tmp_path / "escape")
    edit_yaml(package, "source: weights.onnx", f"source: {ref}")
    if action == "add":
        call = lambda: add_model(control.stub, path=str(package))  # noqa: E731
    else:
        io_checks = action == "validate-io"
        call = lambda: _validate(control, io_checks=io_checks, path=str(package))  # noqa: E731
    message = expect_rpc_error(call, grpc.StatusCode.INVALID_ARGUMENT, "InvalidPackageError")
    assert message == _outside_message(ref)
    assert list((control.cache_dir / "models").iterdir()) == []


def test_a_description_file_alone_naming_etc_passwd_is_refused(
    control: Running, tmp_path: Path
) -> None:
    """A yaml named directly (and an upload of one): the same refusal."""
    package = copy_package(NUCLEI, tmp_path / "p")
    edit_yaml(package, "source: weights.onnx", "source: /etc/passwd")
    rdf = package / "bioimageio.yaml"
    for call in (
        lambda: add_model(control.stub, path=str(rdf)),
        lambda: _validate(control, io_checks=True, path=str(rdf)),
    ):
        message = expect_rpc_error(call, grpc.StatusCode.INVALID_ARGUMENT, "InvalidPackageError")
        assert message == _outside_message("/etc/passwd")
    upload_id = control.stub.UploadPackage(
        iter(upload_requests(rdf.read_bytes(), "bioimageio.yaml"))
    ).upload_id
    message = expect_rpc_error(
        lambda: _validate(control, io_checks=True, upload_id=upload_id),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidPackageError",
    )
    assert message == _outside_message("/etc/passwd")


@pytest.mark.parametrize("target", ["/etc/hostname", "/no/such/file"])
@pytest.mark.parametrize("action", ["add", "validate-io"])
def test_a_declared_file_that_is_a_link_leaving_the_folder_is_refused(
    control: Running, tmp_path: Path, target: str, action: str
) -> None:
    package = copy_package(NUCLEI, tmp_path / "linked")
    (package / "weights.onnx").unlink()
    (package / "weights.onnx").symlink_to(target)
    if action == "add":
        call = lambda: add_model(control.stub, path=str(package))  # noqa: E731
    else:
        call = lambda: _validate(control, io_checks=True, path=str(package))  # noqa: E731
    message = expect_rpc_error(call, grpc.StatusCode.INVALID_ARGUMENT, "InvalidPackageError")
    assert message == _outside_message("weights.onnx", "a link leaving its folder")


@pytest.mark.parametrize("target", ["/etc/hostname", "/no/such/bioimageio.yaml"])
@pytest.mark.parametrize("action", ["add", "validate"])
def test_a_description_that_is_a_link_leaving_the_folder_is_refused_unread(
    control: Running, tmp_path: Path, target: str, action: str
) -> None:
    """A folder under a root whose bioimageio.yaml points elsewhere: refused before the link is
    followed, with one message whether its target exists or not."""
    package = copy_package(NUCLEI, tmp_path / "linked-description")
    (package / "bioimageio.yaml").unlink()
    (package / "bioimageio.yaml").symlink_to(target)
    if action == "add":
        call = lambda: add_model(control.stub, path=str(package))  # noqa: E731
    else:
        call = lambda: _validate(control, path=str(package))  # noqa: E731
    message = expect_rpc_error(call, grpc.StatusCode.INVALID_ARGUMENT, "InvalidPackageError")
    assert message == _outside_message("bioimageio.yaml", "a link leaving its folder")


def test_a_declared_file_under_a_linked_folder_outside_is_refused(
    control: Running, tmp_path: Path
) -> None:
    package = copy_package(NUCLEI, tmp_path / "linked-dir")
    (package / "docs").symlink_to("/etc")
    edit_yaml(package, "documentation: README.md", "documentation: docs/passwd")
    message = expect_rpc_error(
        lambda: add_model(control.stub, path=str(package)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidPackageError",
    )
    assert message == _outside_message("docs/passwd", "a link leaving its folder")


def test_a_zip_naming_a_file_outside_is_refused(control: Running, tmp_path: Path) -> None:
    package = copy_package(NUCLEI, tmp_path / "p")
    edit_yaml(package, "source: weights.onnx", "source: ../../../etc/passwd")
    archive = zip_folder(package, tmp_path / "escape.zip")
    message = expect_rpc_error(
        lambda: add_model(control.stub, path=str(archive)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidPackageError",
    )
    assert message == _outside_message("../../../etc/passwd")
    assert list((control.cache_dir / "tmp").iterdir()) == []


# -- path sources only under path_source_roots ------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/etc", "/etc/passwd", "/no/such/folder", "/root/.ssh/id_rsa", "~/.ssh", "~no-such-user/x"],
)
@pytest.mark.parametrize("action", ["add", "validate"])
def test_a_path_outside_the_roots_is_refused_whether_it_exists_or_not(
    control: Running, path: str, action: str
) -> None:
    if action == "add":
        call = lambda: add_model(control.stub, path=path)  # noqa: E731
    else:
        call = lambda: _validate(control, path=path)  # noqa: E731
    message = expect_rpc_error(call, grpc.StatusCode.PERMISSION_DENIED, "PermissionDeniedError")
    assert message == _not_under_roots(path)


def test_dot_dot_out_of_a_root_is_refused(control: Running) -> None:
    path = f"{ZOO}/../../../../../../etc"
    message = expect_rpc_error(
        lambda: add_model(control.stub, path=path),
        grpc.StatusCode.PERMISSION_DENIED,
        "PermissionDeniedError",
    )
    assert message == _not_under_roots(path)


def test_a_link_inside_a_root_to_a_folder_outside_is_refused(
    control: Running, tmp_path: Path
) -> None:
    outside = copy_package(NUCLEI, tmp_path.parent / f"{tmp_path.name}-outside")
    link = tmp_path / "innocent"
    link.symlink_to(outside)
    message = expect_rpc_error(
        lambda: add_model(control.stub, path=str(link)),
        grpc.StatusCode.PERMISSION_DENIED,
        "PermissionDeniedError",
    )
    assert message == _not_under_roots(str(link))


def test_the_cache_itself_is_not_a_path_source(control: Running) -> None:
    """Inside a root but in the cache: uploads of other clients and staged packages live there."""
    model_id = add_model(control.stub, path=str(NUCLEI))[0].model.id
    path = str(control.cache_dir / "models" / model_id)
    message = expect_rpc_error(
        lambda: add_model(control.stub, path=path),
        grpc.StatusCode.PERMISSION_DENIED,
        "PermissionDeniedError",
    )
    assert message == _not_under_roots(path)


def test_by_default_the_server_reads_no_paths(start_server: ServerFactory) -> None:
    control = start_server(path_source_roots=[])
    message = expect_rpc_error(
        lambda: add_model(control.stub, path=str(NUCLEI)),
        grpc.StatusCode.PERMISSION_DENIED,
        "PermissionDeniedError",
    )
    assert message == (
        "this server reads no paths on its own disk (setting path_source_roots is empty): "
        "upload the package instead"
    )


def test_the_client_uploads_a_local_folder_the_server_will_not_read(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """Secure default, same usability: a local client falls back to uploading."""
    control = start_server(path_source_roots=[])
    package = copy_package(NUCLEI, tmp_path / "mine")
    (package / ".env").write_bytes(SECRET)
    with ModelRunnerClient(control.server.address, timeout=60) as client:
        model = client.add_model(package)
        report = client.validate(package, perform_io_checks=False)
    assert model.id == NUCLEI_ID
    assert model.source.startswith("upload:")
    assert report.passed
    assert ".env" not in _stored_files(control, NUCLEI_ID)


def test_a_path_under_a_configured_root_is_read_and_others_are_refused(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """A path inside the roots works and keeps its label; the zoo, outside them, is refused."""
    root = tmp_path / "models"
    package = copy_package(NUCLEI, root / "nuclei")
    control = start_server(path_source_roots=[root])
    result, _ = add_model(control.stub, path=str(package))
    assert result.model.source == str(package)
    expect_rpc_error(
        lambda: add_model(control.stub, path=str(NUCLEI)),
        grpc.StatusCode.PERMISSION_DENIED,
        "PermissionDeniedError",
        _not_under_roots(str(NUCLEI)),
    )
