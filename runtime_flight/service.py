"""The runtime's logic layer as the Flight server sees it: predictions, frames, load, unload,
model tests and state. Transport-free: protobuf commands in, numpy and domain types out."""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelrunner import errors, types
from modelrunner.converters import from_pb_sample_statistics
from modelrunner.metrics import WARM_LOOKUPS
from modelrunner.settings import Settings
from modelrunner.v1 import runtime_pb2

from . import devices, weight_formats
from .model_tests import run_model_test
from .options import PredictOptions
from .pipelines import PipelinePool, WarmPipeline
from .warm_pipeline import now

logger = logging.getLogger(__name__)

_NAN_POLICIES = {
    runtime_pb2.NAN_POLICY_UNSPECIFIED: "reject",
    runtime_pb2.NAN_POLICY_REJECT: "reject",
    runtime_pb2.NAN_POLICY_ALLOW: "allow",
}
GPU_STREAM_BATCH = 8
"""Frames a stream on a GPU stacks at most, unless the client says otherwise."""
_FRAMEWORKS = (
    "torch",
    "onnxruntime",
    "tensorflow-cpu",
    "tensorflow",
    "keras",
    "careamics",
    "cellpose",
)


@dataclass(frozen=True)
class Outputs:
    """A prediction's outputs, with what the wire needs to describe them."""

    arrays: dict[str, np.ndarray]
    dim_names: dict[str, tuple[str, ...]]
    weight_format: str
    device: str
    serving_path: str = "reference"
    """"fast" or "reference": which path computed them (see :mod:`.fast_path`)."""


@dataclass
class StreamedOutputs:
    """A prediction's outputs still being computed: their shapes and dtypes are known, and
    ``bands`` yields, for each output, its next rows (C order) as the tiles finish. The pipeline
    stays lent and locked to this prediction until ``bands`` is exhausted or closed."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]
    dim_names: dict[str, tuple[str, ...]]
    weight_format: str
    device: str
    bands: LeasedBands
    serving_path: str = "reference"
    """Tiled predictions run through bioimageio.core's blockwise pipeline."""

    def close(self) -> None:
        self.bands.close()


class RuntimeService:
    def __init__(self, settings: Settings, package_dir: Callable[[str], Path]) -> None:
        self.settings = settings
        self._package_dir = package_dir
        self.pool = PipelinePool.from_settings(settings, package_dir)
        self._resolve: Callable[[str], str] = lambda model_id: model_id
        self._forget: Callable[[str, bool], None] = lambda model_id, delete_copy: None
        self._on_change: Callable[[], None] = lambda: None
        self.runtime_id = ""
        self.flight_uri = ""

    def set_identity(self, *, runtime_id: str, flight_uri: str) -> None:
        self.runtime_id, self.flight_uri = runtime_id, flight_uri

    def set_resolver(
        self, resolve: Callable[[str], str], forget: Callable[[str, bool], None] | None = None
    ) -> None:
        """How to turn a prefix or bioimage.io id into a full model id (the control service),
        and how to forget a removed model's package (``PackageLocator.forget``)."""
        self._resolve = resolve
        if forget is not None:
            self._forget = forget

    def resolve(self, model_ref: str) -> str:
        """The full id of a model reference, as the runtime resolves it (a warm full id needs no
        lookup)."""
        return model_ref if self.pool.has_warm(model_ref) else self._resolve(model_ref)

    def forget_package(self, model_id: str, *, delete_copy: bool = True) -> None:
        """The model was removed: its id is looked up afresh from now on (the control service
        refuses it), and (``delete_copy``) this runtime's copy of its package goes."""
        self._forget(model_id, delete_copy)

    def changed(self) -> None:
        """Tell the control service at once what is loaded now (a heartbeat)."""
        self._on_change()

    def set_on_change(self, callback: Callable[[], None]) -> None:
        """Called after a model is loaded or unloaded (the registration sends a heartbeat)."""
        self._on_change = callback

    def close(self) -> None:
        self.pool.close()

    # -- predictions ---------------------------------------------------------------------------

    def _options(self, command: runtime_pb2.PredictCommand) -> PredictOptions:
        return PredictOptions(
            blocksize=command.blocksize if command.HasField("blocksize") else None,
            nan_policy=_NAN_POLICIES.get(command.nan_policy, "reject"),  # type: ignore[arg-type]
            skip_preprocessing=command.skip_preprocessing,
            skip_postprocessing=command.skip_postprocessing,
            reference_path=command.reference_path,
            precision=command.precision,
            keep_shape=command.keep_shape,
            block_statistics=(
                from_pb_sample_statistics(command.block_of_sample)
                if command.HasField("block_of_sample")
                else None
            ),
            max_batch_size=max(0, command.max_batch_size),
            max_tile_input_bytes=self.settings.max_tile_input_bytes,
            stream_tiles_min_bytes=self.settings.stream_tiles_min_bytes,
        )

    def predict(
        self,
        command: runtime_pb2.PredictCommand,
        arrays: dict[str, np.ndarray],
        dims: Mapping[str, tuple[str, ...]],
        *,
        progress: Callable[[types.Progress], None] | None = None,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Outputs | StreamedOutputs:
        """Predict one sample. A large tiled prediction returns :class:`StreamedOutputs` (see
        ``stream_tiles_min_bytes``): read its bands to the end or close it."""
        from .inference import start_prediction

        options = self._options(command)

        def blocks_done(done: int, total: int) -> None:
            if cancelled():
                raise errors.CancelledError("the client cancelled the prediction")
            if progress is not None:
                progress(types.Progress(stage="predict", done=done, total=total, unit="blocks"))

        with ExitStack() as lease:
            warm = lease.enter_context(self._use(command))
            lease.enter_context(_predicting(warm))
            inputs, dim_names = _unnamed_to_single(warm, arrays, dims)
            result = start_prediction(
                warm.pipeline,
                inputs,
                dim_names,
                options,
                progress=blocks_done,
                cancelled=cancelled,
            )
            if isinstance(result, dict):
                return _outputs(warm, result)
            return StreamedOutputs(
                shapes=result.shapes,
                dtypes=result.dtypes,
                dim_names=_dim_names(warm, result.shapes),
                weight_format=warm.weight_format,
                device=warm.device,
                bands=LeasedBands(result.bands, lease.pop_all()),
            )
        raise AssertionError("unreachable")  # for mypy: ExitStack may swallow exceptions

    def predict_whole(
        self,
        command: runtime_pb2.PredictCommand,
        arrays: dict[str, np.ndarray],
        dims: Mapping[str, tuple[str, ...]],
        *,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Outputs:
        """One sample's outputs, whole: what a session answers over Flight, for a caller in this
        process (the control service's Open Inference endpoint, with its embedded runtime).
        The runtime's sample limit holds as it does for a Flight exchange's schema."""
        nbytes = sum(a.nbytes for a in arrays.values())
        if nbytes > self.settings.max_sample_bytes:
            raise errors.InvalidTensorError(
                f"the sample takes {nbytes} bytes, more than this runtime's limit of "
                f"{self.settings.max_sample_bytes} bytes (setting max_sample_bytes); predict it "
                "in smaller parts",
                details={"got": nbytes, "expected": f"at most {self.settings.max_sample_bytes}"},
            )
        outputs = self.predict(command, arrays, dims, cancelled=cancelled)
        if isinstance(outputs, StreamedOutputs):
            return whole_outputs(outputs, cancelled)
        return outputs

    def predict_frames(
        self,
        command: runtime_pb2.PredictCommand,
        frames: Sequence[dict[str, np.ndarray]],
        dims: Mapping[str, tuple[str, ...]],
        *,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> list[Outputs | errors.ModelRunnerError]:
        """Several frames in one call (stacked on the batch axis when the model allows); a frame
        that fails gives its error in its place."""
        options = self._options(command)
        try:
            if options.keep_shape or options.block_statistics is not None:
                raise errors.InvalidArgumentError(
                    f"{'keep_shape' if options.keep_shape else 'block_of_sample'} is for single "
                    "predictions and sessions, not frame streams"
                )
            with self._use(command) as warm:
                mapped = [_unnamed_to_single(warm, f, dims) for f in frames]
                dim_names = mapped[0][1] if mapped else None
                results = warm.predict_batch(
                    [m[0] for m in mapped],
                    dim_names,
                    options,
                    return_errors=True,
                    cancelled=cancelled,
                )
                return [
                    r if isinstance(r, errors.ModelRunnerError) else _outputs(warm, r)
                    for r in results
                ]
        except errors.ModelRunnerError as e:
            return [e] * len(frames)

    def stream_batch_limit(self, command: runtime_pb2.PredictCommand) -> int:
        """The most waiting frames a stream stacks: the command's, or when it leaves that to the
        runtime, :data:`GPU_STREAM_BATCH` on a GPU and 1 on a CPU (measured there: a tiny
        convolution streamed 512x512 frames at 234 frames/s one by one, 126 stacked by 8)."""
        if command.max_batch_size > 0:
            return command.max_batch_size
        model_id = command.model_id
        if not self.pool.has_warm(model_id):
            model_id = self._resolve(model_id)
        _, _, device = self.pool.resolve(
            model_id, command.weight_format or None, command.device or None
        )
        return GPU_STREAM_BATCH if devices.is_cuda(device) else 1

    @contextmanager
    def _use(self, command: runtime_pb2.PredictCommand) -> Iterator[WarmPipeline]:
        model_id = command.model_id
        if not self.pool.has_warm(model_id):  # a warm full id needs no lookup
            model_id = self._resolve(model_id)
        loads = self.pool.loads
        with self.pool.use(model_id, command.weight_format or None, command.device or None) as warm:
            if self.pool.loads != loads:
                WARM_LOOKUPS.labels("miss").inc()
                self._on_change()
            else:
                WARM_LOOKUPS.labels("hit").inc()
            yield warm

    # -- actions -------------------------------------------------------------------------------

    def load(self, model_id: str, weight_format: str, device: str) -> types.LoadInfo:
        info = self.pool.load(self._resolve(model_id), weight_format or None, device or None)
        self._on_change()
        return info

    def unload(self, model_id: str, weight_format: str, device: str) -> int:
        count = self.pool.unload(self._resolve(model_id), weight_format or None, device or None)
        if count:
            self._on_change()
        return count

    def test(self, model_id: str, weight_format: str, device: str) -> types.ValidationReport:
        full_id = self._resolve(model_id)
        return run_model_test(
            self._package_dir(full_id),
            weight_format=weight_format or None,
            device=device or None,
            default_device=self.settings.device,
            model_id=full_id,
        )

    def info(self) -> types.RuntimeInfo:
        return types.RuntimeInfo(
            runtime_id=self.runtime_id,
            flight_uri=self.flight_uri,
            devices=devices.device_infos(),
            loaded_models=self.pool.loaded(),
            package_versions=_versions(),
            weight_formats=tuple(str(f) for f in weight_formats.runnable_formats()),
            available=True,
            memory_budget_bytes=self.pool.memory_budget_bytes,
        )


def whole_outputs(outputs: StreamedOutputs, cancelled: Callable[[], bool]) -> Outputs:
    """Read a streamed prediction's bands into whole arrays. Whole answers are for samples of a
    few MiB (sessions, Open Inference requests), which the service rarely streams
    (``stream_tiles_min_bytes``), so holding the whole output costs no more than an ordinary
    prediction does."""
    with closing(outputs):
        arrays = {
            name: np.empty(shape, dtype=outputs.dtypes[name])
            for name, shape in outputs.shapes.items()
        }
        filled = dict.fromkeys(arrays, 0)
        for bands in outputs.bands:
            if cancelled():
                raise errors.CancelledError("the client cancelled the prediction")
            for name, band in bands.items():
                flat = arrays[name].reshape(-1)
                flat[filled[name] : filled[name] + band.size] = band.reshape(-1)
                filled[name] += band.size
    if any(filled[name] != a.size for name, a in arrays.items()):
        raise errors.InternalError("the tiled prediction ended before its outputs were whole")
    return Outputs(
        arrays,
        outputs.dim_names,
        outputs.weight_format,
        outputs.device,
        outputs.serving_path,
    )


def _unnamed_to_single(
    warm: WarmPipeline, arrays: dict[str, np.ndarray], dims: Mapping[str, tuple[str, ...]]
) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, ...]] | None]:
    """A single column named "" is the model's only input (clients need not know its id)."""
    if "" not in arrays:
        return arrays, dict(dims) or None
    inputs = warm.descr.inputs
    if len(arrays) > 1 or len(inputs) != 1:
        raise errors.InvalidTensorError(
            f"an unnamed tensor only works for single-input models; this model takes "
            f"{[str(t.id) for t in inputs]}: name each tensor by its input id",
            details={"expected": [str(t.id) for t in inputs], "got": sorted(arrays)},
        )
    name = str(inputs[0].id)
    renamed_dims = {name: dims[""]} if "" in dims else None
    return {name: arrays[""]}, renamed_dims


def _outputs(warm: WarmPipeline, arrays: dict[str, np.ndarray]) -> Outputs:
    return Outputs(
        arrays=arrays,
        dim_names=_dim_names(warm, {k: a.shape for k, a in arrays.items()}),
        weight_format=warm.weight_format,
        device=warm.device,
        serving_path=getattr(arrays, "path", "reference"),
    )


def _dim_names(
    warm: WarmPipeline, shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, tuple[str, ...]]:
    axes = {str(t.id): tuple(str(a.id) for a in t.axes) for t in warm.descr.outputs}
    return {k: axes[k] for k, s in shapes.items() if k in axes and len(axes[k]) == len(s)}


@contextmanager
def _predicting(warm: WarmPipeline) -> Iterator[None]:
    """What :meth:`WarmPipeline.predict` does around a prediction, for one that outlives the
    call that starts it (a streamed one): hold the pipeline's lock, count the request."""
    with warm.lock:
        warm.requests += 1
        try:
            yield
        finally:
            warm.last_used_at = now()


class LeasedBands:
    """An iterator over a streamed prediction's bands that gives the pipeline back when it is
    exhausted, fails or is closed (closing also works before the first band, unlike closing a
    generator that never started)."""

    def __init__(
        self, bands: Generator[dict[str, np.ndarray], None, None], lease: ExitStack
    ) -> None:
        self._bands = bands
        self._lease: ExitStack | None = lease

    def __iter__(self) -> LeasedBands:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            return next(self._bands)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        lease, self._lease = self._lease, None
        if lease is None:
            return
        try:
            self._bands.close()
        finally:
            lease.close()


def _versions() -> dict[str, str]:
    versions = {}
    for name in ("modelrunner", "bioimageio.core", "bioimageio.spec", "pyarrow", *_FRAMEWORKS):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
