"""A loaded model as the runtime keeps it: one :class:`WarmPipeline` owns the bioimageio.core
pipeline, its description, its fast path and the verdict on it, the plans of recent input
shapes, the dtypes its network takes, the lock that lets one prediction run at a time, its
statistics, and its predict paths (one sample, one started for streamed outputs, a batch).

It calls the prediction functions (:mod:`.inference`, :mod:`.batching`) with its parts; they
never call back into it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal, overload

from modelrunner.errors import ModelRunnerError
from modelrunner.types import LoadedModel

from .limits import RuntimeLimits
from .outputs import LeasedBands, Outputs, StreamedOutputs
from .serving_paths import NOT_CHECKED, ServingPath

if TYPE_CHECKING:
    import numpy as np
    from bioimageio.core import PredictionPipeline

    from modelrunner.predict_request import PredictRequest

    from .core_calls import BlockProgress
    from .fast_path import FastPath
    from .prediction import Predicted, Prediction
    from .streamed_tiling import Cancelled

Key = tuple[str, str, str]
"""(model id, weight format, device)"""


def now() -> datetime:
    return datetime.now(timezone.utc)


class WarmPipeline:
    """A loaded pipeline and all the runtime keeps about it. Use it only while lent by
    :meth:`.pipelines.PipelinePool.use` (or a test's own)."""

    def __init__(
        self,
        model_id: str,
        weight_format: str,
        device: str,
        pipeline: PredictionPipeline,
        *,
        memory_bytes: int = 0,
        load_seconds: float = 0.0,
        limits: RuntimeLimits | None = None,
    ) -> None:
        # bioimageio.core is loaded once a pipeline exists: imported here, not with the pool
        from .core_calls import model_descr, network_dtypes
        from .repeated_inputs import PreparedInputs
        from .size_fitting import PlanCache

        self.model_id = model_id
        self.weight_format = weight_format
        self.device = device
        self.pipeline = pipeline
        self.memory_bytes = memory_bytes
        self.load_seconds = load_seconds
        self.limits = limits or RuntimeLimits()
        self.descr = model_descr(pipeline)
        self.network_dtypes = network_dtypes(self.descr)
        self.plans = PlanCache(
            self.descr, {m: _itemsize(d) for m, d in self.network_dtypes.items()}
        )
        self.prepared = PreparedInputs()
        """How inputs of the signatures seen lately are mapped, and their plans."""
        self.output_axes = {str(t.id): tuple(str(a.id) for a in t.axes) for t in self.descr.outputs}
        self.fast: FastPath | None = None
        """The checked fast path, when it serves this model (:meth:`check_serving_path`)."""
        self.serving: ServingPath = NOT_CHECKED
        """Which path serves its calls, and why."""
        self.lock = threading.Lock()
        """Held while predicting: one prediction at a time per pipeline."""
        self.last_used_at = now()
        self.requests = 0
        self.users = 0
        """Requests holding it (managed by the pool, under the pool's lock)."""
        self.retired = False
        """Out of the pool; unloaded when the last user returns it."""

    @property
    def key(self) -> Key:
        return (self.model_id, self.weight_format, self.device)

    def info(self) -> LoadedModel:
        return LoadedModel(
            model_id=self.model_id,
            weight_format=self.weight_format,
            device=self.device,
            memory_bytes=self.memory_bytes,
            last_used_at=self.last_used_at,
            requests=self.requests,
            serving_path=self.serving.name,
            serving_path_reason=self.serving.reason,
            precision_max_abs_error=dict(self.serving.precision_errors),
        )

    # -- lifetime ------------------------------------------------------------------------------

    def check_serving_path(self, *, enabled: bool = True) -> ServingPath:
        """Build the fast path and check it against bioimageio.core on the package's test
        inputs (:func:`.fast_path.choose_serving_path`); calls take it from then on where it
        applies. Call once, after loading (``enabled=False``: bioimageio.core serves all)."""
        from .fast_path import choose_serving_path

        self.fast, self.serving = choose_serving_path(
            self.pipeline, self.descr, self.weight_format, self.device, enabled=enabled
        )
        return self.serving

    def close(self) -> None:
        """Unload: the fast path's buffers, then bioimageio.core's pipeline."""
        self.fast = None
        self.serving = NOT_CHECKED
        self.pipeline.unload()

    # -- predictions ---------------------------------------------------------------------------

    def predict(
        self,
        request: PredictRequest,
        *,
        progress: BlockProgress | None = None,
        cancelled: Cancelled | None = None,
        limits: RuntimeLimits | None = None,
    ) -> Outputs:
        """The request's outputs, whole (:func:`.inference.predict`). ``limits``: this call's,
        when not the pipeline's own."""
        from .inference import predict

        self._begin()
        try:
            return self._outputs(predict(self._call(request, progress, cancelled, limits)))
        finally:
            self._end()

    def start(
        self,
        request: PredictRequest,
        *,
        progress: BlockProgress | None = None,
        cancelled: Cancelled | None = None,
        limits: RuntimeLimits | None = None,
    ) -> Outputs | StreamedOutputs:
        """:meth:`predict`, except that a large tiled prediction returns its outputs band by
        band (:func:`.inference.start`); it keeps this pipeline locked until its bands are read
        or closed."""
        from .inference import start

        self._begin()
        try:
            result = start(self._call(request, progress, cancelled, limits))
        except BaseException:
            self._end()
            raise
        if isinstance(result, dict):
            self._end()
            return self._outputs(result)
        lease = ExitStack()
        lease.callback(self._end)
        return StreamedOutputs(
            shapes=result.shapes,
            dtypes=result.dtypes,
            dim_names=self._dim_names(result.shapes),
            weight_format=self.weight_format,
            device=self.device,
            bands=LeasedBands(result.bands, lease),
            blocks=result.blocks,
        )

    @overload
    def predict_batch(
        self,
        request: PredictRequest,
        frames: Sequence[dict[str, np.ndarray]],
        *,
        return_errors: Literal[False] = ...,
        cancelled: Cancelled | None = ...,
        limits: RuntimeLimits | None = ...,
    ) -> list[Outputs]: ...

    @overload
    def predict_batch(
        self,
        request: PredictRequest,
        frames: Sequence[dict[str, np.ndarray]],
        *,
        return_errors: Literal[True],
        cancelled: Cancelled | None = ...,
        limits: RuntimeLimits | None = ...,
    ) -> list[Outputs | ModelRunnerError]: ...

    def predict_batch(
        self,
        request: PredictRequest,
        frames: Sequence[dict[str, np.ndarray]],
        *,
        return_errors: bool = False,
        cancelled: Cancelled | None = None,
        limits: RuntimeLimits | None = None,
    ) -> list[Outputs] | list[Outputs | ModelRunnerError]:
        """Several samples with the request's options and dim names, stacked where that
        changes nothing (:func:`.batching.predict_batch`)."""
        from .batching import predict_batch

        self._begin()
        try:
            results = predict_batch(
                self._call(request, None, cancelled, limits),
                frames,
                return_errors=return_errors,  # type: ignore[call-overload]
            )
        finally:
            self._end()
        return [r if isinstance(r, ModelRunnerError) else self._outputs(r) for r in results]

    def _begin(self) -> None:
        """One prediction at a time: the lock, held until :meth:`_end`."""
        self.lock.acquire()
        self.requests += 1

    def _end(self) -> None:
        self.last_used_at = now()
        self.lock.release()

    def _call(
        self,
        request: PredictRequest,
        progress: BlockProgress | None,
        cancelled: Cancelled | None,
        limits: RuntimeLimits | None,
    ) -> Prediction:
        from .prediction import Prediction

        return Prediction(
            pipeline=self.pipeline,
            descr=self.descr,
            fast=self.fast,
            serving=self.serving,
            weight_format=self.weight_format,
            network_dtypes=self.network_dtypes,
            plans=self.plans,
            prepared=self.prepared,
            request=request,
            limits=limits or self.limits,
            progress=progress,
            cancelled=cancelled,
        )

    def _outputs(self, predicted: Predicted) -> Outputs:
        return Outputs(
            arrays=predicted,
            dim_names=self._dim_names({k: a.shape for k, a in predicted.items()}),
            weight_format=self.weight_format,
            device=self.device,
            serving_path=predicted.path,
        )

    def _dim_names(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[str, ...]]:
        axes = self.output_axes
        return {k: axes[k] for k, s in shapes.items() if k in axes and len(axes[k]) == len(s)}


def _itemsize(dtype: str) -> int:
    import numpy as np

    return int(np.dtype(dtype).itemsize)
