"""Arrays to samples: axis mapping and every way an input can be refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bioimageio.spec.model import v0_5

from modelrunner.errors import InvalidTensorError
from modelrunner.runtime_flight.input_mapping import build_sample
from tests.reference import descr

Tiny = Callable[[str], Path]


@pytest.fixture(scope="module")
def identity(tiny: Tiny) -> v0_5.ModelDescr:
    """BCYX, one channel, any y/x size."""
    return descr(tiny("onnx"))


@pytest.fixture(scope="module")
def two_inputs(tiny: Tiny) -> v0_5.ModelDescr:
    return descr(tiny("two_inputs"))


@pytest.fixture(scope="module")
def fixed(tiny: Tiny) -> v0_5.ModelDescr:
    """BCYX, one channel, fixed 32x32."""
    return descr(tiny("pytorch_state_dict"))


def shape_of(model: v0_5.ModelDescr, inputs: Any, dims: Any = None) -> dict[str, tuple[int, ...]]:
    sample = build_sample(model, inputs, dims)
    return {str(m): tuple(t.data.shape) for m, t in sample.members.items()}


def refused(model: v0_5.ModelDescr, inputs: Any, dims: Any = None, **kw: Any) -> InvalidTensorError:
    with pytest.raises(InvalidTensorError) as info:
        build_sample(model, inputs, dims, **kw)
    return info.value


# -- mapping ---------------------------------------------------------------------------------


def test_an_array_of_the_model_rank_is_taken_as_is(identity: v0_5.ModelDescr) -> None:
    array = np.zeros((2, 1, 20, 30), "float32")
    sample = build_sample(identity, array)
    tensor = sample.members[v0_5.TensorId("input")]
    assert tensor.dims == ("batch", "channel", "y", "x")
    assert np.shares_memory(tensor.data.values, array)


def test_a_yx_image_gets_batch_and_channel_singletons(identity: v0_5.ModelDescr) -> None:
    assert shape_of(identity, np.zeros((20, 30))) == {"input": (1, 1, 20, 30)}


def test_a_cyx_image_gets_a_batch_singleton(tiny: Tiny, tmp_path: Path) -> None:
    from tests.tiny_models import build_onnx_identity

    rgb = descr(build_onnx_identity(tmp_path / "rgb", channels=3))
    assert shape_of(rgb, np.zeros((3, 20, 30))) == {"input": (1, 3, 20, 30)}


def test_extra_leading_singletons_are_dropped(identity: v0_5.ModelDescr) -> None:
    assert shape_of(identity, np.zeros((1, 1, 1, 20, 30))) == {"input": (1, 1, 20, 30)}


def test_dim_names_are_transposed_to_the_model_axes(identity: v0_5.ModelDescr) -> None:
    array = np.arange(20 * 30, dtype="float32").reshape(30, 20)
    sample = build_sample(identity, {"input": array}, {"input": ("x", "y")})
    data = sample.members[v0_5.TensorId("input")].data
    assert data.shape == (1, 1, 20, 30)
    np.testing.assert_array_equal(data.values[0, 0], array.T)
    assert np.shares_memory(data.values, array)


def test_dim_names_may_use_short_aliases(identity: v0_5.ModelDescr) -> None:
    array = np.zeros((20, 30, 1, 2))
    assert shape_of(identity, array, {"input": ("y", "x", "c", "b")}) == {"input": (2, 1, 20, 30)}


def test_empty_dim_names_count_as_none(identity: v0_5.ModelDescr) -> None:
    assert shape_of(identity, np.zeros((20, 30)), {"input": ("", "")}) == {"input": (1, 1, 20, 30)}


def test_channel_last_models_get_their_axis_order(tiny: Tiny) -> None:
    keras = descr(tiny("keras_v3"))  # BYXC
    array = np.zeros((1, 1, 16, 24))
    assert shape_of(keras, array, {"input": ("batch", "channel", "y", "x")}) == {
        "input": (1, 16, 24, 1)
    }
    assert shape_of(keras, np.zeros((16, 24))) == {"input": (1, 16, 24, 1)}


def test_two_inputs_by_name(two_inputs: v0_5.ModelDescr) -> None:
    a, b = np.zeros((24, 24)), np.ones((1, 1, 24, 24))
    assert shape_of(two_inputs, {"a": a, "b": b}) == {"a": (1, 1, 24, 24), "b": (1, 1, 24, 24)}


def test_any_numeric_dtype_is_accepted_as_sent(identity: v0_5.ModelDescr) -> None:
    for dtype in ("uint8", "uint16", "int32", "int64", "float64", "bool"):
        sample = build_sample(identity, np.zeros((8, 8), dtype))
        assert str(sample.members[v0_5.TensorId("input")].data.dtype) == dtype


def test_float16_is_widened_to_the_declared_dtype(identity: v0_5.ModelDescr) -> None:
    # bioimageio.core's statistics overflow in float16; the model declares float32
    sample = build_sample(identity, np.full((8, 8), 300, "float16"))
    data = sample.members[v0_5.TensorId("input")].data
    assert str(data.dtype) == "float32"
    assert float(data.max()) == 300.0


def test_nan_values_pass_when_allowed(identity: v0_5.ModelDescr) -> None:
    array = np.full((8, 8), np.nan, "float32")
    build_sample(identity, array, nan_policy="allow")


# -- refusals --------------------------------------------------------------------------------


def test_one_array_for_a_two_input_model(two_inputs: v0_5.ModelDescr) -> None:
    error = refused(two_inputs, np.zeros((24, 24)))
    assert str(error) == "the model has inputs a, b: name each array"
    assert error.details == {
        "tensor": "",
        "axis": "",
        "expected": "['a', 'b']",
        "got": "one unnamed array",
    }


def test_missing_input(two_inputs: v0_5.ModelDescr) -> None:
    error = refused(two_inputs, {"a": np.zeros((24, 24))})
    assert str(error) == "missing input 'b'; the model needs a, b"
    assert error.details == {"tensor": "b", "axis": "", "expected": "an array", "got": "nothing"}


def test_unknown_input_name(identity: v0_5.ModelDescr) -> None:
    error = refused(identity, {"input": np.zeros((8, 8)), "mask": np.zeros((8, 8))})
    assert str(error) == "unknown input 'mask'; the model's inputs are input"
    assert error.details["tensor"] == "mask"
    assert error.details["expected"] == "['input']"


def test_dim_names_for_an_unknown_input(identity: v0_5.ModelDescr) -> None:
    error = refused(identity, np.zeros((8, 8)), {"raw": ("y", "x")})
    assert str(error) == ("dim names given for unknown input 'raw'; the model's inputs are input")


def test_a_rank_that_cannot_be_mapped(identity: v0_5.ModelDescr) -> None:
    error = refused(identity, np.zeros((2, 3, 4, 5, 6)))
    assert str(error) == (
        "input 'input' has shape (2, 3, 4, 5, 6), which cannot be mapped to the model's axes "
        "(batch, channel, y, x): pass dim names, or an array with 4 axes (or fewer, leaving "
        "out singleton axes)"
    )
    assert error.details == {
        "tensor": "input",
        "axis": "",
        "expected": "4 axes (batch, channel, y, x)",
        "got": "5 axes (2, 3, 4, 5, 6)",
    }


def test_a_vector_cannot_be_an_image(fixed: v0_5.ModelDescr) -> None:
    error = refused(fixed, np.zeros(32))
    assert error.details["got"] == "1 axes (32,)"  # as sent, not with the singletons added
    assert str(error).startswith("input 'raw' has shape (32,), which cannot be mapped")


def test_wrong_channel_count(identity: v0_5.ModelDescr) -> None:
    error = refused(identity, np.zeros((1, 3, 8, 8)))
    assert str(error) == (
        "input 'input' has 3 channel(s) on axis 'channel', the model expects 1 (c0)"
    )
    assert error.details == {"tensor": "input", "axis": "channel", "expected": "1", "got": "3"}


def test_a_channel_axis_that_is_not_a_singleton_cannot_be_left_out(tmp_path: Path) -> None:
    from tests.tiny_models import build_onnx_identity

    rgb = descr(build_onnx_identity(tmp_path / "rgb", channels=3))
    error = refused(rgb, np.zeros((20, 30)), {"input": ("y", "x")})
    assert str(error) == (
        "input 'input' lacks axis 'channel' (dim names ('y', 'x')), which cannot be a "
        "singleton; the model's axes are (batch, channel, y, x)"
    )
    assert error.details["axis"] == "channel"


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_complex_values(identity: v0_5.ModelDescr, dtype: str) -> None:
    error = refused(identity, np.zeros((8, 8), dtype))
    assert str(error) == (
        f"input 'input' has dtype {dtype}, which the model cannot take: it expects float32 "
        "(any bool, int, uint or float array is converted)"
    )
    assert error.details == {"tensor": "input", "axis": "", "expected": "float32", "got": dtype}


@pytest.mark.parametrize(
    ("array", "name"),
    [
        (np.array([["a", "b"], ["c", "d"]]), "str32"),
        (np.array([[object(), None]], dtype=object), "object"),
        (np.zeros((2, 2), "datetime64[s]"), "datetime64[s]"),
    ],
)
def test_non_numeric_values(identity: v0_5.ModelDescr, array: np.ndarray, name: str) -> None:
    error = refused(identity, array)
    assert error.details["got"] == name
    assert "which the model cannot take" in str(error)


def test_an_empty_axis_is_named_as_zero_size(identity: v0_5.ModelDescr) -> None:
    error = refused(identity, np.zeros((1, 1, 0, 8), "float32"))
    assert str(error) == (
        "input 'input' has zero size on axis 'y' (shape (1, 1, 0, 8)): there is nothing to predict"
    )
    assert error.details == {"tensor": "input", "axis": "y", "expected": "at least 1", "got": "0"}


def test_nan_values_are_rejected_by_default(identity: v0_5.ModelDescr) -> None:
    array = np.zeros((8, 8), "float32")
    array[1, 2] = array[3, 4] = np.nan
    error = refused(identity, array)
    assert str(error) == (
        "input 'input' contains 2 NaN value(s); send nan_policy=allow to pass them to the model"
    )
    assert error.details == {
        "tensor": "input",
        "axis": "",
        "expected": "no NaN or infinite values",
        "got": "2 NaN values",
    }


def test_dim_names_of_the_wrong_count(identity: v0_5.ModelDescr) -> None:
    error = refused(identity, np.zeros((8, 8)), {"input": ("batch", "y", "x")})
    assert str(error) == "input 'input' has 2 axes but 3 dim names ('batch', 'y', 'x')"


def test_dim_names_the_model_does_not_have(identity: v0_5.ModelDescr) -> None:
    error = refused(identity, np.zeros((4, 8, 8)), {"input": ("z", "y", "x")})
    assert str(error) == (
        "input 'input' has an axis 'z' that the model does not have; its axes are "
        "(batch, channel, y, x)"
    )
    assert error.details == {
        "tensor": "input",
        "axis": "z",
        "expected": "one of (batch, channel, y, x)",
        "got": "z",
    }


def test_dim_names_naming_an_axis_twice(identity: v0_5.ModelDescr) -> None:
    error = refused(identity, np.zeros((8, 8)), {"input": ("y", "y")})
    assert str(error) == "input 'input' names axis 'y' twice in ('y', 'y')"


def test_a_missing_spatial_axis_is_refused(fixed: v0_5.ModelDescr) -> None:
    error = refused(fixed, np.zeros(32), {"raw": ("y",)})
    assert error.details["axis"] == "x"
    assert error.details["got"] == "missing"
