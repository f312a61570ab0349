"""``first_misfit`` decides from an array's extremes where it can: the same answer as the full
masks for every pair of numeric types, with NaN, infinities, values at and just past each
type's limits, wherever in the array they are."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from modelrunner.errors import InvalidTensorError
from modelrunner.value_ranges import check_fits, first_misfit

TYPES = [np.dtype(t) for t in ("uint8", "int8", "uint16", "int32", "uint64", "int64")] + [
    np.dtype(t) for t in ("float16", "float32", "float64")
]


def _by_masks(values: np.ndarray, target: np.dtype) -> tuple[int, object] | None:
    """The answer by masks alone (what ``first_misfit`` computed before it looked at the
    extremes first)."""
    source = values.dtype
    if source == target or np.can_cast(source, target, "safe"):
        return None
    if source.kind in "iu" and target.kind == "f":
        return None
    with np.errstate(invalid="ignore", over="ignore"):
        if target.kind in "iu":
            info = np.iinfo(target)
            bad = (values < info.min) | (values > info.max)
            if source.kind == "f":
                bad |= ~np.isfinite(values)
        else:
            bad = np.isfinite(values) & (np.abs(values) > np.finfo(target).max)
    if not bad.any():
        return None
    index = int(np.argmax(bad.reshape(-1)))
    return index, values.reshape(-1)[index].item()


def _samples(source: np.dtype) -> list[np.ndarray]:
    """Arrays of ``source`` holding, one at a time, each interesting value amid ordinary ones."""
    special: list[object] = [0, 1, -1, 127, 128, 255, 256, 32767, 65535, 65536, 2**31, 2**53]
    for t in TYPES:
        if t.kind in "iu":
            info = np.iinfo(t)
            special += [int(info.min), int(info.max), int(info.max) + 1, int(info.min) - 1]
        else:
            limit = float(np.finfo(t).max)
            special += [limit, -limit, limit * 1.01, -limit * 1.01]
    if source.kind == "f":
        special += [float("nan"), float("inf"), float("-inf"), 0.5, 255.5, -0.5, 1e300]
    arrays = []
    for value in special:
        with np.errstate(over="ignore", invalid="ignore"):
            try:
                cast = np.array([value], dtype=object).astype(source)
            except (OverflowError, ValueError):
                continue
        for where in (0, 3, 7):
            a = np.full((2, 4), 7, dtype=source)
            a.reshape(-1)[where] = cast[0]
            arrays.append(a)
    return arrays


@pytest.mark.parametrize(("source", "target"), list(itertools.permutations(TYPES, 2)), ids=str)
def test_extremes_first_give_the_masks_answer(source: np.dtype, target: np.dtype) -> None:
    for values in _samples(source):
        got, want = first_misfit(values, target), _by_masks(values, target)
        assert (got is None) == (want is None), (values, target, got, want)
        if got is not None and want is not None:
            assert got[0] == want[0], (values, target, got, want)
            assert got[1] == want[1] or (got[1] != got[1] and want[1] != want[1])


def test_the_refusal_names_the_first_value_that_does_not_fit() -> None:
    values = np.array([[1.0, np.nan, 2.0], [-1e300, 3.0, 1e300]])
    with pytest.raises(InvalidTensorError) as caught:
        check_fits("raw", values, np.dtype("float32"), "the model's float32")
    assert caught.value.message == (
        "input 'raw': value -1e+300 (element 3) does not fit the model's float32 "
        "(finite values within ±3.40282e+38)"
    )
    assert caught.value.details == {
        "tensor": "raw",
        "index": "3",
        "got": "-1e+300",
        "expected": "finite values within ±3.40282e+38",
    }
