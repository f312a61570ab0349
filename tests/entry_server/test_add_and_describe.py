"""Adding models from local sources, describing, listing and removing them."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import grpc
import pytest

from modelrunner import converters
from modelrunner.entry_server.packages.content_hash import hash_package
from modelrunner.v1 import control_pb2
from tests.entry_server.conftest import Running
from tests.entry_server.helpers import (
    CAREAMICS_ZIP,
    MULTI,
    NUCLEI,
    add_model,
    copy_package,
    edit_yaml,
    expect_rpc_error,
    zip_folder,
)

NUCLEI_ID = hash_package(NUCLEI)[0] if NUCLEI.is_dir() else ""  # tests.zoo skips its users


def test_add_from_a_folder_streams_progress_then_the_model(control: Running) -> None:
    result, progress = add_model(control.stub, path=str(NUCLEI))
    assert result.created
    model = converters.from_pb_model_info(result.model)
    assert model.id == NUCLEI_ID
    assert model.name == "UNet 2D Nuclei Broad"
    assert model.format_version == "0.5.4"
    assert model.license == "MIT"
    assert model.weight_formats == ("onnx", "torchscript")
    assert model.source == str(NUCLEI)
    assert model.size_bytes == sum(f.stat().st_size for f in NUCLEI.iterdir())
    assert [a.name for a in model.authors] == [
        "Constantin Pape;@bioimage-io",
        "Fynn Beuttenmueller",
    ]
    assert model.authors[0].orcid == "0000-0001-6562-7187"
    assert model.added_at is not None
    stages = [p.stage for p in progress]
    assert stages[0] == "copy" and "hash" in stages and stages[-1] == "store"
    hashed = [p for p in progress if p.stage == "hash"][-1]
    assert hashed.done == hashed.total == model.size_bytes
    assert (control.cache_dir / "models" / model.id / "bioimageio.yaml").is_file()
    assert list((control.cache_dir / "tmp").iterdir()) == []


def test_typed_tensor_specs(control: Running) -> None:
    model = converters.from_pb_model_info(add_model(control.stub, path=str(NUCLEI))[0].model)
    raw, probability = model.input("raw"), model.output("probability")
    assert raw.axis_ids == ("batch", "channel", "y", "x")
    assert [a.type for a in raw.axes] == ["batch", "channel", "space", "space"]
    assert [a.size for a in raw.axes] == [1, 1, 512, 512]
    assert raw.axes[1].channel_names == ("raw_intensity",)
    assert raw.dtype == "float32"
    assert raw.test_shape == (1, 1, 512, 512)
    assert [(p.id, p.kwargs) for p in raw.preprocessing] == [
        ("ensure_dtype", {"dtype": "float32"}),
        ("zero_mean_unit_variance", {"axes": ["x", "y"], "eps": 1e-06}),
        ("ensure_dtype", {"dtype": "float32"}),
    ]
    y = probability.axes[2]
    assert (y.id, y.halo, y.scale) == ("y", 32, 1.0)
    assert y.size is not None and y.size.model_dump() == {
        "tensor_id": "raw",
        "axis_id": "y",
        "offset": 0,
    }
    assert probability.axes[0].size is None  # batch of any size
    assert [p.id for p in probability.postprocessing] == ["sigmoid", "ensure_dtype"]


def test_parameterized_sizes_and_several_tensors(control: Running) -> None:
    model = converters.from_pb_model_info(add_model(control.stub, path=str(MULTI))[0].model)
    assert [t.id for t in model.inputs] == ["input0", "input1"]
    assert [t.id for t in model.outputs] == ["output0", "output1"]
    y = model.input("input1").axes[2]
    assert y.size is not None and y.size.model_dump() == {"min": 32, "step": 16}
    assert model.input("input0").test_shape == (1, 1, 256, 256)


def test_add_from_a_zip_with_a_pytorch_state_dict_model(control: Running) -> None:
    result, progress = add_model(control.stub, path=str(CAREAMICS_ZIP))
    model = converters.from_pb_model_info(result.model)
    assert model.name == "tiny n2v"
    assert model.version == "0.3.5"
    assert model.weight_formats == ("pytorch_state_dict",)
    assert model.input("input").test_shape == (1, 1, 64, 64)
    assert "unpack" in [p.stage for p in progress]


def test_same_content_from_folder_yaml_and_zips_gives_one_id(
    control: Running, tmp_path: Path
) -> None:
    first, _ = add_model(control.stub, path=str(NUCLEI))
    assert first.created
    sources = [
        NUCLEI / "bioimageio.yaml",
        zip_folder(NUCLEI, tmp_path / "flat.zip"),
        zip_folder(NUCLEI, tmp_path / "nested.zip", top="unet2d_nuclei_broad"),
    ]
    for path in sources:
        again, _ = add_model(control.stub, path=str(path))
        assert (again.model.id, again.created) == (first.model.id, False), path
        assert again.model.source == str(NUCLEI)  # the first source is kept
    listed = control.stub.ListModels(control_pb2.ListModelsRequest())
    assert [m.id for m in listed.models] == [first.model.id]


def test_concurrent_adds_of_the_same_model_agree(control: Running) -> None:
    results: list[control_pb2.AddModelResult] = []
    failures: list[BaseException] = []

    def add() -> None:
        try:
            results.append(add_model(control.stub, path=str(NUCLEI))[0])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert {r.model.id for r in results} == {NUCLEI_ID}
    assert sorted(r.created for r in results) == [False, False, False, True]
    assert [p.name for p in (control.cache_dir / "models").iterdir()] == [NUCLEI_ID]
    assert list((control.cache_dir / "tmp").iterdir()) == []


def test_a_format_0_4_description_is_converted(control: Running, tmp_path: Path) -> None:
    package = tmp_path / "v04"
    package.mkdir()
    for name in ("weights.onnx", "test_input.npy", "test_output.npy", "README.md"):
        (package / name).write_bytes((NUCLEI / name).read_bytes())
    (package / "rdf.yaml").write_text(V04_RDF)
    model = converters.from_pb_model_info(add_model(control.stub, path=str(package))[0].model)
    assert model.format_version == "0.4.10"
    assert model.weight_formats == ("onnx",)
    raw = model.input("raw")
    assert raw.axis_ids == ("batch", "channel", "y", "x")
    assert raw.axes[2].size is not None
    assert raw.axes[2].size.model_dump() == {"min": 128, "step": 16}
    assert raw.test_shape == (1, 1, 512, 512)
    assert model.output("probability").axes[3].halo == 32
    described = control.stub.DescribeModel(control_pb2.DescribeModelRequest(model_id=model.id))
    assert "Infinity" not in described.model.rdf_json  # strict JSON for clients in any language
    assert json.loads(described.model.rdf_json)["inputs"][0]["data_range"] == ["-inf", "inf"]


V04_RDF = """\
format_version: 0.4.10
type: model
name: UNet 2D Nuclei Broad v04
description: A 2d U-Net (format 0.4)
authors: [{name: Constantin Pape, affiliation: EMBL}]
cite: [{text: U-Net, doi: 10.1007/978-3-319-24574-4_28}]
license: MIT
documentation: README.md
timestamp: 2019-12-11T11:22:32
tags: [unet2d]
test_inputs: [test_input.npy]
test_outputs: [test_output.npy]
inputs:
  - name: raw
    axes: bcyx
    data_type: float32
    data_range: [-.inf, .inf]
    shape: {min: [1, 1, 128, 128], step: [0, 0, 16, 16]}
    preprocessing:
      - name: zero_mean_unit_variance
        kwargs: {mode: per_sample, axes: yx}
outputs:
  - name: probability
    axes: bcyx
    data_type: float32
    data_range: [0, 1]
    halo: [0, 0, 32, 32]
    shape: {reference_tensor: raw, scale: [1, 1, 1, 1], offset: [0, 0, 0, 0]}
    postprocessing: [{name: sigmoid}]
weights:
  onnx:
    source: weights.onnx
    sha256: 85f5ac80fa977fea3562ef97c8c5950288be2c4f4cdb5d994807df97008ce088
    opset_version: 12
"""


def test_describe_by_id_prefix_and_bioimageio_id(control: Running, tmp_path: Path) -> None:
    package = copy_package(NUCLEI, tmp_path / "shark")
    edit_yaml(package, "type: model\n", "type: model\nid: test-shark\n")
    model = add_model(control.stub, path=str(package))[0].model
    assert model.bioimageio_id == "test-shark"
    for ref in (model.id, model.id[:6], model.id.upper()[:10], "test-shark"):
        described = control.stub.DescribeModel(control_pb2.DescribeModelRequest(model_id=ref))
        assert described.model.id == model.id, ref
    rdf = json.loads(described.model.rdf_json)
    assert rdf["name"] == "UNet 2D Nuclei Broad"
    assert rdf["inputs"][0]["axes"][2] == {"size": 512, "id": "y", "type": "space"}
    assert rdf["timestamp"] == "2019-12-11T11:22:32+00:00"
    listed = control.stub.ListModels(control_pb2.ListModelsRequest())
    assert listed.models[0].rdf_json == ""  # only DescribeModel carries the description


def test_describe_errors(control: Running, tmp_path: Path) -> None:
    stub = control.stub
    model = add_model(stub, path=str(NUCLEI))[0].model
    unknown = "0" * 64
    expect_rpc_error(
        lambda: stub.DescribeModel(control_pb2.DescribeModelRequest(model_id=unknown)),
        grpc.StatusCode.NOT_FOUND,
        "ModelNotFoundError",
        f"no model '{unknown}' in the registry (looked for a model id, a unique prefix of one "
        "of at least 6 characters, and a bioimage.io id)",
    )
    expect_rpc_error(
        lambda: stub.DescribeModel(control_pb2.DescribeModelRequest(model_id=model.id[:5])),
        grpc.StatusCode.NOT_FOUND,
        "ModelNotFoundError",
        f"no model '{model.id[:5]}' in the registry",
    )
    expect_rpc_error(
        lambda: stub.DescribeModel(control_pb2.DescribeModelRequest(model_id=" ")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidArgumentError",
        "no model given: pass a model id, a unique prefix of one (at least 6 characters) or a "
        "bioimage.io id",
    )


def test_an_ambiguous_bioimageio_id_is_refused(control: Running, tmp_path: Path) -> None:
    ids = []
    for version in ("1", "2"):
        package = copy_package(NUCLEI, tmp_path / f"v{version}")
        edit_yaml(package, "type: model\n", f"type: model\nid: twin\nversion: {version}\n")
        ids.append(add_model(control.stub, path=str(package))[0].model.id)
    message = expect_rpc_error(
        lambda: control.stub.DescribeModel(control_pb2.DescribeModelRequest(model_id="twin")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidArgumentError",
        "bioimage.io id 'twin' is ambiguous: it matches 2 models (",
        "give the full model id",
    )
    for model_id in ids:
        assert model_id[:12] in message


def test_remove_frees_the_cache(control: Running) -> None:
    model = add_model(control.stub, path=str(NUCLEI))[0].model
    answer = control.stub.RemoveModel(control_pb2.RemoveModelRequest(model_id=model.id[:8]))
    assert (answer.model_id, answer.freed_bytes) == (model.id, model.size_bytes)
    assert not (control.cache_dir / "models" / model.id).exists()
    assert list(control.stub.ListModels(control_pb2.ListModelsRequest()).models) == []
    expect_rpc_error(
        lambda: control.stub.RemoveModel(control_pb2.RemoveModelRequest(model_id=model.id)),
        grpc.StatusCode.NOT_FOUND,
        "ModelNotFoundError",
        f"no model '{model.id}' in the registry",
    )


@pytest.mark.parametrize(
    ("kind", "value", "code", "type_name", "message"),
    [
        (
            "path",
            str(NUCLEI.parent / "no-such-model"),  # under a path_source_roots folder
            grpc.StatusCode.NOT_FOUND,
            "SourceNotFoundError",
            f"no such file or folder on the server: {NUCLEI.parent / 'no-such-model'}",
        ),
        (
            "path",
            "/no/such/model",
            grpc.StatusCode.PERMISSION_DENIED,
            "PermissionDeniedError",
            "/no/such/model is not under a folder this server reads packages from (setting "
            "path_source_roots): upload the package instead",
        ),
        (
            "path",
            str(NUCLEI / "weights.onnx"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "InvalidSourceError",
            f"{NUCLEI / 'weights.onnx'} is neither a folder, a .zip package nor a .yaml description",
        ),
        (
            "path",
            str(NUCLEI.parent),
            grpc.StatusCode.INVALID_ARGUMENT,
            "InvalidPackageError",
            f"folder {NUCLEI.parent} holds no bioimageio.yaml or rdf.yaml: not a bioimage.io "
            "package",
        ),
        (
            "url",
            "ftp://example.com/model.zip",
            grpc.StatusCode.INVALID_ARGUMENT,
            "InvalidSourceError",
            "'ftp://example.com/model.zip' is not an http(s) URL",
        ),
        (
            "bioimageio_id",
            "../etc",
            grpc.StatusCode.INVALID_ARGUMENT,
            "InvalidSourceError",
            "'../etc' is not a bioimage.io id (such as 'affable-shark')",
        ),
        (
            "upload_id",
            "../../etc/passwd",
            grpc.StatusCode.INVALID_ARGUMENT,
            "InvalidSourceError",
            "'../../etc/passwd' is not an upload id (32 hexadecimal digits from UploadPackage)",
        ),
    ],
)
def test_add_source_errors(
    control: Running,
    kind: str,
    value: str,
    code: grpc.StatusCode,
    type_name: str,
    message: str,
) -> None:
    got = expect_rpc_error(lambda: add_model(control.stub, **{kind: value}), code, type_name)
    assert got == message


def test_add_without_a_source_is_invalid(control: Running) -> None:
    got = expect_rpc_error(
        lambda: list(control.stub.AddModel(control_pb2.AddModelRequest())),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidSourceError",
    )
    assert got == "no model source given: set one of path, url, bioimageio_id or upload_id"


def test_an_invalid_description_is_refused_and_leaves_nothing(
    control: Running, tmp_path: Path
) -> None:
    package = copy_package(NUCLEI, tmp_path / "broken")
    edit_yaml(package, "size: 512\n        id: y", "size: -5\n        id: y")
    expect_rpc_error(
        lambda: add_model(control.stub, path=str(package)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidPackageError",
        "bioimageio.yaml is not a valid bioimage.io description: "
        "inputs.0.axes.2.space.size.constrained-int: Input should be greater than 0",
    )
    assert list((control.cache_dir / "models").iterdir()) == []
    assert list((control.cache_dir / "tmp").iterdir()) == []


def test_a_package_missing_a_file_it_names_is_refused(control: Running, tmp_path: Path) -> None:
    package = copy_package(NUCLEI, tmp_path / "incomplete")
    (package / "weights.pt").unlink()
    expect_rpc_error(
        lambda: add_model(control.stub, path=str(package)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidPackageError",
        "weights.torchscript: Value error, File weights.pt not found in `known_files`.",
    )


def test_a_file_that_does_not_match_its_sha256_is_refused(control: Running, tmp_path: Path) -> None:
    package = copy_package(NUCLEI, tmp_path / "tampered")
    (package / "weights.onnx").write_bytes(b"not the weights")
    expect_rpc_error(
        lambda: add_model(control.stub, path=str(package)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidPackageError",
        "weights.onnx: Value error, Sha256 mismatch for weights.onnx.",
    )


def test_a_description_that_is_not_a_model_is_refused(control: Running, tmp_path: Path) -> None:
    package = tmp_path / "dataset"
    package.mkdir()
    (package / "rdf.yaml").write_text(
        "format_version: 0.3.0\ntype: dataset\nname: some data\ndescription: cells\n"
        "authors: [{name: x}]\ncite: [{text: x, doi: 10.1007/978-3-319-24574-4_28}]\n"
        "license: MIT\nsource: https://example.com/data.zip\n"
    )
    expect_rpc_error(
        lambda: add_model(control.stub, path=str(package)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidPackageError",
        "rdf.yaml describes a dataset, not a model",
    )


def test_a_yaml_naming_a_file_outside_its_folder_is_refused(
    control: Running, tmp_path: Path
) -> None:
    package = copy_package(NUCLEI, tmp_path / "escape")
    edit_yaml(package, "source: weights.onnx", "source: ../secret.onnx")
    expect_rpc_error(
        lambda: add_model(control.stub, path=str(package / "bioimageio.yaml")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidPackageError",
        "bioimageio.yaml names the file '../secret.onnx', which is outside its folder",
    )


def test_a_link_leaving_the_folder_that_the_description_does_not_name_is_left_out(
    control: Running, tmp_path: Path
) -> None:
    package = copy_package(NUCLEI, tmp_path / "linked")
    (package / "extra.txt").symlink_to("/etc/hostname")
    model = add_model(control.stub, path=str(package))[0].model
    assert model.id == NUCLEI_ID  # never read: the package holds only what it declares
    assert not (control.cache_dir / "models" / model.id / "extra.txt").exists()
