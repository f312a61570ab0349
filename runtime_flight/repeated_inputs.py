"""What a warm pipeline worked out for the inputs it saw last, by their signature (names,
shapes, dtypes, dim names and the options that matter): how each array maps onto the model's
axes (checked once), that the sample is no batch to split, and its plan. A microscope sends
the same shape over and over; each frame then costs the mapping's views and the NaN check, not
every check again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .input_mapping import AxisRecipe
from .size_fitting import FitPlan

Signature = Hashable


@dataclass(frozen=True)
class Prepared:
    """A signature's mapping recipes (by input name), and the plan of its one sample."""

    recipes: Mapping[str, AxisRecipe]
    plan: FitPlan


def signature(
    arrays: Mapping[str, object], dims: Mapping[str, Sequence[str]], *options: object
) -> Signature | None:
    """The key of ``arrays`` (None when one is no numpy array: those are checked each time)."""
    parts: list[object] = [*options]
    for name, array in arrays.items():
        if type(array) is not np.ndarray:
            return None
        parts.append((name, array.shape, array.dtype.str, array.strides))
    if dims:
        parts.append(tuple((k, tuple(v)) for k, v in dims.items()))
    return tuple(parts)


class PreparedInputs:
    """The :class:`Prepared` of the last :data:`SIZE` signatures. Thread-safe."""

    SIZE = 16

    def __init__(self) -> None:
        self._kept: OrderedDict[Signature, Prepared] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Signature) -> Prepared | None:
        return self._kept.get(key)

    def put(self, key: Signature, prepared: Prepared) -> None:
        with self._lock:
            self._kept[key] = prepared
            while len(self._kept) > self.SIZE:
                self._kept.popitem(last=False)
