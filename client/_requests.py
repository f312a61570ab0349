"""What a prediction call of the Python client takes, and the one place it becomes a
:class:`~modelrunner.predict_request.PredictRequest` (httpx's ``build_request``): the sync and
the async client share both."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypedDict

from typing_extensions import Unpack

from modelrunner.predict_request import InputPadding, NanPolicy, PredictRequest

from ._inputs import Inputs, normalise_inputs

LowPrecision = Literal["float16", "bfloat16"]


class StreamKeywords(TypedDict, total=False):
    """The options of a frame stream (``predict_stream``): every frame's."""

    weight_format: str | None
    """A weight format of the model (None: the first one the runtime can run)."""
    device: str | None
    """"cpu", "cuda" or "cuda:N" (None: the runtime's default)."""
    max_batch_size: int
    """The most waiting frames the runtime stacks along the model's batch axis (0: up to 8 on
    a GPU, one at a time on a CPU)."""
    nan_policy: NanPolicy
    """"reject" (default): inputs with NaN or infinite values are refused; "allow": passed on."""
    reference_path: bool
    """Run bioimageio.core's own pipeline even where the runtime's checked fast path serves the
    model."""
    precision: LowPrecision | None
    """"float16" or "bfloat16": the network in reduced precision on the fast path (PyTorch and
    TorchScript weights; the error it costs is in ``describe(model_id).loaded``)."""


class PredictKeywords(TypedDict, total=False):
    """The options of one prediction (``predict``); see
    :class:`~modelrunner.predict_request.PredictRequest` for each."""

    weight_format: str | None
    device: str | None
    blocksize: int | None
    """bioimageio.core's blocksize parameter for tiled prediction."""
    nan_policy: NanPolicy
    skip_preprocessing: bool
    skip_postprocessing: bool
    reference_path: bool
    precision: LowPrecision | None
    keep_shape: bool
    """bioimageio.core's own call on the sample exactly as sent: no padding or tiling to the
    model's sizes (what :func:`create_prediction_pipeline` sends)."""
    input_padding: InputPadding
    """"halo": what ``bioimageio.core.predict()`` does by default, padding the sample by the
    outputs' halo and cropping the outputs (the network must take the padded shape); "none"
    (default): the sample is padded only to fit the model's sizes."""


class RequestKeywords(PredictKeywords, total=False):
    """Every option a call may give: a prediction's, and a stream's ``max_batch_size``."""

    max_batch_size: int


class VolumeKeywords(TypedDict, total=False):
    """The options of a volume's prediction (``predict_volume``)."""

    axes: str | Sequence[str] | None
    """The source's axes (``"zyx"``, ``"tcyx"``) where it does not say (an array)."""
    level: int
    """The OME-Zarr pyramid level to read (default 0, full size)."""
    channel: int | None
    """One channel of the source (None: all the model takes)."""
    per_plane: bool
    """A 3-D source predicted plane by plane by a 2-D model."""
    keep_singletons: bool
    """Keep the outputs' size-1 channel axis."""
    blocksize: int | None
    """bioimageio.core's block size parameter n (None: about 4 million voxels a block)."""
    weight_format: str | None
    device: str | None
    resume: bool
    """Finish a run that stopped into the same destination: only its missing blocks."""
    workers_per_runtime: int
    """Blocks in flight on each runtime (default 2)."""
    nan_policy: NanPolicy


def build_request(
    model_id: str,
    inputs: Inputs | None,
    *,
    timeout_s: float | None,
    **options: Unpack[RequestKeywords],
) -> PredictRequest:
    """The request of a call: the inputs as named arrays (and the axis names of labelled
    ones), None options as the runtime's defaults, the options checked."""
    arrays, dims = normalise_inputs(inputs, None) if inputs is not None else ({}, {})
    given: dict[str, Any] = dict(options)
    for key in ("weight_format", "device", "precision"):
        if key in given and given[key] is None:
            given[key] = ""
    return PredictRequest(
        model_id=model_id, inputs=arrays, dim_names=dims, timeout_s=timeout_s, **given
    )
