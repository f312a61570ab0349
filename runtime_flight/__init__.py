"""The runtime (data plane): warm bioimageio.core pipelines, inference of any image size,
batches, tiling and model tests, behind the Arrow Flight server (:mod:`.server`).

Transport-free modules, one responsibility each:

    devices         cpu / cuda:N names, defaults, availability, memory
    weight_formats  which weight format runs a model on which device
    descriptions    a package's model description (format 0.5), weight file sizes
    pipelines       PipelinePool: warm pipelines per (model, format, device), memory budget
    warm_pipeline   WarmPipeline: a lent pipeline, one inference at a time, statistics
    options         PredictOptions: blocksize, NaN policy, skipping processing, batch size
    input_mapping   arrays (+ dim names) -> a validated sample in the model's axis order
    size_fitting    whole, padded or tiled: the plan for an input size
    inference       predict: one sample, any size (whole, padded or tiled)
    batching        predict_batch: several samples, stacked along the batch axis when possible
    model_tests     run_model_test: bioimageio.core's model test as a ValidationReport
    lean_stats      sample mean/var/std in bounded chunks (no full-size temporaries)
    streamed_tiling blockwise prediction that yields finished output rows, never the whole
    core_blocks     how bioimageio.core places output blocks (fixed-size outputs that follow inputs)
    memory_release  hand freed memory back to the OS after large requests (glibc)
    device_processing  bioimage.io pre/postprocessing as torch operations on the model's device
    fast_path       processing and network fused on the device, checked against bioimageio.core
    device_tiles    tiled prediction with bioimageio.core's blocks, the network on stacks of them

The transport and process around them:

    service         RuntimeService: what the Flight server calls (predict, frames, load, test)
    server          RuntimeFlightServer: do_exchange (predictions, streams) and do_action
    caller_auth     Flight middleware: who calls (tokens checked by the control service)
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
    from .batching import predict_batch
    from .devices import available_devices, default_device, device_infos, resolve_device
    from .inference import predict
    from .model_tests import run_model_test
    from .options import PredictOptions
    from .pipelines import PipelinePool
    from .warm_pipeline import WarmPipeline
    from .weight_formats import runnable_formats

_EXPORTS = {
    "PipelinePool": "pipelines",
    "WarmPipeline": "warm_pipeline",
    "PredictOptions": "options",
    "predict": "inference",
    "predict_batch": "batching",
    "run_model_test": "model_tests",
    "available_devices": "devices",
    "default_device": "devices",
    "device_infos": "devices",
    "resolve_device": "devices",
    "runnable_formats": "weight_formats",
}

__all__ = [
    "PipelinePool",
    "PredictOptions",
    "WarmPipeline",
    "available_devices",
    "default_device",
    "device_infos",
    "predict",
    "predict_batch",
    "resolve_device",
    "run_model_test",
    "runnable_formats",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
