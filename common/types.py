"""Typed domain objects shared by the servers' logic layers and the client.

Protobuf messages stay at the edges: :mod:`modelrunner.converters` turns them into these.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

AxisType = Literal["batch", "channel", "index", "time", "space"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ParameterizedSize(_Frozen):
    """Valid sizes are ``min + n * step`` for n = 0, 1, 2, ..."""

    min: int
    step: int

    def nearest_valid(self, size: int) -> int:
        """The smallest valid size that is at least ``size``."""
        if size <= self.min or self.step == 0:
            return self.min
        n = -(-(size - self.min) // self.step)
        return self.min + n * self.step


class SizeReference(_Frozen):
    """The size of ``tensor_id``'s axis ``axis_id`` (scaled by the axes' scale ratio) + offset."""

    tensor_id: str
    axis_id: str
    offset: int = 0


class DataDependentSize(_Frozen):
    """Known only after inference."""

    min: int = 1
    max: int | None = None


AxisSize = int | ParameterizedSize | SizeReference | DataDependentSize


class AxisSpec(_Frozen):
    id: str
    type: AxisType
    size: AxisSize | None = None
    """``None`` for a batch axis of any size."""
    halo: int = 0
    scale: float = 1.0
    unit: str = ""
    channel_names: tuple[str, ...] = ()
    concatenable: bool = False


class ProcessingStep(_Frozen):
    id: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


class TensorSpec(_Frozen):
    id: str
    description: str = ""
    axes: tuple[AxisSpec, ...]
    dtype: str = ""
    preprocessing: tuple[ProcessingStep, ...] = ()
    postprocessing: tuple[ProcessingStep, ...] = ()
    optional: bool = False
    test_shape: tuple[int, ...] = ()

    @property
    def axis_ids(self) -> tuple[str, ...]:
        return tuple(a.id for a in self.axes)


class Author(_Frozen):
    name: str
    affiliation: str = ""
    email: str = ""
    github_user: str = ""
    orcid: str = ""


class ModelInfo(_Frozen):
    """A model in the registry. ``id`` is the sha256 of its content."""

    id: str
    name: str
    description: str = ""
    authors: tuple[Author, ...] = ()
    tags: tuple[str, ...] = ()
    license: str = ""
    format_version: str = ""
    bioimageio_id: str = ""
    version: str = ""
    weight_formats: tuple[str, ...] = ()
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    source: str = ""
    size_bytes: int = 0
    added_at: datetime | None = None
    last_used_at: datetime | None = None
    rdf: dict[str, Any] | None = None
    """The full description; set by ``describe`` only."""
    loaded: tuple[LoadedModel, ...] = ()
    """Where the model is loaded now, as its runtimes last reported it, with the path that
    serves it there (fast or reference, and why); set by ``describe`` only."""
    workspaces: tuple[str, ...] = ()
    """The workspaces the model was added in (``default`` without authentication)."""
    published: bool = False
    """Visible in every workspace."""

    def input(self, tensor_id: str) -> TensorSpec:
        return _by_id(self.inputs, tensor_id, "input")

    def output(self, tensor_id: str) -> TensorSpec:
        return _by_id(self.outputs, tensor_id, "output")


def _by_id(specs: tuple[TensorSpec, ...], tensor_id: str, kind: str) -> TensorSpec:
    for s in specs:
        if s.id == tensor_id:
            return s
    raise KeyError(f"no {kind} tensor {tensor_id!r}; the model has {[s.id for s in specs]}")


class ValidationEntry(_Frozen):
    loc: tuple[str, ...] = ()
    msg: str
    type: str = ""
    severity: int = 0
    traceback: str = ""


class ValidationDetail(_Frozen):
    name: str
    status: Literal["passed", "failed"]
    loc: tuple[str, ...] = ()
    errors: tuple[ValidationEntry, ...] = ()
    warnings: tuple[ValidationEntry, ...] = ()


class ValidationReport(_Frozen):
    """Outcome of a validation or a model test: data, also when the model fails."""

    status: Literal["passed", "valid-format", "failed"]
    name: str = ""
    source: str = ""
    type: str = ""
    format_version: str = ""
    id: str = ""
    details: tuple[ValidationDetail, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    markdown: str = ""

    @property
    def passed(self) -> bool:
        """True unless a check failed (a format-only validation counts as passed)."""
        return self.status != "failed"

    @property
    def errors(self) -> tuple[ValidationEntry, ...]:
        return tuple(e for d in self.details for e in d.errors)

    @property
    def warnings(self) -> tuple[ValidationEntry, ...]:
        return tuple(w for d in self.details for w in d.warnings)


class DeviceInfo(_Frozen):
    name: str
    description: str = ""
    memory_total_bytes: int = 0
    memory_free_bytes: int = 0


class LoadedModel(_Frozen):
    model_id: str
    weight_format: str
    device: str
    memory_bytes: int = 0
    last_used_at: datetime | None = None
    requests: int = 0
    serving_path: str = ""
    """"fast" (processing fused with the network on the device, checked against
    bioimageio.core on the package's test inputs at load) or "reference" (bioimageio.core's
    pipeline as it is)."""
    serving_path_reason: str = ""
    """Why that path serves the model."""
    precision_max_abs_error: dict[str, float] = Field(default_factory=dict)
    """For each reduced precision the fast path offers (``predict(..., precision=...)``), its
    largest deviation from full precision on the package's test inputs."""


class RuntimeInfo(_Frozen):
    runtime_id: str
    flight_uri: str
    devices: tuple[DeviceInfo, ...] = ()
    loaded_models: tuple[LoadedModel, ...] = ()
    package_versions: dict[str, str] = Field(default_factory=dict)
    weight_formats: tuple[str, ...] = ()
    available: bool = True
    unavailable_reason: str = ""
    last_seen_at: datetime | None = None
    memory_budget_bytes: int = 0
    queue_depth: int = 0
    """Predictions, streams and sessions in progress when it last reported."""
    metrics_uri: str = ""
    """Where its Prometheus metrics are scraped ("" when it publishes none)."""


class CacheInfo(_Frozen):
    directory: str
    used_bytes: int
    budget_bytes: int
    models: int


class ServerInfo(_Frozen):
    modelrunner_version: str
    package_versions: dict[str, str] = Field(default_factory=dict)
    python_version: str = ""
    platform: str = ""
    cache: CacheInfo | None = None
    runtimes: tuple[RuntimeInfo, ...] = ()
    metrics_uri: str = ""
    """Where the control service's Prometheus metrics are scraped ("" when off)."""


class Progress(_Frozen):
    stage: str
    done: int = 0
    total: int = 0
    unit: str = "bytes"
    bytes_done: int = 0
    """Where ``unit`` is not bytes: the bytes the units done so far held (for a rate in MB/s)."""


ProgressCallback = Callable[[Progress], None]
"""What long work calls with each progress event (adds, uploads, predictions)."""


class SampleStatistic(_Frozen):
    """A statistic of one input tensor over a whole sample, as bioimageio.core's sample measures
    define it: given with each block of a sample predicted block by block
    (``PredictCommand.block_of_sample``), so the blocks are normalised like the whole."""

    tensor_id: str
    name: Literal["mean", "var", "std", "quantile"]
    axes: tuple[str, ...] = ()
    """The axes it reduces, as the model's processing names them; ``()``: all of them."""
    q: float = 0.0
    """``quantile``: which one, in [0, 1]."""
    method: Literal["linear", "inverted_cdf"] = "linear"
    """``quantile``: numpy's method (``clip`` with percentiles uses ``inverted_cdf``)."""
    dims: tuple[str, ...] = ()
    """The axes of ``values`` (those not reduced; size-1 ones may be left out)."""
    shape: tuple[int, ...] = ()
    values: tuple[float, ...] = ()
    """C order; one value when every axis is reduced."""


class LoadInfo(_Frozen):
    """What ``load`` reports: the warm pipeline and how long loading took."""

    model: LoadedModel
    load_seconds: float


class RemovedModel(_Frozen):
    """What ``remove_model`` reports."""

    model_id: str
    """The model's full id."""
    freed_bytes: int = 0
    """Cache space freed; 0 when the model stays for other workspaces."""
    calls_in_flight: int = 0
    """Predictions the runtimes were running on the model when it was removed: the removal
    waited for them to finish (open sessions and streams on it end with NOT_FOUND)."""


class ModelSourceSpec(_Frozen):
    """Where to add a model from, as the server sees it."""

    kind: Literal["path", "url", "bioimageio_id", "upload_id"]
    value: str

    def __str__(self) -> str:
        return self.value if self.kind != "upload_id" else f"upload:{self.value}"
