"""The runtime (data plane): warm bioimageio.core pipelines, inference of any image size,
batches, tiling and model tests, behind the Arrow Flight edge (:mod:`.server`).

The data plane, transport-free (a ``PredictRequest`` in, typed outputs out), one
responsibility per module:

    service         RuntimeService: predictions, frames, load, unload, tests, state
    limits          RuntimeLimits: what one prediction may spend (sample and tile bytes)
    outputs         Outputs, StreamedOutputs: what a prediction answers
    pipelines       PipelinePool: warm pipelines per (model, format, device), memory budget
    warm_pipeline   WarmPipeline: a loaded model, its fast path, plans, lock, statistics and
                    predict paths
    prediction      Prediction (one call's parts), Predicted (its outputs)
    inference       predict and start one sample of any size (whole, padded or tiled)
    repeated_inputs how inputs of signatures seen lately map, and their plans
    batching        several samples, stacked along the batch axis when possible
    kept_shape      bioimageio.core's call on a sample as sent (keep_shape, halo padding)
    sample_blocks   one block of a larger sample, with the whole sample's statistics
    core_calls      bioimageio.core's call sequence, written once
    core_blocks     how bioimageio.core places output blocks (fixed-size outputs that follow inputs)
    input_mapping   arrays (+ dim names) -> validated arrays in the model's axis order
    finite_values   refusals of inputs: tensor_error, the NaN and infinity check
    tied_sizes      the sample as a whole: sizes a description ties across tensors
    size_fitting    whole, padded or tiled: the plan for an input size, and recent plans
    batch_split     a batch larger than the model's fixed batch size, sample by sample
    streamed_tiling blockwise prediction that yields finished output rows, never the whole
    lean_stats      sample mean/var/std in bounded chunks (no full-size temporaries)
    fast_path       processing and network fused on the device, checked against bioimageio.core
    fast_networks   the networks the fast path calls (bioimageio.core's loaded models)
    device_processing  bioimage.io pre/postprocessing as torch operations on the model's device
    device_tiles    tiled prediction with bioimageio.core's blocks, the network on stacks of them
    failures        a framework's failure as the caller reads it (model, shapes, reason)
    serving_paths   which path serves a model, and why
    model_tests     run_model_test: bioimageio.core's model test as a ValidationReport
    devices, weight_formats, descriptions   devices, formats and descriptions
    memory_release  hand freed memory back to the OS after large requests (glibc)

The Flight edge (protobuf here only), and the process around it:

    server          RuntimeFlightServer: do_exchange dispatching by kind, do_action
    single_exchange, stream_exchange, session_exchange   one module per exchange kind
    exchange_calls  what every exchange shares: the call, cancel polling, errors, counters
    frame_io        frames in and out: layouts, reading, the frame reader thread, writing
    flight_actions  load, unload, test, info
    exchange_metrics, caller_auth   Prometheus metrics; who may call (tokens checked by the
                    control service)
    call_gate       CallGate: a call's rights (the model resolved as its caller, re-checked
                    while it is open) and the runtime's limits, the one object the edge asks
    model_removal   what a runtime does when the control service removes a model
    packages        PackageLocator: a model's package from the shared cache or the control service
    registration    Registration: announce the runtime to the control service, heartbeats

Names are imported on first use, so importing this package loads neither bioimageio.core nor
any ML framework.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .devices import available_devices, default_device, device_infos, resolve_device
    from .limits import RuntimeLimits
    from .model_tests import run_model_test
    from .outputs import Outputs
    from .pipelines import PipelinePool
    from .service import RuntimeService
    from .warm_pipeline import WarmPipeline
    from .weight_formats import runnable_formats

_EXPORTS = {
    "Outputs": "outputs",
    "PipelinePool": "pipelines",
    "RuntimeLimits": "limits",
    "RuntimeService": "service",
    "WarmPipeline": "warm_pipeline",
    "run_model_test": "model_tests",
    "available_devices": "devices",
    "default_device": "devices",
    "device_infos": "devices",
    "resolve_device": "devices",
    "runnable_formats": "weight_formats",
}

__all__ = [
    "Outputs",
    "PipelinePool",
    "RuntimeLimits",
    "RuntimeService",
    "WarmPipeline",
    "available_devices",
    "default_device",
    "device_infos",
    "resolve_device",
    "run_model_test",
    "runnable_formats",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
