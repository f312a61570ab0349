"""The shortest way through bioimageio.core for a call whose processing has nothing to do.

Every bioimage.io 0.5 model gets ``ensure_dtype`` steps before and after the network. When an
input already has that dtype and the model has no other processing, bioimageio.core's pipeline
still wraps every array in xarray objects, casts in place of nothing and transposes to the
order it already has: about 0.5 ms per call, more than a whole 512x512 frame takes to cross
the network. This module calls the same bioimageio.core model adapter (its framework session,
device queue and ``_forward_impl``) with the numpy arrays directly, and casts outputs exactly as
the pipeline's ``ensure_dtype`` would. Anything else (real processing, a dtype to convert, a
model that needs other models' outputs) takes the pipeline as usual.

bioimageio.core is pinned (0.11.0); ``tests/runtime_flight/test_direct_forward.py`` checks that
this path gives the pipeline's results bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from bioimageio.core import PredictionPipeline
from bioimageio.core.proc_ops import EnsureDtype


@dataclass(frozen=True)
class DirectForward:
    """A pipeline whose pre- and postprocessing are only ``ensure_dtype`` casts."""

    adapter: Any
    input_ids: tuple[str, ...]
    input_dtypes: dict[str, np.dtype]
    """The dtype each input reaches the network with (its last ``ensure_dtype``)."""
    output_ids: tuple[str, ...]
    output_dtypes: dict[str, np.dtype]

    def accepts(self, arrays: Mapping[str, np.ndarray]) -> bool:
        """Whether the casts before the network would change nothing for ``arrays``."""
        if set(arrays) != set(self.input_ids):
            return False
        return all(arrays[k].dtype == self.input_dtypes[k] for k in self.input_ids)

    def forward(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The network's outputs for arrays already in each input's axis order."""
        device, model = self.adapter._model_queue.get()
        try:
            results = self.adapter._forward_impl(device, model, [arrays[k] for k in self.input_ids])
        finally:
            self.adapter._model_queue.put((device, model))
        outputs: dict[str, np.ndarray] = {}
        for output_id, value in zip(self.output_ids, results, strict=False):
            if value is None:
                continue
            array = np.asarray(value)
            target = self.output_dtypes.get(output_id)
            if target is not None and array.dtype != target:
                array = array.astype(target)
            outputs[output_id] = np.ascontiguousarray(array)
        return outputs


def direct_forward_for(pipeline: PredictionPipeline) -> DirectForward | None:
    """The shortcut for ``pipeline``, or None when its processing does real work."""
    if getattr(pipeline, "_preceding_prediction_pipelines", None):
        return None
    adapter = getattr(pipeline, "_adapter", None)
    needed = ("_model_queue", "_forward_impl", "_input_ids", "_output_ids")
    if adapter is None or not all(hasattr(adapter, name) for name in needed):
        return None
    pre = [*pipeline._samplewise_preprocessing, *pipeline._blockwise_preprocessing]
    post = [*pipeline._blockwise_postprocessing, *pipeline._samplewise_postprocessing]
    casts_in = _final_casts(pre)
    casts_out = _final_casts(post)
    if casts_in is None or casts_out is None:
        return None
    input_ids = tuple(str(i) for i in adapter._input_ids)
    if set(casts_in) != set(input_ids):
        return None  # an input without a cast: leave it to the pipeline
    return DirectForward(
        adapter=adapter,
        input_ids=input_ids,
        input_dtypes=casts_in,
        output_ids=tuple(str(i) for i in adapter._output_ids),
        output_dtypes=casts_out,
    )


def _final_casts(ops: list[Any]) -> dict[str, np.dtype] | None:
    """The dtype each member is cast to by a chain of in-place ``ensure_dtype`` steps; None when
    the chain has any other kind of step, or casts one member to two dtypes (a round trip through
    another dtype can change values)."""
    casts: dict[str, np.dtype] = {}
    for op in ops:
        if not isinstance(op, EnsureDtype) or op.input != op.output:
            return None
        member, dtype = str(op.output), np.dtype(op.dtype)
        if casts.setdefault(member, dtype) != dtype:
            return None
    return casts
