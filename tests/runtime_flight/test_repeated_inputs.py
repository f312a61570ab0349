"""Inputs of a signature a warm pipeline saw lately are mapped as they were then: only their
values are checked again, and anything that changes the signature is worked out anew."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from modelrunner.errors import InvalidTensorError
from tests.reference import Pipelines
from tests.runtime_flight.predicting import predict, warm_pipeline

Tiny = Callable[[str], Path]


def test_a_frame_of_a_known_signature_is_still_checked_for_nan(
    tiny: Tiny, pipelines: Pipelines
) -> None:
    """Attack: a clean frame, then one of the same shape with NaN values."""
    warm = warm_pipeline(pipelines.get(tiny("onnx"), "onnx"), "onnx")
    frame = np.ones((1, 1, 16, 16), np.float32)
    assert predict(warm, frame)["output"].shape == (1, 1, 16, 16)
    assert len(warm.prepared._kept) == 1
    bad = frame.copy()
    bad[0, 0, 3, 3] = np.nan
    with pytest.raises(InvalidTensorError, match="contains 1 NaN value"):
        predict(warm, bad)
    np.testing.assert_array_equal(predict(warm, bad, nan_policy="allow")["output"], bad)


def test_dim_names_and_shapes_make_signatures_of_their_own(
    tiny: Tiny, pipelines: Pipelines
) -> None:
    warm = warm_pipeline(pipelines.get(tiny("onnx"), "onnx"), "onnx")
    image = np.arange(16 * 24, dtype=np.float32).reshape(16, 24)
    as_yx = predict(warm, {"input": image}, {"input": ("y", "x")})["output"]
    as_xy = predict(warm, {"input": image}, {"input": ("x", "y")})["output"]
    np.testing.assert_array_equal(as_yx[0, 0], image)
    np.testing.assert_array_equal(as_xy[0, 0], image.T)
    again = predict(warm, {"input": image + 1}, {"input": ("x", "y")})["output"]
    np.testing.assert_array_equal(again[0, 0], image.T + 1)
    assert predict(warm, image[:8])["output"].shape == (1, 1, 8, 24)
    assert len(warm.prepared._kept) == 3


def test_arrays_that_are_not_numpy_arrays_are_checked_every_time(
    tiny: Tiny, pipelines: Pipelines
) -> None:
    warm = warm_pipeline(pipelines.get(tiny("onnx"), "onnx"), "onnx")
    nested = np.ones((8, 8), np.float32).tolist()
    assert predict(warm, nested)["output"].shape == (1, 1, 8, 8)
    assert len(warm.prepared._kept) == 0
