"""ValidateModel: the outcome is a report, also for invalid descriptions."""

from __future__ import annotations

from pathlib import Path

import grpc

from modelrunner import converters
from modelrunner.v1 import control_pb2
from tests.entry_server.conftest import Running
from tests.entry_server.helpers import (
    CAREAMICS_ZIP,
    NUCLEI,
    copy_package,
    edit_yaml,
    expect_rpc_error,
    source,
)


def _validate(
    control: Running, *, io: bool = False, **kind: str
) -> control_pb2.ValidateModelResponse:
    return control.stub.ValidateModel(
        control_pb2.ValidateModelRequest(source=source(**kind), perform_io_checks=io)
    )


def test_a_valid_package_passes_without_being_added(control: Running) -> None:
    for kind in ({"path": str(NUCLEI)}, {"path": str(CAREAMICS_ZIP)}):
        report = converters.from_pb_report(_validate(control, io=True, **kind).report)
        assert report.status == "valid-format"
        assert report.passed
        assert report.errors == ()
        assert report.type == "model"
        assert "bioimageio.spec" in report.env
        assert report.markdown
    assert list(control.stub.ListModels(control_pb2.ListModelsRequest()).models) == []
    assert list((control.cache_dir / "tmp").iterdir()) == []


def test_an_invalid_description_is_a_failed_report_with_locations(
    control: Running, tmp_path: Path
) -> None:
    package = copy_package(NUCLEI, tmp_path / "broken")
    edit_yaml(package, "size: 512\n        id: y", "size: -5\n        id: y")
    report = converters.from_pb_report(_validate(control, path=str(package)).report)
    assert report.status == "failed"
    assert report.source == str(package)
    locations = {e.loc for e in report.errors}
    assert ("inputs", "0", "axes", "2", "space", "size", "constrained-int") in locations
    first = next(e for e in report.errors if e.loc[-1] == "constrained-int")
    assert first.msg == "Input should be greater than 0"
    assert first.type == "greater_than"


def test_io_checks_find_a_file_that_does_not_match_its_sha256(
    control: Running, tmp_path: Path
) -> None:
    package = copy_package(NUCLEI, tmp_path / "tampered")
    (package / "weights.onnx").write_bytes(b"other weights")
    without = converters.from_pb_report(_validate(control, path=str(package)).report)
    assert without.status == "valid-format"
    report = converters.from_pb_report(_validate(control, io=True, path=str(package)).report)
    assert report.status == "failed"
    (error,) = [e for e in report.errors if e.loc == ("weights", "onnx")]
    assert error.msg.startswith(f"Value error, SHA256 mismatch for {package / 'weights.onnx'}.")


def test_a_file_that_is_not_yaml_is_a_failed_report(control: Running, tmp_path: Path) -> None:
    rdf = tmp_path / "bioimageio.yaml"
    rdf.write_text("name: x\n  bad: [\n")
    report = converters.from_pb_report(_validate(control, path=str(rdf)).report)
    assert report.status == "failed"
    (error,) = report.errors
    assert error.loc == ("bioimageio.yaml", "line 2", "column 6")
    assert error.msg == "bioimageio.yaml is not valid YAML: mapping values are not allowed here"


def test_validate_source_errors(control: Running) -> None:
    missing = NUCLEI.parent / "no-such-package.zip"  # under a path_source_roots folder
    expect_rpc_error(
        lambda: _validate(control, path=str(missing)),
        grpc.StatusCode.NOT_FOUND,
        "SourceNotFoundError",
        f"no such file or folder on the server: {missing}",
    )
    expect_rpc_error(
        lambda: control.stub.ValidateModel(control_pb2.ValidateModelRequest()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidSourceError",
        "no model source given",
    )
