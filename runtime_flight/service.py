"""The runtime's logic layer as the Flight server sees it: predictions, frames, load, unload,
model tests and state. Transport-free: protobuf commands in, numpy and domain types out."""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelrunner import errors, types
from modelrunner.settings import Settings
from modelrunner.v1 import runtime_pb2

from . import devices, weight_formats
from .model_tests import run_model_test
from .options import PredictOptions
from .pipelines import PipelinePool, WarmPipeline

logger = logging.getLogger(__name__)

_NAN_POLICIES = {
    runtime_pb2.NAN_POLICY_UNSPECIFIED: "reject",
    runtime_pb2.NAN_POLICY_REJECT: "reject",
    runtime_pb2.NAN_POLICY_ALLOW: "allow",
}
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


class RuntimeService:
    def __init__(self, settings: Settings, package_dir: Callable[[str], Path]) -> None:
        self.settings = settings
        self._package_dir = package_dir
        self.pool = PipelinePool.from_settings(settings, package_dir)
        self._resolve: Callable[[str], str] = lambda model_id: model_id
        self._on_change: Callable[[], None] = lambda: None
        self.runtime_id = ""
        self.flight_uri = ""

    def set_identity(self, *, runtime_id: str, flight_uri: str) -> None:
        self.runtime_id, self.flight_uri = runtime_id, flight_uri

    def set_resolver(self, resolve: Callable[[str], str]) -> None:
        """How to turn a prefix or bioimage.io id into a full model id (the control service)."""
        self._resolve = resolve

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
            max_batch_size=max(0, command.max_batch_size),
            max_tile_input_bytes=self.settings.max_tile_input_bytes,
        )

    def predict(
        self,
        command: runtime_pb2.PredictCommand,
        arrays: dict[str, np.ndarray],
        dims: Mapping[str, tuple[str, ...]],
        *,
        progress: Callable[[types.Progress], None] | None = None,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Outputs:
        options = self._options(command)

        def blocks_done(done: int, total: int) -> None:
            if cancelled():
                raise errors.CancelledError("the client cancelled the prediction")
            if progress is not None:
                progress(types.Progress(stage="predict", done=done, total=total, unit="blocks"))

        with self._use(command) as warm:
            inputs, dim_names = _unnamed_to_single(warm, arrays, dims)
            outputs = warm.predict(
                inputs, dim_names, options, progress=blocks_done, cancelled=cancelled
            )
            return _outputs(warm, outputs)

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

    @contextmanager
    def _use(self, command: runtime_pb2.PredictCommand) -> Iterator[WarmPipeline]:
        model_id = self._resolve(command.model_id)
        loads = self.pool.loads
        with self.pool.use(model_id, command.weight_format or None, command.device or None) as warm:
            if self.pool.loads != loads:
                self._on_change()
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
    axes = {str(t.id): tuple(str(a.id) for a in t.axes) for t in warm.descr.outputs}
    return Outputs(
        arrays=arrays,
        dim_names={k: axes[k] for k in arrays if k in axes and len(axes[k]) == arrays[k].ndim},
        weight_format=warm.weight_format,
        device=warm.device,
    )


def _versions() -> dict[str, str]:
    versions = {}
    for name in ("modelrunner", "bioimageio.core", "bioimageio.spec", "pyarrow", *_FRAMEWORKS):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
