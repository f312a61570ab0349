"""One prediction's parts, for the functions that compute it (:mod:`.inference`,
:mod:`.batching`): :class:`Prediction` is what a warm pipeline hands them per call, and
:class:`Predicted` what they answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from bioimageio.core import PredictionPipeline
from bioimageio.core.common import MemberId
from bioimageio.spec.model import v0_5

from modelrunner.errors import CancelledError
from modelrunner.predict_request import PredictRequest

from .batch_split import Mapped
from .core_calls import BlockProgress
from .input_mapping import input_shapes
from .limits import RuntimeLimits
from .repeated_inputs import PreparedInputs
from .serving_paths import PathName, ServingPath
from .size_fitting import FitPlan, PlanCache
from .streamed_tiling import Cancelled

if TYPE_CHECKING:
    from .fast_path import FastPath

"""A sample's input arrays as :func:`~.input_mapping.map_inputs` gives them."""


class Predicted(dict[str, np.ndarray]):
    """Output arrays by id, and which path computed them (see :mod:`.fast_path`)."""

    path: PathName = "reference"

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray], path: PathName) -> Predicted:
        outputs = cls(arrays)
        outputs.path = path
        return outputs


@dataclass(slots=True)
class Prediction:
    """One call on a warm pipeline: its parts, the request, the runtime's limits and the
    caller's callbacks."""

    pipeline: PredictionPipeline
    descr: v0_5.ModelDescr
    fast: FastPath | None
    serving: ServingPath
    weight_format: str
    network_dtypes: Mapping[MemberId, str]
    plans: PlanCache
    prepared: PreparedInputs
    request: PredictRequest
    limits: RuntimeLimits
    progress: BlockProgress | None = None
    """Called after each block of a tiled prediction (after asking ``cancelled``)."""
    cancelled: Cancelled | None = None
    """Asked before the prediction, after each block and between samples: True stops it with
    CancelledError."""

    def plan(self, arrays: Mapped) -> FitPlan:
        return self.plans.plan(
            input_shapes(self.descr, arrays),
            blocksize=self.request.blocksize,
            max_tile_input_bytes=self.limits.max_tile_input_bytes,
        )


def check_cancelled(cancelled: Cancelled | None) -> None:
    if cancelled is not None and cancelled():
        raise CancelledError("the prediction was cancelled")


def polling(call: Prediction) -> BlockProgress | None:
    """The call's progress, checking ``cancelled`` first (called after each block)."""
    progress, cancelled = call.progress, call.cancelled
    if cancelled is None:
        return progress

    def report(done: int, total: int) -> None:
        check_cancelled(cancelled)
        if progress is not None:
            progress(done, total)

    return report
