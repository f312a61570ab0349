"""The runtime's data plane: predictions, frames, load, unload, model tests and state, over
domain types (:class:`~modelrunner.predict_request.PredictRequest` in, :mod:`.outputs` out).

Transport-free: the Flight edge (:mod:`.server` and its exchanges), the control service's Open
Inference endpoint calling its embedded runtime in process, and tests all call it alike.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modelrunner import errors, types
from modelrunner.metrics import WARM_LOOKUPS
from modelrunner.predict_request import PredictRequest
from modelrunner.settings import Settings

from . import devices, weight_formats
from .limits import RuntimeLimits
from .model_tests import run_model_test
from .outputs import Outputs, StreamedOutputs, whole_outputs
from .pipelines import PipelinePool, WarmPipeline

if TYPE_CHECKING:
    from .streamed_tiling import Cancelled

logger = logging.getLogger(__name__)

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
_LOOKUP_HITS = WARM_LOOKUPS.labels("hit")
_LOOKUP_MISSES = WARM_LOOKUPS.labels("miss")


def _never() -> bool:
    return False


class RuntimeService:
    def __init__(
        self,
        settings: Settings,
        package_dir: Callable[[str], Path],
        *,
        resolve: Callable[[str], str] = lambda model_id: model_id,
        forget: Callable[[str, bool], None] = lambda model_id, delete_copy: None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        """``package_dir``: a full model id's unpacked package folder; ``resolve``: how to turn a
        prefix or bioimage.io id into a full model id (the control service); ``forget``: how to
        forget a removed model's package (``PackageLocator.forget``); ``on_change``: called
        after a model is loaded or unloaded (the registration sends a heartbeat)."""
        self.settings = settings
        self._package_dir = package_dir
        self.pool = PipelinePool.from_settings(settings, package_dir)
        self._resolve = resolve
        self._forget = forget
        self._on_change = on_change
        self.runtime_id = ""
        self.flight_uri = ""

    def set_identity(self, *, runtime_id: str, flight_uri: str) -> None:
        """Name this runtime once its Flight server listens: the name and the address hold the
        port, which the server has only once it is built around this service."""
        self.runtime_id, self.flight_uri = runtime_id, flight_uri

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

    def close(self) -> None:
        self.pool.close()

    @property
    def limits(self) -> RuntimeLimits:
        """What one prediction may spend: the settings' limits, as they are now."""
        s = self.settings
        limits = self.pool.limits
        if (
            limits.max_sample_bytes,
            limits.max_tile_input_bytes,
            limits.stream_tiles_min_bytes,
        ) != (
            s.max_sample_bytes,
            s.max_tile_input_bytes,
            s.stream_tiles_min_bytes,
        ):
            limits = self.pool.limits = RuntimeLimits.from_settings(s)
        return limits

    # -- predictions ---------------------------------------------------------------------------

    def predict(
        self,
        request: PredictRequest,
        *,
        progress: Callable[[types.Progress], None] | None = None,
        cancelled: Cancelled = _never,
    ) -> Outputs | StreamedOutputs:
        """Predict the request's sample. A large tiled prediction returns
        :class:`~.outputs.StreamedOutputs` (see ``stream_tiles_min_bytes``): read its bands to
        the end or close it."""

        def blocks_done(done: int, total: int) -> None:
            if cancelled():
                raise errors.CancelledError("the client cancelled the prediction")
            if progress is not None:
                progress(types.Progress(stage="predict", done=done, total=total, unit="blocks"))

        warm = self._lend(request)
        try:
            result = warm.start(
                request, progress=blocks_done, cancelled=cancelled, limits=self.limits
            )
        except BaseException:
            self.pool.give_back(warm)
            raise
        if isinstance(result, StreamedOutputs):
            # the pool's lease goes with the bands: given back when they are read or closed
            lease = ExitStack()
            lease.callback(self.pool.give_back, warm)
            result.bands.hold(lease)
        else:
            self.pool.give_back(warm)
        return result

    def predict_whole(self, request: PredictRequest, *, cancelled: Cancelled = _never) -> Outputs:
        """One sample's outputs, whole: what a session answers, and what a caller in this
        process gets (the control service's Open Inference endpoint, with its embedded
        runtime). The runtime's sample limit holds as it does for a Flight exchange's schema."""
        self.limits.check_sample_bytes(sum(a.nbytes for a in request.inputs.values()))
        outputs = self.predict(request, cancelled=cancelled)
        if isinstance(outputs, StreamedOutputs):
            return whole_outputs(outputs, cancelled)
        return outputs

    def predict_frames(
        self,
        request: PredictRequest,
        frames: Sequence[dict[str, np.ndarray]],
        *,
        cancelled: Cancelled = _never,
    ) -> list[Outputs | errors.ModelRunnerError]:
        """Several frames with the request's options and dim names, in one call (stacked on the
        batch axis when the model allows); a frame that fails gives its error in its place."""
        try:
            if request.as_sent:
                raise errors.InvalidArgumentError(
                    f"{request.as_sent_option} is for single predictions and sessions, not "
                    "frame streams"
                )
            with self._use(request) as warm:
                return warm.predict_batch(
                    request, frames, return_errors=True, cancelled=cancelled, limits=self.limits
                )
        except errors.ModelRunnerError as e:
            return [e] * len(frames)

    def stream_batch_limit(self, request: PredictRequest) -> int:
        """The most waiting frames a stream stacks: the request's, or when it leaves that to
        the runtime, :data:`GPU_STREAM_BATCH` on a GPU and 1 on a CPU (measured there: a tiny
        convolution streamed 512x512 frames at 234 frames/s one by one, 126 stacked by 8)."""
        if request.max_batch_size > 0:
            return request.max_batch_size
        model_id = self.resolve(request.model_id)
        _, _, device = self.pool.resolve(
            model_id, request.weight_format or None, request.device or None
        )
        return GPU_STREAM_BATCH if devices.is_cuda(device) else 1

    @contextmanager
    def _use(self, request: PredictRequest) -> Iterator[WarmPipeline]:
        warm = self._lend(request)
        try:
            yield warm
        finally:
            self.pool.give_back(warm)

    def _lend(self, request: PredictRequest) -> WarmPipeline:
        """The request's warm pipeline, lent by the pool (give it back)."""
        model_id = self.resolve(request.model_id)
        loads = self.pool.loads
        warm = self.pool.lend(model_id, request.weight_format or None, request.device or None)
        if self.pool.loads != loads:
            _LOOKUP_MISSES.inc()
            self._on_change()
        else:
            _LOOKUP_HITS.inc()
        return warm

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


def _versions() -> dict[str, str]:
    versions = {}
    for name in ("modelrunner", "bioimageio.core", "bioimageio.spec", "pyarrow", *_FRAMEWORKS):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
