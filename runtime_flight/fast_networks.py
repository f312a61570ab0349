"""The networks the fast path calls (:mod:`.fast_path`): bioimageio.core's loaded models on
device tensors.

The network itself is bioimageio.core's: the adapter's loaded models are taken from its device
queue (``_model_queue``, ``_forward_impl``; bioimageio.core is pinned to 0.11.0), so the weights
are held once.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from bioimageio.core import PredictionPipeline

from .device_processing import Unsupported

# Arrays received over Flight are read-only; no step writes into its input. torch warns once a
# process; a filter set once (rather than around every call) is also safe across threads.
warnings.filterwarnings(
    "ignore",
    message="The given NumPy array is not writable",
    category=UserWarning,
    module=__name__,
)


class Network(Protocol):
    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor | None]: ...


def from_numpy(array: np.ndarray) -> torch.Tensor:
    try:
        return torch.from_numpy(array)
    except (ValueError, TypeError):  # negative strides, non-native byte order
        return torch.from_numpy(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("=")))


def download(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy())


# -- networks ----------------------------------------------------------------------------------


class _AdapterModels:
    """The loaded (device, model) pairs of a bioimageio.core adapter, borrowed one call at a time
    from its queue exactly as the adapter's own ``forward`` does."""

    def __init__(self, adapter: Any) -> None:
        for name in ("_model_queue", "_forward_impl"):
            if not hasattr(adapter, name):
                raise Unsupported(f"the {type(adapter).__name__} has no {name}")
        self.adapter = adapter
        device, model = adapter._model_queue.get()
        adapter._model_queue.put((device, model))
        # facts about the model, not the model: unloading the adapter must free it
        self.device = device
        self.providers = tuple(model.get_providers()) if hasattr(model, "get_providers") else ()
        self.input_names = [i.name for i in model.get_inputs()] if self.providers else []
        self.output_names = [o.name for o in model.get_outputs()] if self.providers else []


class TorchNetwork:
    """A PyTorch or TorchScript module called on device tensors."""

    def __init__(self, models: _AdapterModels) -> None:
        self.models = models
        self.device = torch.device(models.device)

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
        queue = self.models.adapter._model_queue
        device, model = queue.get()
        try:
            result = model(*inputs)
        finally:
            queue.put((device, model))
        return _as_list(result)


class ArrayNetwork:
    """Any network bioimageio.core runs on numpy arrays (ONNX, TensorFlow, Keras), on the CPU."""

    device = torch.device("cpu")

    def __init__(self, models: _AdapterModels) -> None:
        self.models = models

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
        results = self.run_arrays([t.cpu().numpy() for t in inputs])
        return [None if r is None else from_numpy(r) for r in results]

    def run_arrays(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        """The network on numpy arrays, outputs as numpy arrays (no torch in between)."""
        contiguous = [np.ascontiguousarray(a) for a in arrays]
        adapter = self.models.adapter
        device, model = adapter._model_queue.get()
        try:
            results = adapter._forward_impl(device, model, contiguous)
        finally:
            adapter._model_queue.put((device, model))
        return [None if r is None else np.asarray(r) for r in _as_list(results)]


class OnnxCudaNetwork:
    """An ONNX Runtime session with the CUDA provider, fed device tensors through IO binding (no
    host round trip between the preprocessing and the network; its outputs come back through
    the host, ``copy_outputs_to_cpu``)."""

    def __init__(self, models: _AdapterModels, device: torch.device) -> None:
        self.models = models
        self.device = device
        self.input_names = models.input_names
        self.output_names = models.output_names

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
        queue = self.models.adapter._model_queue
        device, session = queue.get()
        try:
            binding = session.io_binding()
            kept = []
            for name, tensor in zip(self.input_names, inputs, strict=False):
                tensor = tensor.contiguous()
                kept.append(tensor)
                binding.bind_input(
                    name,
                    "cuda",
                    self.device.index or 0,
                    _numpy_dtype(tensor.dtype),
                    list(tensor.shape),
                    tensor.data_ptr(),
                )
            for name in self.output_names:
                binding.bind_output(name, "cuda", self.device.index or 0)
            torch.cuda.current_stream(self.device).synchronize()
            session.run_with_iobinding(binding)
            results = binding.copy_outputs_to_cpu()
        finally:
            queue.put((device, session))
        return [torch.from_numpy(np.asarray(r)).to(self.device) for r in results]


def _numpy_dtype(dtype: torch.dtype) -> type:
    return torch.empty((), dtype=dtype).numpy().dtype.type


def _as_list(result: Any) -> list[Any]:
    return list(result) if isinstance(result, (list, tuple)) else [result]


def network_for(pipeline: PredictionPipeline, weight_format: str, device: str) -> Network:
    """The pipeline's network as a :class:`Network`.

    Raises:
        Unsupported: the adapter does not expose its loaded models.
    """
    adapter = getattr(pipeline, "_adapter", None)
    if adapter is None:
        raise Unsupported("the pipeline has no local model adapter")
    models = _AdapterModels(adapter)
    if weight_format in ("pytorch_state_dict", "torchscript"):
        return TorchNetwork(models)
    cuda_onnx = weight_format == "onnx" and device.startswith("cuda")
    if cuda_onnx and "CUDAExecutionProvider" in models.providers:
        return OnnxCudaNetwork(models, torch.device(device))
    return ArrayNetwork(models)
