"""Predictions in tests on a loaded bioimageio.core pipeline, through the runtime's own
:class:`~modelrunner.runtime_flight.warm_pipeline.WarmPipeline`, with the request's options as
keywords: ``predict(pipeline, {"raw": image}, blocksize=1)``.

A bare pipeline is wrapped for the call (bioimageio.core serves it: no fast path); pass a
:func:`warm_pipeline` one for the fast path. The runtime's limits (``max_tile_input_bytes``,
``stream_tiles_min_bytes``) may be given beside the options.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from bioimageio.core import PredictionPipeline

from modelrunner.errors import ModelRunnerError
from modelrunner.predict_request import PredictRequest
from modelrunner.runtime_flight.limits import RuntimeLimits
from modelrunner.runtime_flight.outputs import Outputs, StreamedOutputs
from modelrunner.runtime_flight.prediction import Predicted
from modelrunner.runtime_flight.warm_pipeline import WarmPipeline

MODEL = "test-model"
_LIMITS = {f.name for f in dataclasses.fields(RuntimeLimits)}
Target = PredictionPipeline | WarmPipeline


def warm_pipeline(
    pipeline: PredictionPipeline,
    weight_format: str = "",
    device: str = "cpu",
    *,
    fast_path: bool = True,
) -> WarmPipeline:
    """The pipeline as the pool keeps it, its serving path checked (``fast_path=False``:
    bioimageio.core serves every call)."""
    warmed = WarmPipeline(MODEL, weight_format, device, pipeline)
    warmed.check_serving_path(enabled=fast_path)
    return warmed


def request(
    inputs: Any = None, dim_names: Mapping[str, Sequence[str]] | None = None, **options: Any
) -> PredictRequest:
    """A request for ``inputs`` (one array, or arrays by input id)."""
    if inputs is None:
        arrays: dict[str, Any] = {}
    elif isinstance(inputs, Mapping):
        arrays = dict(inputs)
    else:
        arrays = {"": inputs}
    dims = {k: tuple(v) for k, v in (dim_names or {}).items()}
    return PredictRequest(model_id=MODEL, inputs=arrays, dim_names=dims, **options)


def predict(
    target: Target,
    inputs: Any,
    dim_names: Mapping[str, Sequence[str]] | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    **options: Any,
) -> Predicted:
    """The outputs by id, and ``.path``: which path computed them."""
    limits, options = _split(options)
    with _warm(target, limits) as warmed:
        out = warmed.predict(
            request(inputs, dim_names, **options), progress=progress, cancelled=cancelled
        )
    return _predicted(out)


def start(
    target: Target,
    inputs: Any,
    dim_names: Mapping[str, Sequence[str]] | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    **options: Any,
) -> Outputs | StreamedOutputs:
    """``WarmPipeline.start``: a large tiled prediction comes back as StreamedOutputs."""
    limits, options = _split(options)
    with _warm(target, limits) as warmed:
        return warmed.start(
            request(inputs, dim_names, **options), progress=progress, cancelled=cancelled
        )


def predict_batch(
    target: Target,
    samples: Sequence[Any],
    dim_names: Mapping[str, Sequence[str]] | None = None,
    *,
    return_errors: bool = False,
    cancelled: Callable[[], bool] | None = None,
    **options: Any,
) -> list[Any]:
    limits, options = _split(options)
    frames = [dict(s) if isinstance(s, Mapping) else {"": s} for s in samples]
    with _warm(target, limits) as warmed:
        results = warmed.predict_batch(
            request(None, dim_names, **options),
            frames,
            return_errors=return_errors,  # type: ignore[call-overload]
            cancelled=cancelled,
        )
    return [r if isinstance(r, ModelRunnerError) else _predicted(r) for r in results]


def _split(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    limits = {k: v for k, v in options.items() if k in _LIMITS}
    return limits, {k: v for k, v in options.items() if k not in _LIMITS}


@contextmanager
def _warm(target: Target, limits: dict[str, Any]) -> Iterator[WarmPipeline]:
    warmed = target if isinstance(target, WarmPipeline) else WarmPipeline(MODEL, "", "cpu", target)
    before = warmed.limits
    warmed.limits = dataclasses.replace(before, **limits)
    try:
        yield warmed
    finally:
        warmed.limits = before


def _predicted(outputs: Outputs) -> Predicted:
    return Predicted.of(outputs.arrays, outputs.serving_path)
