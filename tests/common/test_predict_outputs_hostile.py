"""Outputs of ``modelrunner predict`` under attack or failure: a server's output id that would
name a path out of the folder, and a write that fails half-way."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from modelrunner import errors
from modelrunner.app.predict_files import _targets
from modelrunner.images.outputs import atomic_path


@pytest.mark.parametrize("oid", ["../escape", "x/../../y", "/abs", ".hidden", "a\\b", "", "a b"])
def test_an_output_id_from_a_hostile_server_cannot_leave_the_folder(
    oid: str, tmp_path: Path
) -> None:
    image = SimpleNamespace(path=tmp_path / "in.tif", kind="tiff")
    with pytest.raises(errors.InvalidArgumentError) as raised:
        _targets(image, [oid], tmp_path / "out", None)  # type: ignore[arg-type]
    assert "cannot name a file" in raised.value.message


def test_an_ordinary_output_id_names_its_file(tmp_path: Path) -> None:
    image = SimpleNamespace(path=tmp_path / "cells.tif", kind="tiff")
    targets = _targets(image, ["probability"], tmp_path / "out", None)  # type: ignore[arg-type]
    assert targets["probability"][0] == tmp_path / "out" / "cells_probability.ome.tif"


def test_a_folder_in_the_way_of_an_output_file_is_an_error_and_is_left_alone(
    tmp_path: Path,
) -> None:
    """Attacks: an output named like an existing folder of the user's; the folder stays."""
    in_the_way = tmp_path / "result.npy"
    in_the_way.mkdir()
    (in_the_way / "keep.txt").write_text("mine")
    with pytest.raises(errors.FailedPreconditionError) as raised, atomic_path(in_the_way) as t:
        t.write_bytes(b"data")
    assert raised.value.message.startswith(f"cannot write {in_the_way}: ")
    assert (in_the_way / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["result.npy"]  # no temporary left


def test_a_write_that_fails_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.tif"
    with pytest.raises(errors.FailedPreconditionError), atomic_path(target) as t:
        t.write_bytes(b"half")
        raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []
