"""How the client reads what ``predict`` is given."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from modelrunner.client._inputs import normalise_inputs
from modelrunner.errors import InvalidTensorError


def test_one_array_travels_unnamed_for_the_runtime_to_map() -> None:
    arrays, dims = normalise_inputs(np.zeros((4, 4)), None)
    assert list(arrays) == [""] and dims == {}


def test_dict_and_labelled_arrays() -> None:
    labelled = xr.DataArray(np.zeros((3, 5), "uint8"), dims=("y", "x"))
    arrays, dims = normalise_inputs({"a": [[1, 2]], "b": labelled}, None)
    assert arrays["a"].shape == (1, 2) and dims == {"b": ("y", "x")}


def test_non_numeric_input_is_refused() -> None:
    with pytest.raises(InvalidTensorError, match="input 'a' has data type <U1"):
        normalise_inputs({"a": np.array(["x"])}, None)
