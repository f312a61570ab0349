"""Adding, listing, describing, validating and removing models through the typed client."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest

from modelrunner.client import (
    InvalidPackageError,
    ModelInfo,
    ModelNotFoundError,
    ModelRunnerClient,
    ParameterizedSize,
    SizeReference,
    SourceNotFoundError,
    UnavailableError,
)
from tests.zoo import CAREAMICS_ZIP, MULTI, NUCLEI


def test_add_returns_typed_info_with_a_content_id(nuclei: ModelInfo) -> None:
    assert len(nuclei.id) == 64
    assert nuclei.name == "UNet 2D Nuclei Broad"
    assert set(nuclei.weight_formats) == {"onnx", "torchscript"}
    raw = nuclei.input("raw")
    assert [a.id for a in raw.axes] == ["batch", "channel", "y", "x"]
    assert raw.axes[2].size == 512 and raw.dtype == "float32"
    assert [p.id for p in raw.preprocessing] == [
        "ensure_dtype",
        "zero_mean_unit_variance",
        "ensure_dtype",
    ]
    probability = nuclei.output("probability")
    assert probability.axes[2].halo == 32
    assert probability.axes[2].size == SizeReference(tensor_id="raw", axis_id="y")


def test_adding_the_same_content_again_gives_the_same_model(
    client: ModelRunnerClient, nuclei: ModelInfo, tmp_path: Path
) -> None:
    copy = shutil.copytree(NUCLEI, tmp_path / "elsewhere")
    assert client.add_model(copy).id == nuclei.id
    assert client.add_model(copy, upload=True).id == nuclei.id


def test_list_and_describe(client: ModelRunnerClient, nuclei: ModelInfo) -> None:
    multi = client.add_model(MULTI)
    ids = {m.id for m in client.list_models()}
    assert {nuclei.id, multi.id} <= ids
    described = client.describe(multi.id[:10])
    assert described.id == multi.id
    assert described.rdf is not None and described.rdf["name"] == "Multi-tensor"
    assert described.input("input0").axes[2].size == ParameterizedSize(min=32, step=16)


def test_zip_package_upload(client: ModelRunnerClient) -> None:
    info = client.add_model(CAREAMICS_ZIP.read_bytes())
    assert info.weight_formats == ("pytorch_state_dict",)
    assert client.describe(info.id).name == "tiny n2v"


def test_validate_returns_reports_as_data(client: ModelRunnerClient, tmp_path: Path) -> None:
    report = client.validate(NUCLEI)
    assert report.passed and report.status in ("passed", "valid-format")
    broken = shutil.copytree(MULTI, tmp_path / "broken")
    text = (broken / "bioimageio.yaml").read_text().replace("type: space", "type: spaceship", 1)
    (broken / "bioimageio.yaml").write_text(text)
    report = client.validate(broken)
    assert report.status == "failed" and not report.passed
    assert any("inputs" in e.loc for e in report.errors)


def test_unknown_models_and_sources_are_clear_errors(client: ModelRunnerClient) -> None:
    with pytest.raises(ModelNotFoundError, match="no model 'deadbeefcafe'"):
        client.describe("deadbeefcafe")
    with pytest.raises(SourceNotFoundError, match="no such file or folder"):
        client.add_model("./missing/model.zip")
    with pytest.raises(InvalidPackageError):
        client.add_model(b"PK\x03\x04 this is no zip")
    assert client.list_models()  # still serving


def test_remove(client: ModelRunnerClient, tmp_path: Path) -> None:
    info = client.add_model(CAREAMICS_ZIP)
    client.remove_model(info.id)
    with pytest.raises(ModelNotFoundError):
        client.describe(info.id)


def test_server_info(client: ModelRunnerClient) -> None:
    info = client.server_info()
    assert info.package_versions["bioimageio.core"] == "0.11.0"
    assert info.cache is not None and info.cache.models >= 1
    (runtime,) = info.runtimes
    assert runtime.available and runtime.devices[0].name == "cpu"
    assert "onnx" in runtime.weight_formats


def test_an_unreachable_server_is_unavailable() -> None:
    with ModelRunnerClient("127.0.0.1:9", timeout=2) as c, pytest.raises(UnavailableError):
        c.list_models()


def test_errors_are_never_raw_grpc_errors(client: ModelRunnerClient) -> None:
    try:
        client.remove_model("nothing-like-this")
    except Exception as e:  # noqa: BLE001 - the point is which type arrives
        assert not isinstance(e, grpc.RpcError)
        assert isinstance(e, ModelNotFoundError)
