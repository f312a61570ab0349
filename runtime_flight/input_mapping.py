"""Turn the arrays a client sent into a bioimageio.core ``Sample`` in the model's axis order,
or refuse them with an :class:`~modelrunner.errors.InvalidTensorError` that names the tensor,
the axis, what the model expects and what came.

Mapping rules, in this order:

* A single array is the input of a single-input model.
* Dim names (from the wire) are model axis ids (``b``/``c``/``t``/``i`` are accepted for batch,
  channel, time and index); model axes that are missing from them are added as singletons when
  size 1 is valid for them; then the array is transposed to the model's axis order.
* Without dim names, an array of the model's rank is taken in the model's axis order. A lower
  rank gets singleton axes inserted where size 1 is valid, in axis order, as bioimageio.core's
  ``Tensor.from_numpy`` does (so a YX image becomes BCYX ``(1, 1, Y, X)``); a higher rank loses
  its first size-1 axes, from the left, until the ranks match. A refusal names the shape as it
  was sent.

Arrays are only viewed (expanded, transposed), never copied, with one exception: float16
arrays are converted to the model's declared input dtype (float32 unless the model declares
another float type): bioimageio.core computes sample statistics in the input's own dtype, which
overflows in float16 (a std of ``inf``, an all-NaN output). Any other integer, unsigned, float or
boolean dtype is accepted as it is: the model's preprocessing (``ensure_dtype``) converts it, as
in bioimageio.core; values that conversion would wrap (integers) or overflow to infinity
(floats) are refused, naming the first one (:mod:`modelrunner.value_ranges`).

Float inputs with NaN or infinite values are refused unless ``nan_policy`` is ``allow``: one
non-finite pixel makes a normalising model's whole output NaN.

Then the sample as a whole (:func:`.tied_sizes.check_tied_sizes`): sizes the description ties
across tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from bioimageio.core import Sample, Tensor
from bioimageio.core.common import MemberId
from bioimageio.spec.model import v0_5

from modelrunner.errors import InvalidTensorError, clip
from modelrunner.predict_request import NanPolicy
from modelrunner.value_ranges import check_fits

from .finite_values import check_finite, tensor_error

SampleInputs = Mapping[str, Any] | np.ndarray
"""Arrays by input id, or one array for a single-input model."""
DimNamesLike = Mapping[str, Sequence[str]]

_ALIASES = {"b": "batch", "c": "channel", "t": "time", "i": "index"}
_ACCEPTED_KINDS = frozenset("biuf")


def build_sample(
    descr: v0_5.ModelDescr,
    inputs: SampleInputs,
    dim_names: DimNamesLike | None = None,
    *,
    nan_policy: NanPolicy = "reject",
) -> Sample:
    """A sample of the model's inputs, validated and in the model's axis order."""
    return as_sample(descr, map_inputs(descr, inputs, dim_names, nan_policy=nan_policy))


def as_sample(descr: v0_5.ModelDescr, arrays: Mapping[MemberId, np.ndarray]) -> Sample:
    """Wrap arrays from :func:`map_inputs` (no copy)."""
    axes = {t.id: [a.id for a in t.axes] for t in descr.inputs}
    return Sample(members={m: Tensor(a, dims=axes[m]) for m, a in arrays.items()}, stat={}, id=None)


def input_shapes(
    descr: v0_5.ModelDescr, arrays: Mapping[MemberId, np.ndarray]
) -> dict[MemberId, dict[v0_5.AxisId, int]]:
    """Axis sizes by input id and axis id, as bioimageio.core's ``Sample.shape`` gives them."""
    return {
        t.id: {a.id: size for a, size in zip(t.axes, arrays[t.id].shape, strict=True)}
        for t in descr.inputs
        if t.id in arrays
    }


@dataclass(frozen=True)
class AxisRecipe:
    """How one input's array became the model's: its values checked against the model's dtype,
    reshaped (singleton axes added or dropped), transposed, widened; the same for every array of
    its shape, dtype and dim names."""

    member: MemberId
    reshape: tuple[int, ...] | None
    transpose: tuple[int, ...] | None
    dtype: np.dtype | None
    check_finite: bool
    fits: np.dtype | None = None
    """The model's dtype, which the values must fit (None: the array has it already)."""

    def apply(self, tensor: str, array: np.ndarray) -> np.ndarray:
        if self.fits is not None:
            check_fits(tensor, array, self.fits, f"the model's {self.fits.name}")
        if self.reshape is not None:
            array = array.reshape(self.reshape)
        if self.transpose is not None:
            array = array.transpose(self.transpose)
        if self.dtype is not None:
            array = array.astype(self.dtype)
        if self.check_finite:
            check_finite(tensor, array)
        return array


def map_inputs(
    descr: v0_5.ModelDescr,
    inputs: SampleInputs,
    dim_names: DimNamesLike | None = None,
    *,
    nan_policy: NanPolicy = "reject",
    recipes: dict[str, AxisRecipe] | None = None,
) -> dict[MemberId, np.ndarray]:
    """The model's input arrays, validated and in the model's axis order (views, no copies).
    ``recipes``: filled with how each input was mapped, to map arrays of the same shapes,
    dtypes and dim names again without checking them (:meth:`AxisRecipe.apply`)."""
    arrays = _arrays_by_id(descr, inputs)
    # dim names that are all empty (a wire format without names) count as not given
    names = {str(k): tuple(v) for k, v in (dim_names or {}).items() if any(v)}
    known = {str(t.id) for t in descr.inputs}
    for tensor in names:
        if tensor not in known:
            raise tensor_error(
                tensor,
                "",
                sorted(known),
                tensor,
                f"dim names given for unknown input '{clip(tensor)}'; the model's inputs are "
                + ", ".join(sorted(known)),
            )
    members: dict[MemberId, np.ndarray] = {}
    for t in descr.inputs:
        tensor = str(t.id)
        if tensor not in arrays:
            continue
        sent = _check_dtype(tensor, arrays[tensor], t)
        fits = _values_must_fit(tensor, sent, t)
        array, reshape, transpose = _map_axes(tensor, sent, t, names.get(tensor))
        _check_sizes(tensor, array, t)
        widened = _widen_float16(array, t)
        finite = nan_policy == "reject" and widened.dtype.kind == "f"
        if finite:
            check_finite(tensor, widened)
        members[t.id] = widened
        if recipes is not None:
            widened_to = widened.dtype if widened is not array else None
            recipes[tensor] = AxisRecipe(t.id, reshape, transpose, widened_to, finite, fits)
    return members


def _arrays_by_id(descr: v0_5.ModelDescr, inputs: SampleInputs) -> dict[str, Any]:
    ids = [str(t.id) for t in descr.inputs]
    if not isinstance(inputs, Mapping):
        if len(ids) != 1:
            raise tensor_error(
                "",
                "",
                ids,
                "one unnamed array",
                "the model has inputs " + ", ".join(ids) + ": name each array",
            )
        inputs = {ids[0]: inputs}
    arrays = {str(k): v for k, v in inputs.items()}
    for name in arrays:
        if name not in ids:
            raise tensor_error(
                name,
                "",
                ids,
                name,
                f"unknown input '{clip(name)}'; the model's inputs are " + ", ".join(ids),
            )
    for t in descr.inputs:
        if str(t.id) not in arrays and not t.optional:
            raise tensor_error(
                str(t.id),
                "",
                "an array",
                "nothing",
                f"missing input '{t.id}'; the model needs " + ", ".join(_required(descr)),
            )
    return arrays


def _required(descr: v0_5.ModelDescr) -> list[str]:
    return [str(t.id) for t in descr.inputs if not t.optional]


def _dtype_name(t: v0_5.InputTensorDescr) -> str:
    data = t.data if not isinstance(t.data, Sequence) else t.data[0]
    return str(data.type)


def _check_dtype(tensor: str, value: Any, t: v0_5.InputTensorDescr) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except Exception as e:  # anything not array-like is a client error
            raise tensor_error(
                tensor,
                "",
                _dtype_name(t),
                type(value).__name__,
                f"input '{tensor}' is not an array: {e}",
            ) from e
    if value.dtype.kind not in _ACCEPTED_KINDS:
        raise tensor_error(
            tensor,
            "",
            _dtype_name(t),
            value.dtype.name,
            f"input '{tensor}' has dtype {value.dtype.name}, which the model cannot take: it "
            + f"expects {_dtype_name(t)} (any bool, int, uint or float array is converted)",
        )
    return value


def _values_must_fit(tensor: str, array: np.ndarray, t: v0_5.InputTensorDescr) -> np.dtype | None:
    """The model's processing converts the input to its declared dtype, silently wrapping
    integers and overflowing floats to infinity: such values are refused instead, naming the
    first one. Returns the dtype the values were checked against (None: the dtypes match)."""
    target = _numpy_dtype(_dtype_name(t))
    if array.dtype == target:  # (a comparison of dtypes: 0.1 µs; their names cost 2 µs)
        return None
    check_fits(tensor, array, target, f"the model's {target.name}")
    return target


@cache
def _numpy_dtype(name: str) -> np.dtype:
    return np.dtype(name)


def _axis_ids(t: v0_5.InputTensorDescr) -> list[str]:
    return [str(a.id) for a in t.axes]


def _axes_text(t: v0_5.InputTensorDescr) -> str:
    return "(" + ", ".join(_axis_ids(t)) + ")"


def _singleton_ok(a: v0_5.InputAxis) -> bool:
    """Size 1 is valid for this axis as it is, so a missing axis may become a singleton."""
    if isinstance(a, v0_5.BatchAxis):
        return True
    if isinstance(a, v0_5.ChannelAxis):
        return len(a.channel_names) == 1
    size = a.size
    if isinstance(size, int):
        return size == 1
    if isinstance(size, v0_5.ParameterizedSize):
        return size.min == 1
    return False


def _map_axes(
    tensor: str, array: np.ndarray, t: v0_5.InputTensorDescr, names: tuple[str, ...] | None
) -> tuple[np.ndarray, tuple[int, ...] | None, tuple[int, ...] | None]:
    """The array in the model's axis order, and how: the shape it was reshaped to and the
    axes' permutation (None: not needed)."""
    if names is not None:
        return _map_named(tensor, array, t, names)
    # the error names the shape the client sent, not one with singleton axes added or dropped
    sent = tuple(array.shape)
    rank = len(t.axes)
    if array.ndim > rank:
        while array.ndim > rank and 1 in array.shape:
            array = array.reshape(_drop_first_singleton(array.shape))
    elif array.ndim < rank:
        for i, a in enumerate(t.axes):
            if array.ndim >= rank:
                break
            if _singleton_ok(a):
                array = np.expand_dims(array, i)
    if array.ndim != rank:
        raise tensor_error(
            tensor,
            "",
            f"{rank} axes {_axes_text(t)}",
            f"{len(sent)} axes {sent}",
            f"input '{tensor}' has shape {sent}, which cannot be mapped to the "
            + f"model's axes {_axes_text(t)}: pass dim names, or an array with "
            + f"{rank} axes (or fewer, leaving out singleton axes)",
        )
    return array, (None if array.shape == sent else tuple(array.shape)), None


def _drop_first_singleton(shape: tuple[int, ...]) -> tuple[int, ...]:
    i = shape.index(1)
    return shape[:i] + shape[i + 1 :]


def _map_named(
    tensor: str, array: np.ndarray, t: v0_5.InputTensorDescr, names: tuple[str, ...]
) -> tuple[np.ndarray, tuple[int, ...] | None, tuple[int, ...] | None]:
    model_axes = _axis_ids(t)
    if len(names) != array.ndim:
        raise tensor_error(
            tensor,
            "",
            f"{array.ndim} dim names",
            f"{len(names)} dim names {names}",
            f"input '{tensor}' has {array.ndim} axes but {len(names)} dim names {names}",
        )
    resolved: list[str] = []
    for name in names:
        axis = name if name in model_axes else _ALIASES.get(name, name)
        if axis not in model_axes:
            raise tensor_error(
                tensor,
                name,
                f"one of {_axes_text(t)}",
                name,
                f"input '{tensor}' has an axis '{name}' that the model does not have; "
                + f"its axes are {_axes_text(t)}",
            )
        if axis in resolved:
            raise tensor_error(
                tensor,
                axis,
                "each axis once",
                f"{names}",
                f"input '{tensor}' names axis '{axis}' twice in {names}",
            )
        resolved.append(axis)
    for a in t.axes:
        if str(a.id) in resolved:
            continue
        if not _singleton_ok(a):
            raise tensor_error(
                tensor,
                str(a.id),
                f"axis '{a.id}'",
                "missing",
                f"input '{tensor}' lacks axis '{a.id}' (dim names {names}), which cannot be "
                + f"a singleton; the model's axes are {_axes_text(t)}",
            )
        array = np.expand_dims(array, -1)
        resolved.append(str(a.id))
    order = tuple(resolved.index(a) for a in model_axes)
    reshape = None if len(resolved) == len(names) else tuple(array.shape)
    if order == tuple(range(len(order))):
        return array, reshape, None
    return array.transpose(order), reshape, order


def _check_sizes(tensor: str, array: np.ndarray, t: v0_5.InputTensorDescr) -> None:
    for a, size in zip(t.axes, array.shape, strict=True):
        axis = str(a.id)
        if size == 0:
            raise tensor_error(
                tensor,
                axis,
                "at least 1",
                0,
                f"input '{tensor}' has zero size on axis '{axis}' (shape "
                + f"{tuple(array.shape)}): there is nothing to predict",
            )
        if isinstance(a, v0_5.ChannelAxis):
            if size != len(a.channel_names):
                raise tensor_error(
                    tensor,
                    axis,
                    len(a.channel_names),
                    size,
                    f"input '{tensor}' has {size} channel(s) on axis '{axis}', the model "
                    + f"expects {len(a.channel_names)} ({', '.join(map(str, a.channel_names))})",
                )
        elif size < 1:
            raise tensor_error(
                tensor,
                axis,
                "at least 1",
                size,
                f"input '{tensor}' axis '{axis}' has size {size}, below the minimum of 1",
            )
        elif isinstance(a, v0_5.IndexInputAxis):
            _check_index_axis(tensor, a, size)


def _check_index_axis(tensor: str, a: v0_5.IndexInputAxis, size: int) -> None:
    """Index axes (e.g. a list of features) are neither padded nor tiled: the size must be valid."""
    rule = a.size
    if isinstance(rule, int) and size != rule:
        raise tensor_error(
            tensor, str(a.id), rule, size, f"input '{tensor}' axis '{a.id}' must be {rule}"
        )
    if isinstance(rule, v0_5.ParameterizedSize) and (
        size < rule.min or (size - rule.min) % rule.step
    ):
        expected = f"{rule.min} + n*{rule.step}"
        message = f"input '{tensor}' axis '{a.id}' has size {size}, " + (
            f"below the model's minimum of {rule.min}"
            if size < rule.min
            else f"not of the form {expected}"
        )
        raise tensor_error(tensor, str(a.id), expected, size, message)


def _widen_float16(array: np.ndarray, t: v0_5.InputTensorDescr) -> np.ndarray:
    if array.dtype != np.float16:
        return array
    declared = np.dtype(_dtype_name(t)) if _dtype_name(t).startswith("float") else None
    if declared == np.float16:
        return array
    return array.astype(declared if declared is not None else np.float32)


def name_the_only_input(
    descr: v0_5.ModelDescr,
    arrays: Mapping[str, np.ndarray],
    dims: Mapping[str, Sequence[str]],
) -> tuple[Mapping[str, np.ndarray], Mapping[str, Sequence[str]]]:
    """A single array named "" is the model's only input (clients need not know its id)."""
    if "" not in arrays:
        return arrays, dims
    inputs = descr.inputs
    if len(arrays) > 1 or len(inputs) != 1:
        raise InvalidTensorError(
            f"an unnamed tensor only works for single-input models; this model takes "
            f"{[str(t.id) for t in inputs]}: name each tensor by its input id",
            details={"expected": [str(t.id) for t in inputs], "got": sorted(arrays)},
        )
    name = str(inputs[0].id)
    return {name: arrays[""]}, ({name: dims[""]} if "" in dims else dims)
