"""Whether values fit a data type, before anything converts them: numpy's casts wrap integers
(300 as uint8 is 44) and overflow floats to infinity (1e300 as float32), silently.

:func:`check_fits` refuses such values with an InvalidTensorError naming the input, the first
value that does not fit and its index (C order), and the range it had to fit. It costs nothing
when every value of the source type fits the target (a safe cast, or integers into floats);
otherwise the array's minimum and maximum (two reductions, no temporary array) settle it for
every array whose values fit, and only an array with a value that may not fit (or a NaN) pays for
the masks that find the first one. A float64 frame to a float32 model costs 0.10 ms at 512x512
and 2.4 ms at 2048x2048 (the masks alone: 0.35 and 11 ms; the cast itself: 0.10 and 1.8 ms;
``python -m benchmarks.value_ranges``).
"""

from __future__ import annotations

import numpy as np

from modelrunner.errors import InvalidTensorError


def first_misfit(values: np.ndarray, target: np.dtype) -> tuple[int, object] | None:
    """The flat index and value of the first element that does not fit ``target`` (integers:
    its range; floats: its largest finite magnitude, infinities and NaN passing as they are);
    None when all fit."""
    source = values.dtype
    if source == target or values.size == 0 or target.kind == "b" or source.kind == "b":
        return None
    if np.can_cast(source, target, "safe") or (source.kind in "iu" and target.kind == "f"):
        return None
    if source.kind in "iuf" and target.kind in "iuf" and _extremes_fit(values, target):
        return None
    if target.kind in "iu":
        info = np.iinfo(target)
        if source.kind == "f":
            with np.errstate(invalid="ignore", over="ignore"):
                bad = ~np.isfinite(values) | (values < info.min) | (values > info.max)
        else:
            bad = (values < info.min) | (values > info.max)
    elif target.kind == "f":
        limit = np.finfo(target).max
        with np.errstate(invalid="ignore"):
            bad = np.isfinite(values) & (np.abs(values) > limit)
    else:
        return None
    if not bad.any():
        return None
    index = int(np.argmax(bad.reshape(-1)))
    return index, values.reshape(-1)[index].item()


def _extremes_fit(values: np.ndarray, target: np.dtype) -> bool:
    """Whether the smallest and the largest value fit ``target``: then every value does. False
    also when a NaN hides them (a float minimum or maximum with a NaN is NaN) or an infinity
    is among them: the masks decide then (infinities and NaN pass into a float type)."""
    low, high = values.min().item(), values.max().item()  # exact Python numbers
    if target.kind in "iu":
        info = np.iinfo(target)
        return info.min <= low and high <= info.max
    limit = float(np.finfo(target).max)
    return -limit <= low and high <= limit


def value_range(target: np.dtype) -> str:
    if target.kind in "iu":
        info = np.iinfo(target)
        return f"{info.min}..{info.max}"
    limit = np.finfo(target).max
    return f"finite values within ±{limit:.6g}"


def check_fits(tensor: str, values: np.ndarray, target: np.dtype, what: str) -> None:
    """InvalidTensorError when a value of input ``tensor`` does not fit ``target``; ``what``
    names the type for people ("UINT8", "the model's float32")."""
    misfit = first_misfit(values, target)
    if misfit is None:
        return
    index, value = misfit
    expected = value_range(target)
    raise InvalidTensorError(
        f"input {tensor!r}: value {value!r} (element {index}) does not fit {what} ({expected})",
        details={"tensor": tensor, "index": index, "got": value, "expected": expected},
    )
