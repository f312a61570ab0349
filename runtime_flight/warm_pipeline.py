"""A loaded pipeline as the pool lends it: one inference at a time, with statistics."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal, overload

from modelrunner.errors import ModelRunnerError
from modelrunner.types import LoadedModel

from .serving_paths import ServingPath

if TYPE_CHECKING:
    import numpy as np
    from bioimageio.core import PredictionPipeline
    from bioimageio.spec.model import v0_5

    from .input_mapping import DimNames, Inputs
    from .options import PredictOptions

Key = tuple[str, str, str]
"""(model id, weight format, device)"""


def now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(eq=False)
class WarmPipeline:
    """A loaded pipeline and its statistics. Use it only while lent by :meth:`PipelinePool.use`."""

    model_id: str
    weight_format: str
    device: str
    pipeline: PredictionPipeline
    memory_bytes: int
    load_seconds: float
    last_used_at: datetime = field(default_factory=now)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held while predicting: one inference at a time per pipeline."""
    users: int = 0
    """Requests holding it (managed by the pool, under the pool's lock)."""
    retired: bool = False
    """Out of the pool; unloaded when the last user returns it."""

    @property
    def serving(self) -> ServingPath:
        """Which path serves its calls, and why (see :mod:`.fast_path`)."""
        from .inference import serving_path

        return serving_path(self.pipeline)

    @property
    def key(self) -> Key:
        return (self.model_id, self.weight_format, self.device)

    @property
    def descr(self) -> v0_5.ModelDescr:
        from .inference import model_descr

        return model_descr(self.pipeline)

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

    def predict(
        self,
        inputs: Inputs,
        dim_names: DimNames | None = None,
        options: PredictOptions | None = None,
        *,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> dict[str, np.ndarray]:
        """:func:`.inference.predict`, one call at a time on this pipeline."""
        from .inference import predict

        with self.lock:
            self.requests += 1
            try:
                return predict(
                    self.pipeline,
                    inputs,
                    dim_names,
                    options,
                    progress=progress,
                    cancelled=cancelled,
                )
            finally:
                self.last_used_at = now()

    @overload
    def predict_batch(
        self,
        samples: Sequence[Inputs],
        dim_names: DimNames | None = ...,
        options: PredictOptions | None = ...,
        *,
        return_errors: Literal[False] = ...,
        cancelled: Callable[[], bool] | None = ...,
    ) -> list[dict[str, np.ndarray]]: ...

    @overload
    def predict_batch(
        self,
        samples: Sequence[Inputs],
        dim_names: DimNames | None = ...,
        options: PredictOptions | None = ...,
        *,
        return_errors: Literal[True],
        cancelled: Callable[[], bool] | None = ...,
    ) -> list[dict[str, np.ndarray] | ModelRunnerError]: ...

    def predict_batch(
        self,
        samples: Sequence[Inputs],
        dim_names: DimNames | None = None,
        options: PredictOptions | None = None,
        *,
        return_errors: bool = False,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[dict[str, np.ndarray]] | list[dict[str, np.ndarray] | ModelRunnerError]:
        """:func:`.inference.predict_batch`, one call at a time on this pipeline."""
        from .batching import predict_batch

        with self.lock:
            self.requests += 1
            try:
                return predict_batch(
                    self.pipeline,
                    samples,
                    dim_names,
                    options,
                    return_errors=return_errors,  # type: ignore[call-overload]
                    cancelled=cancelled,
                )
            finally:
                self.last_used_at = now()
