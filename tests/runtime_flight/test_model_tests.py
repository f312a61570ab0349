"""bioimageio.core's model test as a report: every model passes; a broken one fails as data."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from modelrunner.errors import InvalidArgumentError
from modelrunner.runtime_flight import devices
from modelrunner.runtime_flight.model_tests import run_model_test
from tests.zoo import MULTI, NUCLEI, needs_zoo

Tiny = Callable[[str], Path]

TORCH_AND_ONNX = ["pytorch_state_dict", "torchscript", "onnx", "halo", "parameterized"]
TORCH_AND_ONNX += ["two_inputs", "fixed_output"]
TENSORFLOW = ["tensorflow_saved_model_bundle", "keras_v3", "keras_hdf5"]


def names(report: object) -> list[str]:
    return [d.name for d in report.details]  # type: ignore[attr-defined]


@needs_zoo
def test_nuclei_passes_with_both_formats() -> None:
    report = run_model_test(NUCLEI, model_id="nuclei")
    assert report.status == "passed", report.markdown
    assert report.source == "nuclei"
    assert report.type == "model"
    assert report.errors == ()
    assert "Reproduce test outputs from test inputs (onnx)" in names(report)
    assert "Reproduce test outputs from test inputs (torchscript)" in names(report)
    assert names(report).count("Has expected resource type") == 1
    assert report.env["bioimageio.core"] == "0.11.0"
    assert report.warnings  # the reproduction details are reported as warnings
    assert report.markdown


@needs_zoo
def test_one_format_only() -> None:
    report = run_model_test(NUCLEI, weight_format="onnx", device="cpu")
    assert report.status == "passed"
    assert not [n for n in names(report) if "torchscript" in n]


@needs_zoo
def test_multi_tensor_passes() -> None:
    assert run_model_test(MULTI).status == "passed"


def test_careamics_passes(n2v_package: Path) -> None:
    report = run_model_test(n2v_package)
    assert report.status == "passed", report.markdown


@pytest.mark.parametrize("name", TORCH_AND_ONNX)
def test_tiny_models_pass(name: str, tiny: Tiny) -> None:
    report = run_model_test(tiny(name))
    assert report.status == "passed", report.markdown


@pytest.mark.parametrize("name", TENSORFLOW)
def test_tiny_tensorflow_models_pass(name: str, tiny: Tiny, in_tmp_dir: Path) -> None:
    report = run_model_test(tiny(name))
    assert report.status == "passed", report.markdown


def test_tiny_cellpose_model_passes(tiny: Tiny) -> None:
    pytest.importorskip("cellpose")
    report = run_model_test(tiny("cellpose"))
    assert report.status == "passed", report.markdown


def test_wrong_test_outputs_are_a_failed_report(
    tiny: Tiny, zoo_copy: Callable[[Path], Path]
) -> None:
    package = zoo_copy(tiny("parameterized"))
    output = package / "test_output_out.npy"
    old_sha = hashlib.sha256(output.read_bytes()).hexdigest()
    np.save(output, np.load(output) + 1.0)
    new_sha = hashlib.sha256(output.read_bytes()).hexdigest()
    rdf = package / "rdf.yaml"
    rdf.write_text(rdf.read_text().replace(old_sha, new_sha))
    report = run_model_test(package)
    assert report.status == "failed"
    failed = [d for d in report.details if d.status == "failed"]
    assert [d.name for d in failed] == [
        "Reproduce test outputs from test inputs (pytorch_state_dict)"
    ]
    (error,) = failed[0].errors
    assert error.msg.startswith("Output 'out': ")
    assert "elements disagree with expected values" in error.msg


def test_a_file_that_does_not_match_its_sha256_is_a_failed_report(
    tiny: Tiny, zoo_copy: Callable[[Path], Path]
) -> None:
    package = zoo_copy(tiny("onnx"))
    with (package / "identity.onnx").open("ab") as f:
        f.write(b"tampered")
    report = run_model_test(package)
    assert report.status == "failed"
    assert any("sha" in e.msg.lower() for e in report.errors), report.markdown


def test_a_device_the_runtime_lacks_is_an_invalid_argument(
    tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retrying will not make a CUDA device appear: INVALID_ARGUMENT, not UNAVAILABLE."""
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 0)
    with pytest.raises(InvalidArgumentError, match="this runtime has no CUDA device"):
        run_model_test(tiny("onnx"), device="cuda")


def test_a_format_the_model_lacks_is_an_error(tiny: Tiny) -> None:
    with pytest.raises(InvalidArgumentError, match="the model has no onnx weights"):
        run_model_test(tiny("torchscript"), weight_format="onnx")
