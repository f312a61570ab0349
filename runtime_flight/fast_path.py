"""The fast path: a warm pipeline's processing and network as one chain of device operations.

A call on the fast path copies each input to the model's device once, runs the preprocessing
(:mod:`.device_processing`), the network and the postprocessing there, and copies each output
back once. For PyTorch and TorchScript weights the network is the module bioimageio.core loaded,
called on the device tensors; ONNX runs on its session (with IO binding on a CUDA session);
TensorFlow and Keras run on the arrays through bioimageio.core's adapter, with the processing in
torch on the CPU around them.

A sample that must be padded or tiled gets the same processing on the whole sample; in
between, a padded sample goes through bioimageio.core's network call, and a tiled one through
this network in stacks of bioimageio.core's own blocks (:mod:`.device_tiles`).

bioimageio.core stays the reference. When a model is loaded, :func:`choose_serving_path` runs
the package's own test inputs through both paths and compares the outputs within the package's
test tolerance (its ``reproducibility_tolerance``, as ``bioimageio.core.test_model`` reads it).
Only a model that passes is served by the fast path; every other model, and every call that asks
for the reference, runs bioimageio.core's pipeline as it is. The verdict and its reason are
reported with the loaded model (:class:`ServingPath`).

The network itself is bioimageio.core's: the adapter's loaded models are taken from its device
queue (``_model_queue``, ``_forward_impl``; bioimageio.core is pinned to 0.11.0), so the weights
are held once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from bioimageio.core import PredictionPipeline
from bioimageio.spec.model import v0_5

from .core_calls import output_arrays
from .device_processing import Processing, Statistics, Unsupported, processing_for
from .fast_networks import (
    ArrayNetwork,
    Network,
    TorchNetwork,
    download,
    from_numpy,
    network_for,
)
from .input_mapping import as_sample, map_inputs
from .serving_paths import ServingPath

logger = logging.getLogger(__name__)


_AUTOCAST_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class FastPath:
    """Processing and network of one loaded pipeline on one device. Not thread-safe: callers
    serialise calls per pipeline, as for the pipeline itself."""

    def __init__(
        self,
        processing: Processing,
        network: Network,
        device: torch.device,
        input_ids: Sequence[str],
        output_ids: Sequence[str],
    ) -> None:
        self.processing = processing
        self.network = network
        self.device = device
        self.input_ids = tuple(input_ids)
        self.output_ids = tuple(output_ids)
        self._staging: dict[tuple[str, tuple[int, ...], np.dtype], torch.Tensor] = {}
        """Pinned host buffers by input, shape and dtype (CUDA only), reused call after call."""
        self._full_precision_dtypes: list[torch.dtype | None] = []
        """The network's output dtypes at full precision (known after the load's check)."""
        self.precision_errors: dict[str, float] = {}
        """Each reduced precision's largest deviation from full precision on the test inputs,
        once measured (:meth:`measure_precision`)."""
        self._check: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None
        """The test inputs and their full-precision outputs, kept from the load's check."""
        self.precision_failures: dict[str, str] = {}
        """Reduced precisions that failed on the test inputs, with why: no longer offered."""
        casts = processing.casts()
        self._numpy_casts = (
            casts if casts is not None and isinstance(network, ArrayNetwork) else None
        )
        """A numpy network whose processing only ensures dtypes runs on numpy alone (no torch
        tensors in between): (input dtypes, output dtypes)."""

    def measure_precision(self, precision: str) -> float:
        """The largest deviation of ``precision`` from full precision on the package's test
        inputs (measured once; on a CPU, reduced precision can take far longer than full)."""
        error = self.precision_errors.get(precision)
        if error is not None:
            return error
        if self._check is None:
            raise RuntimeError("the fast path has not been checked against bioimageio.core")
        inputs, full = self._check
        try:
            reduced = self.predict(inputs, nan_possible=True, precision=precision)
        except Exception as e:
            self.precision_failures[precision] = f"{type(e).__name__}: {e}"
            raise
        error = max(
            (_deviation(reduced[k], full[k], 0.0, 0.0)[0] for k in full if k in reduced),
            default=0.0,
        )
        self.precision_errors[precision] = error
        logger.info("%s precision: max |difference| from full precision %.2e", precision, error)
        return error

    def accepts(self, input_ids: Iterable[str]) -> bool:
        """Whether a sample of these inputs can take the fast path (it has every input)."""
        return set(input_ids) == set(self.input_ids)

    @property
    def precisions(self) -> tuple[str, ...]:
        """The reduced precisions the network can run in (torch autocast)."""
        if not isinstance(self.network, TorchNetwork):
            return ()
        return tuple(p for p in _AUTOCAST_DTYPES if p not in self.precision_failures)

    def predict(
        self,
        arrays: Mapping[str, np.ndarray],
        *,
        nan_possible: bool,
        precision: str | None = None,
    ) -> dict[str, Any]:
        """Outputs by id for inputs in each input's axis order (as ``map_inputs`` gives them).

        Args:
            nan_possible: inputs may hold NaN values (statistics then skip them, as
                bioimageio.core's do).
            precision: run the network in "float16" or "bfloat16" (see :attr:`precisions`);
                its outputs are cast back to the dtype each had at full precision.
        """
        if self._numpy_casts is not None and not precision:
            return self._predict_numpy(arrays, *self._numpy_casts)
        with torch.inference_mode():
            inputs, stats = self._preprocess(arrays, nan_possible)
            network_inputs = [inputs[k] for k in self.input_ids]
            del inputs
            if precision:
                with torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[precision]):
                    results = self.network(network_inputs)
                results = [
                    r if r is None or want is None else r.to(want)
                    for r, want in zip(results, self._full_precision_dtypes, strict=False)
                ]
            else:
                results = self.network(network_inputs)
                if not self._full_precision_dtypes:
                    self._full_precision_dtypes = [None if r is None else r.dtype for r in results]
            del network_inputs
            outputs = {
                k: v for k, v in zip(self.output_ids, results, strict=False) if v is not None
            }
            outputs = self.processing.postprocess(outputs, stats)
            return {k: download(v) for k, v in outputs.items()}

    def _predict_numpy(
        self,
        arrays: Mapping[str, np.ndarray],
        input_dtypes: Mapping[str, str],
        output_dtypes: Mapping[str, str],
    ) -> dict[str, Any]:
        network = self.network
        assert isinstance(network, ArrayNetwork)
        results = network.run_arrays(
            [_cast(arrays[k], input_dtypes.get(k)) for k in self.input_ids]
        )
        return {
            k: np.ascontiguousarray(_cast(v, output_dtypes.get(k)))
            for k, v in zip(self.output_ids, results, strict=False)
            if v is not None
        }

    def preprocess(
        self, arrays: Mapping[str, np.ndarray], *, nan_possible: bool
    ) -> tuple[dict[str, np.ndarray], Statistics]:
        """The inputs after preprocessing, on the host, and the statistics that
        :meth:`postprocess` needs: for a sample whose network runs block by block elsewhere."""
        with torch.inference_mode():
            inputs, stats = self._preprocess(arrays, nan_possible)
            return {k: download(v) for k, v in inputs.items()}, stats

    def _preprocess(
        self, arrays: Mapping[str, np.ndarray], nan_possible: bool
    ) -> tuple[dict[str, torch.Tensor], Statistics]:
        raw = {k: self._upload(k, arrays[k]) for k in self.input_ids}
        stats = self.processing.statistics(raw, nan_possible=nan_possible)
        return self.processing.preprocess(raw, stats), stats

    def postprocess(
        self, outputs: Mapping[str, np.ndarray], stats: Statistics
    ) -> dict[str, np.ndarray]:
        """The network's outputs (each in its output's axis order) after postprocessing."""
        with torch.inference_mode():
            on_device = {k: from_numpy(v).to(self.device) for k, v in outputs.items()}
            return {
                k: download(v) for k, v in self.processing.postprocess(on_device, stats).items()
            }

    def run_network(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The network alone, on inputs already preprocessed (e.g. a batch of blocks)."""
        with torch.inference_mode():
            results = self.network([self._upload(k, arrays[k]) for k in self.input_ids])
            return {
                k: download(v)
                for k, v in zip(self.output_ids, results, strict=False)
                if v is not None
            }

    def _upload(self, input_id: str, array: np.ndarray) -> torch.Tensor:
        """The input on the device. On CUDA through a pinned buffer of its own: the copy to the
        device is asynchronous, and the buffer is reused only by the next call, after this one
        synchronised (its outputs' copy back to the host)."""
        if self.device.type != "cuda":
            return from_numpy(array)
        key = (input_id, array.shape, array.dtype)
        staging = self._staging.get(key)
        if staging is None:
            if len(self._staging) >= 8:
                self._staging.clear()
            staging = self._staging[key] = torch.empty(
                array.shape, dtype=from_numpy(array[:0]).dtype, pin_memory=True
            )
        np.copyto(staging.numpy(), array)
        return staging.to(self.device, non_blocking=True)


# -- choosing the path -------------------------------------------------------------------------


def build_fast_path(
    pipeline: PredictionPipeline, descr: v0_5.ModelDescr, weight_format: str, device: str
) -> FastPath:
    """The fast path of a loaded pipeline (not yet checked against it).

    Raises:
        Unsupported: something in the model has no fast form; the message says what.
    """
    if getattr(pipeline, "_preceding_prediction_pipelines", None):
        raise Unsupported("the model takes the outputs of other models")
    if any(t.optional for t in descr.inputs):
        raise Unsupported("the model has optional inputs")
    network = network_for(pipeline, weight_format, device)
    torch_device = getattr(network, "device", torch.device("cpu"))
    if torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # frames repeat shapes: autotune once per shape
    return FastPath(
        processing_for(descr, torch_device),
        network,
        torch_device,
        [str(t.id) for t in descr.inputs],
        [str(t.id) for t in descr.outputs],
    )


def choose_serving_path(
    pipeline: PredictionPipeline,
    descr: v0_5.ModelDescr,
    weight_format: str,
    device: str,
    *,
    enabled: bool = True,
) -> tuple[FastPath | None, ServingPath]:
    """Build the fast path and check it against bioimageio.core on the package's test inputs.

    Returns the fast path when it may serve the model (None otherwise) and the verdict.
    """
    if not enabled:
        return None, ServingPath("reference", "the fast path is switched off (fast_path setting)")
    try:
        fast = build_fast_path(pipeline, descr, weight_format, device)
    except Unsupported as e:
        return None, ServingPath("reference", f"no fast path: {e}")
    except Exception as e:  # a fast path that cannot be built leaves the model to the reference
        logger.warning("building the fast path of %s failed", descr.name, exc_info=True)
        return None, ServingPath(
            "reference", f"building the fast path failed: {type(e).__name__}: {e}"
        )
    start = time.perf_counter()
    try:
        verdict = _verify(fast, pipeline, descr, weight_format)
    except _ReferenceFailed as e:
        return None, ServingPath(
            "reference", f"bioimageio.core failed on the package's test inputs: {e}"
        )
    except Exception as e:  # any failure of the fast path sends the model to the reference
        logger.warning("fast path of %s failed its check: %s", descr.name, e, exc_info=True)
        return None, ServingPath(
            "reference",
            f"the fast path failed on the package's test inputs: {type(e).__name__}: {e}",
        )
    logger.info(
        "%s (%s, %s): %s path, %s (checked in %.2f s)",
        descr.name,
        weight_format,
        device,
        verdict.name,
        verdict.reason,
        time.perf_counter() - start,
    )
    if verdict.name != "fast":
        return None, verdict
    if fast.device.type == "cuda":  # quick there; on a CPU, measured when first asked for
        for precision in fast.precisions:
            try:
                fast.measure_precision(precision)
            except Exception as e:  # noqa: BLE001 - a precision that fails is not offered
                logger.info("%s precision failed: %s: %s", precision, type(e).__name__, e)
        fast._check = None  # every precision is measured: the test data can go
    return fast, verdict


class _ReferenceFailed(Exception):
    pass


def _verify(
    fast: FastPath, pipeline: PredictionPipeline, descr: v0_5.ModelDescr, weight_format: str
) -> ServingPath:
    from bioimageio.core.digest_spec import get_test_input_sample

    sample = get_test_input_sample(descr)
    inputs = {str(m): t.data.to_numpy() for m, t in sample.members.items()}
    dims = {str(m): tuple(str(d) for d in t.dims) for m, t in sample.members.items()}
    arrays = map_inputs(descr, inputs, dims, nan_policy="allow")
    inputs = {str(k): v for k, v in arrays.items()}
    actual = fast.predict(inputs, nan_possible=True)
    if fast.precisions:  # kept to measure reduced precision on demand
        fast._check = (inputs, actual)
    try:
        reference = pipeline.predict_sample_without_blocking(
            as_sample(descr, arrays), skip_input_padding=True, skip_output_cropping=True
        )
    except Exception as e:
        raise _ReferenceFailed(f"{type(e).__name__}: {e}") from e
    expected = output_arrays(descr, reference)
    worst = 0.0
    for output_id, want in expected.items():
        got = actual.get(output_id)
        if got is None:
            return ServingPath("reference", f"the fast path gave no output {output_id!r}")
        if got.shape != want.shape or got.dtype != want.dtype:
            return ServingPath(
                "reference",
                f"output {output_id!r}: the fast path gave {got.dtype}{list(got.shape)}, "
                + f"bioimageio.core {want.dtype}{list(want.shape)}",
            )
        rtol, atol, ppm = tolerance(descr, weight_format, output_id)
        error, mismatched_ppm = _deviation(got, want, rtol, atol)
        worst = max(worst, error)
        if mismatched_ppm > ppm:
            return ServingPath(
                "reference",
                f"output {output_id!r} deviates from bioimageio.core on the test inputs: "
                + f"{mismatched_ppm:.0f} ppm of elements outside rtol {rtol:g} / atol {atol:g} "
                + f"(allowed {ppm:g} ppm), max |difference| {error:.2e}",
                error,
            )
    return ServingPath(
        "fast",
        f"matches bioimageio.core on the package's test inputs: max |difference| {worst:.2e}",
        worst,
        precision_errors=fast.precision_errors,
    )


def _deviation(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> tuple[float, float]:
    """The largest absolute difference and the mismatched elements per million."""
    if got.size == 0:
        return 0.0, 0.0
    a, b = got.astype(np.float64), want.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.abs(a - b))
    diff = np.where(np.isnan(diff), np.inf, diff)
    mismatched = diff > atol + rtol * np.abs(np.nan_to_num(b))
    return float(diff.max()), float(mismatched.sum() / diff.size * 1e6)


def tolerance(
    descr: v0_5.ModelDescr, weight_format: str, output_id: str
) -> tuple[float, float, float]:
    """(relative, absolute, mismatched elements per million) for one output, as
    ``bioimageio.core.test_model`` reads them from the description."""
    applicable = v0_5.ReproducibilityTolerance()
    legacy = (descr.config.bioimageio.model_extra or {}).get("test_kwargs", {})
    for fmt, kwargs in legacy.items():
        if fmt == weight_format:
            applicable = v0_5.ReproducibilityTolerance(
                relative_tolerance=kwargs.get("relative_tolerance", 1e-3),
                absolute_tolerance=kwargs.get("absolute_tolerance", 1e-3),
            )
            break
    for candidate in descr.config.bioimageio.reproducibility_tolerance:
        if (not candidate.weights_formats or weight_format in candidate.weights_formats) and (
            not candidate.output_ids or output_id in candidate.output_ids
        ):
            applicable = candidate
            break
    return (
        float(applicable.relative_tolerance),
        float(applicable.absolute_tolerance),
        float(applicable.mismatched_elements_per_million),
    )


def _cast(array: np.ndarray, dtype: str | None) -> np.ndarray:
    return array if dtype is None or array.dtype == dtype else array.astype(dtype)
