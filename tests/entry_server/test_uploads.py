"""UploadPackage: chunks in, checked, then added or expired."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import grpc

from modelrunner.v1 import control_pb2
from tests.entry_server.conftest import Running, ServerFactory
from tests.entry_server.helpers import (
    CAREAMICS_ZIP,
    NUCLEI,
    add_model,
    expect_rpc_error,
    upload_requests,
)
from tests.zoo import needs_zoo

pytestmark = needs_zoo
DATA = CAREAMICS_ZIP.read_bytes() if CAREAMICS_ZIP.is_file() else b""


def _uploads(control: Running) -> list[Path]:
    return list((control.cache_dir / "uploads").iterdir())


def test_upload_then_add(control: Running) -> None:
    sha = hashlib.sha256(DATA).hexdigest()
    answer = control.stub.UploadPackage(
        iter(upload_requests(DATA, "careamics_n2v_tiny.zip", sha256=sha))
    )
    assert (answer.size_bytes, answer.sha256) == (len(DATA), sha)
    assert len(answer.upload_id) == 32
    result, _ = add_model(control.stub, upload_id=answer.upload_id)
    assert result.created
    assert result.model.name == "tiny n2v"
    assert result.model.source == "upload:careamics_n2v_tiny.zip"
    assert _uploads(control) == []  # used uploads are deleted
    expect_rpc_error(
        lambda: add_model(control.stub, upload_id=answer.upload_id),
        grpc.StatusCode.NOT_FOUND,
        "SourceNotFoundError",
        f"no upload with id {answer.upload_id} (unknown, or expired after 600 s)",
    )


def test_an_uploaded_yaml_can_be_validated(control: Running) -> None:
    data = (NUCLEI / "bioimageio.yaml").read_bytes()
    upload = control.stub.UploadPackage(iter(upload_requests(data, "bioimageio.yaml")))
    report = control.stub.ValidateModel(
        control_pb2.ValidateModelRequest(source={"upload_id": upload.upload_id})
    ).report
    assert report.status == "valid-format"
    assert report.source == "upload:bioimageio.yaml"


def test_an_upload_over_the_limit_is_refused_while_receiving(
    start_server: ServerFactory,
) -> None:
    control = start_server(max_upload_bytes=300_000)
    message = expect_rpc_error(
        lambda: control.stub.UploadPackage(iter(upload_requests(DATA, "m.zip", size=0))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ResourceExhaustedError",
    )
    assert message == (
        "upload refused: more than 300000 bytes sent, over the limit of 300000 bytes "
        "(setting max_upload_bytes)"
    )
    assert _uploads(control) == []  # the partial file is gone


def test_an_upload_declaring_too_many_bytes_is_refused_at_once(
    start_server: ServerFactory,
) -> None:
    control = start_server(max_upload_bytes=300_000)
    message = expect_rpc_error(
        lambda: control.stub.UploadPackage(iter(upload_requests(DATA, "m.zip"))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ResourceExhaustedError",
    )
    assert message == (
        f"upload refused: it declares {len(DATA)} bytes, over the limit of 300000 bytes "
        "(setting max_upload_bytes)"
    )


def test_upload_checks(control: Running) -> None:
    stub = control.stub
    wrong_sha = "0" * 64
    expect_rpc_error(
        lambda: stub.UploadPackage(iter(upload_requests(DATA, "m.zip", sha256=wrong_sha))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidArgumentError",
        f"upload 'm.zip' does not match its sha256: the header declares {wrong_sha}, the bytes "
        f"that arrived hash to {hashlib.sha256(DATA).hexdigest()}",
    )
    expect_rpc_error(
        lambda: stub.UploadPackage(iter(upload_requests(DATA, "m.zip", size=len(DATA) + 1))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidArgumentError",
        f"upload 'm.zip' is incomplete or too long: the header declares {len(DATA) + 1} bytes, "
        f"{len(DATA)} arrived",
    )
    expect_rpc_error(
        lambda: stub.UploadPackage(iter(upload_requests(DATA, "../m.zip"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidArgumentError",
        "upload file name '../m.zip' must be a plain file name without folders",
    )
    expect_rpc_error(
        lambda: stub.UploadPackage(iter(upload_requests(DATA, "m.zip")[1:])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidArgumentError",
        "the first UploadPackageRequest must carry the header (file name, size, sha256)",
    )
    requests = upload_requests(DATA, "m.zip")
    expect_rpc_error(
        lambda: stub.UploadPackage(iter([*requests[:2], requests[0], *requests[2:]])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidArgumentError",
        "only the first UploadPackageRequest may carry a header",
    )
    expect_rpc_error(
        lambda: stub.UploadPackage(iter(upload_requests(b"", "m.zip"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidArgumentError",
        "upload 'm.zip' is empty",
    )
    assert _uploads(control) == []


def test_unused_uploads_expire(start_server: ServerFactory) -> None:
    control = start_server(upload_ttl_s=60)
    upload = control.stub.UploadPackage(iter(upload_requests(DATA, "m.zip")))
    folder = control.cache_dir / "uploads" / upload.upload_id
    old = time.time() - 120
    os.utime(folder, (old, old))
    expect_rpc_error(
        lambda: add_model(control.stub, upload_id=upload.upload_id),
        grpc.StatusCode.NOT_FOUND,
        "SourceNotFoundError",
        f"no upload with id {upload.upload_id} (unknown, or expired after 60 s)",
    )
    assert not folder.exists()
