"""Whole, padded or tiled: the plan for each input size."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from bioimageio.core.common import PadWidth
from bioimageio.spec.model import v0_5

from modelrunner.errors import InvalidArgumentError, InvalidTensorError
from modelrunner.runtime_flight.size_fitting import implied_references, output_sizes, plan_fit
from tests.reference import descr
from tests.zoo import NUCLEI, needs_zoo

Tiny = Callable[[str], Path]
MiB = 1024**2


def bcyx(tensor: str, y: int, x: int, batch: int = 1, channels: int = 1) -> dict:
    return {tensor: {"batch": batch, "channel": channels, "y": y, "x": x}}


def plan(model: v0_5.ModelDescr, shape: dict, blocksize: int | None = None, limit: int = 256 * MiB):
    return plan_fit(
        model,
        shape,
        blocksize=blocksize,
        max_tile_input_bytes=limit,
        itemsize={t.id: 4 for t in model.inputs},
    )


@needs_zoo
def test_the_model_size_runs_whole() -> None:
    assert plan(descr(NUCLEI), bcyx("raw", 512, 512)).mode == "whole"


@needs_zoo
def test_a_smaller_image_is_padded_at_the_end() -> None:
    p = plan(descr(NUCLEI), bcyx("raw", 300, 400))
    assert p.mode == "padded"
    assert p.pad == {"raw": {"y": PadWidth(0, 212), "x": PadWidth(0, 112)}}
    assert p.output_sizes == {"probability": {"y": 300, "x": 400}}


@needs_zoo
def test_a_larger_image_is_tiled_with_the_fixed_size() -> None:
    p = plan(descr(NUCLEI), bcyx("raw", 1000, 700))
    assert p.mode == "tiled"
    assert p.pad == {}
    assert p.ns == {}
    assert p.block_shape == {"raw": {"batch": 1, "channel": 1, "y": 512, "x": 512}}


@needs_zoo
def test_an_image_larger_on_one_axis_is_padded_to_one_block_on_the_other() -> None:
    p = plan(descr(NUCLEI), bcyx("raw", 300, 1000))
    assert p.mode == "tiled"
    assert p.pad == {"raw": {"y": PadWidth(0, 212)}}
    assert p.output_sizes == {"probability": {"y": 300, "x": 1000}}


@needs_zoo
def test_a_batch_larger_than_a_fixed_batch_of_one_is_split() -> None:
    p = plan(descr(NUCLEI), bcyx("raw", 512, 512, batch=3))
    assert p.mode == "tiled"
    assert p.block_batch == 1


def test_parameterized_sizes_pad_to_the_next_valid_size(tiny: Tiny) -> None:
    model = descr(tiny("parameterized"))  # 20 + n*12
    assert plan(model, bcyx("raw", 32, 44)).mode == "whole"
    p = plan(model, bcyx("raw", 25, 7))
    assert p.pad == {"raw": {"y": PadWidth(0, 7), "x": PadWidth(0, 13)}}
    assert p.output_sizes == {"out": {"y": 25, "x": 7}}


def test_a_free_batch_is_kept(tiny: Tiny) -> None:
    model = descr(tiny("parameterized"))
    assert plan(model, bcyx("raw", 32, 32, batch=7)).mode == "whole"


def test_the_byte_limit_chooses_the_largest_block_under_it(tiny: Tiny) -> None:
    model = descr(tiny("onnx"))  # 1 + n*1
    p = plan(model, bcyx("input", 1000, 900), limit=1 * MiB)
    assert p.mode == "tiled"
    assert p.block_shape == {"input": {"batch": 1, "channel": 1, "y": 512, "x": 512}}
    assert p.ns == {("input", "y"): 511, ("input", "x"): 511}
    assert plan(model, bcyx("input", 1000, 900), limit=4 * MiB).mode == "whole"


def test_a_blocksize_is_capped_at_the_image(tiny: Tiny) -> None:
    model = descr(tiny("halo"))  # 32 + n*16
    p = plan(model, bcyx("raw", 100, 40), blocksize=10)
    assert p.mode == "tiled"
    assert p.ns == {("raw", "y"): 5, ("raw", "x"): 1}
    assert p.block_shape == {"raw": {"batch": 1, "channel": 1, "y": 112, "x": 48}}
    assert p.pad == {"raw": {"y": PadWidth(0, 12), "x": PadWidth(0, 8)}}


def test_fixed_outputs_that_mirror_a_fixed_input_follow_it(tiny: Tiny) -> None:
    model = descr(tiny("fixed_output"))
    assert implied_references(model) == {("out", "y"): ("raw", "y"), ("out", "x"): ("raw", "x")}
    assert output_sizes(model, bcyx("raw", 20, 30)) == {"out": {"y": 20, "x": 30}}
    assert plan(model, bcyx("raw", 64, 64)).mode == "tiled"


def test_the_careamics_export_is_read_as_following_its_input(n2v_package: Path) -> None:
    assert implied_references(descr(n2v_package)) == {
        ("prediction", "y"): ("input", "y"),
        ("prediction", "x"): ("input", "x"),
    }


@pytest.fixture
def unrelated_output(tiny: Tiny) -> v0_5.ModelDescr:
    """32x32 in, a 16x16 output unrelated to the input's size."""
    model = descr(tiny("fixed_output")).model_copy(deep=True)
    axes = model.outputs[0].axes
    axes[2] = v0_5.SpaceOutputAxis(id=v0_5.AxisId("y"), size=16)
    axes[3] = v0_5.SpaceOutputAxis(id=v0_5.AxisId("x"), size=16)
    return model


def test_an_image_too_large_for_a_model_that_cannot_be_tiled(
    unrelated_output: v0_5.ModelDescr,
) -> None:
    with pytest.raises(InvalidTensorError) as info:
        plan(unrelated_output, bcyx("raw", 64, 30))
    assert str(info.value) == (
        "input 'raw' axis 'y' has size 64, more than the model takes (32), and the model cannot "
        "be predicted tile by tile: output 'out' axis 'y' has the fixed size 16"
    )
    assert info.value.details == {
        "tensor": "raw",
        "axis": "y",
        "expected": "at most 32",
        "got": "64",
    }


def test_a_blocksize_for_a_model_that_cannot_be_tiled(unrelated_output: v0_5.ModelDescr) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        plan(unrelated_output, bcyx("raw", 32, 32), blocksize=1)
    assert str(info.value) == (
        "this model cannot be predicted tile by tile (blocksize 1): output 'out' axis 'y' has "
        "the fixed size 16"
    )


def test_a_smaller_image_for_a_model_that_cannot_be_tiled_is_padded(
    unrelated_output: v0_5.ModelDescr,
) -> None:
    p = plan(unrelated_output, bcyx("raw", 20, 30))
    assert p.mode == "padded"
    assert p.output_sizes == {}
