"""The example models the project trains itself (``modelrunner example-model``): real
bioimage.io packages that pass bioimageio.core's model test, segment the synthetic nuclei they
were trained on, stay small, come out the same for the same seed, and are written whole or not
at all."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from modelrunner import errors
from modelrunner.app import cli
from modelrunner.client import ModelRunnerClient
from modelrunner.example_kinds import KINDS
from modelrunner.example_models import write_example_model
from modelrunner.example_training import train
from modelrunner.synthetic_nuclei import draw_nuclei

Examples = Callable[[str], Path]


@pytest.mark.parametrize("kind", list(KINDS))
def test_bioimageio_cores_model_test_passes(example_model: Examples, kind: str) -> None:
    from bioimageio.core import test_model

    summary = test_model(example_model(kind) / "rdf.yaml")
    failed = [d.name for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    tested = {d.name for d in summary.details}
    for weights in ("pytorch_state_dict", "torchscript"):
        assert f"Reproduce test outputs from test inputs ({weights})" in tested


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_network_finds_the_nuclei_of_its_test_image(example_model: Examples, kind: str) -> None:
    """The test input is drawn with the seed after the training seed (0): drawn again, its true
    nuclei are known."""
    package = example_model(kind)
    truth = draw_nuclei(KINDS[kind].test_shape, np.random.default_rng(1)).labels > 0
    found = np.load(package / "test_output.npy")[0, 0] > 0.5
    iou = np.logical_and(found, truth).sum() / np.logical_or(found, truth).sum()
    assert iou > 0.85
    assert "intersection over union of" in (package / "README.md").read_text()


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_package_is_small_and_complete(example_model: Examples, kind: str) -> None:
    package = example_model(kind)
    files = {p.name for p in package.iterdir()}
    assert files == {
        "rdf.yaml",
        "README.md",
        "cover.png",
        "example_networks.py",
        "weights.pt",
        "weights_torchscript.pt",
        "test_input.npy",
        "test_output.npy",
        "sample_input.tif",
        "sample_output.tif",
    }
    assert sum(p.stat().st_size for p in package.iterdir()) < 5 * 2**20


def test_the_same_seed_trains_the_same_weights() -> None:
    import torch

    plan = dataclasses.replace(KINDS["nuclei"].plan, steps=3, patches=8)
    state = torch.random.get_rng_state()
    first, second = train(plan, seed=7), train(plan, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state kept
    for name, value in first.network.state_dict().items():
        assert torch.equal(value, second.network.state_dict()[name]), name
    other = train(plan, seed=8).network.state_dict()
    assert not all(torch.equal(v, other[k]) for k, v in first.network.state_dict().items())


def test_the_3d_model_takes_a_stack_of_any_depth(
    client: ModelRunnerClient, example_model: Examples
) -> None:
    info = client.add_model(example_model("nuclei3d"))
    volume = draw_nuclei((7, 80, 96), np.random.default_rng(3)).image
    probability = client.predict(info.id, volume)["probability"]
    assert probability.shape == (1, 1, 7, 80, 96)
    assert probability.min() >= 0 and probability.max() <= 1


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 2-D kind in three steps: the command's path, not the training, is tested here."""
    plan = dataclasses.replace(KINDS["nuclei"].plan, steps=3, patches=8)
    monkeypatch.setitem(KINDS, "nuclei", dataclasses.replace(KINDS["nuclei"], plan=plan))


def test_the_command_writes_a_package_once(
    quick: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "models" / "nuclei"
    assert cli.main(["example-model", "nuclei", str(folder), "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"wrote {folder}/ (nuclei: trained 3 steps in ")
    assert out[1] == f"next: modelrunner add {folder}   (or modelrunner predict {folder} IMAGE)"
    assert (folder / "rdf.yaml").is_file()
    assert [p.name for p in folder.parent.iterdir()] == ["nuclei"]  # no staging folder left
    # again (the README run twice): nothing to redo
    assert cli.main(["example-model", "nuclei", str(folder)]) == 0
    assert capsys.readouterr().out == (
        f"{folder}/ holds the nuclei example model already (remove it to train it again)\n"
    )


def test_a_folder_holding_something_else_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert cli.main(["example-model", "nuclei3d", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        f"error (INVALID_ARGUMENT): {tmp_path} exists and is not an empty folder: name a new one\n"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidArgumentError) as raised:
        write_example_model("cells", tmp_path / "m")
    assert raised.value.message == "no example model 'cells': choose one of nuclei, nuclei3d"


def test_a_failure_leaves_no_folder(
    quick: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelrunner.example_models as example_models

    def broken(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(example_models, "_write_readme_and_cover", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_example_model("nuclei", tmp_path / "m")
    assert list(tmp_path.iterdir()) == []
