"""One prediction as a typed value: :class:`PredictRequest`.

Every way into a prediction builds one, and only one, checked once where it is built: the Python
client from its keyword arguments, the runtime's Flight edge from a ``PredictCommand``
(:mod:`modelrunner.predict_command`), the Open Inference endpoint from a V2 request's
parameters. The runtime's data plane (``runtime_flight.service.RuntimeService``) takes it as it
is. A new option is a field here, its line in the command converters, and what the plane does
with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from modelrunner.errors import InvalidArgumentError

if TYPE_CHECKING:
    import numpy as np

    from modelrunner.types import SampleStatistic

NanPolicy = Literal["reject", "allow"]
"""``reject``: float inputs with NaN or infinite values are refused (InvalidTensorError);
``allow``: passed to the model."""
Precision = Literal["", "float16", "bfloat16"]
""""": the weights' own precision; "float16" or "bfloat16": the network runs in that precision on
the fast path (PyTorch and TorchScript weights)."""
InputPadding = Literal["none", "halo"]
"""``none``: the sample is padded only where fitting it to the model's sizes needs it;
``halo``: bioimageio.core.predict()'s own call, which pads by the outputs' halo (see
:attr:`PredictRequest.input_padding`)."""

NAN_POLICIES: tuple[str, ...] = get_args(NanPolicy)
PRECISIONS: tuple[str, ...] = get_args(Precision)
INPUT_PADDINGS: tuple[str, ...] = get_args(InputPadding)


@dataclass(frozen=True, kw_only=True, eq=False)
class PredictRequest:
    """A prediction: which model, the inputs and every option. Frozen, and checked when built
    (InvalidArgumentError naming the option)."""

    model_id: str
    """A model id, a unique prefix of one, or a bioimage.io id."""
    inputs: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Arrays by input id; one array under "" is the only input of a single-input model. Empty
    for a stream's request, whose frames bring their own (:meth:`with_inputs`)."""
    dim_names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Axis ids of the arrays that have them (from the wire, or labelled arrays); the others are
    taken in the model's axis order."""
    weight_format: str = ""
    """"": the first of the model's weight formats the runtime can run."""
    device: str = ""
    """"": the runtime's default ("cuda" when it has a GPU, else "cpu")."""
    blocksize: int | None = None
    """bioimageio.core's blocksize parameter ``n`` (block = min + n * step on every
    parameterized axis, capped at the image): predict tile by tile. None: the whole image when it
    fits the model and the runtime's ``max_tile_input_bytes``, else tiles the runtime chooses."""
    nan_policy: NanPolicy = "reject"
    skip_preprocessing: bool = False
    """Skip the model's preprocessing; inputs are only cast to the dtype the network takes."""
    skip_postprocessing: bool = False
    """Return the network's raw outputs."""
    reference_path: bool = False
    """Run bioimageio.core's pipeline even where the runtime's checked fast path serves the
    model."""
    precision: Precision = ""
    keep_shape: bool = False
    """bioimageio.core's own call on the sample exactly as sent: no padding, tiling or fitting to
    the model's sizes, no fast path; with ``blocksize`` n its blockwise prediction with
    ``ns=n``. With both processing steps skipped: the network alone (what a bioimageio.core
    ``RemoteModelAdapter`` asks for)."""
    input_padding: InputPadding = "none"
    """``halo``: what ``bioimageio.core.predict()`` does by default: the sample as sent, padded
    by the input halo that the outputs' halo implies (with the input's pad mode), processed,
    run, and the outputs cropped by their halo (with ``blocksize``: its blockwise prediction,
    which pads each block so). The network must take the padded shape; no fast path."""
    block_statistics: tuple[SampleStatistic, ...] | None = None
    """Block mode: the sample is one block of a larger one (a volume predicted block by block),
    predicted as sent on bioimageio.core's pipeline, its pre- and postprocessing using these
    statistics of the whole sample instead of the block's own. None: the sample is whole."""
    max_batch_size: int = 0
    """Frame streams: the most waiting frames stacked along the model's batch axis; 0: the
    runtime decides."""
    timeout_s: float | None = None
    """How long the caller waits for the outputs (None: no limit). On Flight it is the call's
    deadline; a prediction in the runtime's process stops at its next block once it passes."""

    def __post_init__(self) -> None:
        _check(self)

    @property
    def as_sent(self) -> bool:
        """Whether the sample goes to bioimageio.core's call as it is, not fitted to the model
        (``keep_shape``, ``input_padding="halo"``, or a block of a larger sample)."""
        return self.keep_shape or self.input_padding == "halo" or self.block_statistics is not None

    @property
    def as_sent_option(self) -> str:
        """The option that keeps the sample as sent, for messages ("" when none does)."""
        if self.block_statistics is not None:
            return "block_of_sample"
        if self.keep_shape:
            return "keep_shape"
        return "input_padding='halo'" if self.input_padding == "halo" else ""

    def with_inputs(
        self,
        inputs: Mapping[str, np.ndarray],
        dim_names: Mapping[str, tuple[str, ...]] | None = None,
    ) -> PredictRequest:
        """This request for other arrays (a stream's frame, a session's next sample). The
        options are checked already: nothing is checked again."""
        copy = object.__new__(PredictRequest)
        fields = copy.__dict__
        fields.update(self.__dict__)
        fields["inputs"] = inputs
        if dim_names is not None:
            fields["dim_names"] = dim_names
        return copy

    def with_model(self, model_id: str) -> PredictRequest:
        """This request for the full id of its model (routed): nothing is checked again."""
        copy = self.with_inputs(self.inputs)
        copy.__dict__["model_id"] = model_id
        return copy

    def options(self) -> dict[str, Any]:
        """The options by name (everything but the model and the inputs), e.g. for a log."""
        return {
            f: getattr(self, f) for f in _FIELDS if f not in ("model_id", "inputs", "dim_names")
        }


_FIELDS = tuple(f.name for f in dataclasses.fields(PredictRequest))


def _check(request: PredictRequest) -> None:
    """The one set of checks on a request's options."""
    if not isinstance(request.model_id, str) or not request.model_id:
        raise InvalidArgumentError("name the model: its id, a unique prefix or bioimage.io id")
    if request.blocksize is not None and request.blocksize < 0:
        raise _invalid("blocksize", request.blocksize, "0 or more")
    if request.nan_policy not in NAN_POLICIES:
        raise _invalid("nan_policy", request.nan_policy, "'reject' or 'allow'")
    if request.precision not in PRECISIONS:
        raise _invalid(
            "precision",
            request.precision,
            "'float16' or 'bfloat16' (or empty: the weights' own)",
        )
    if request.input_padding not in INPUT_PADDINGS:
        raise _invalid("input_padding", request.input_padding, "'none' or 'halo'")
    if request.max_batch_size < 0:
        raise _invalid("max_batch_size", request.max_batch_size, "0 (no limit) or more")
    if request.timeout_s is not None and request.timeout_s < 0:
        raise _invalid("timeout_s", request.timeout_s, "0 or more (or None: no limit)")
    if request.block_statistics is not None:
        clash = (
            "blocksize"
            if request.blocksize is not None
            else "precision"
            if request.precision
            else "input_padding"
            if request.input_padding != "none"
            else ""
        )
        if clash:
            raise InvalidArgumentError(
                "a block of a larger sample is predicted as sent, on bioimageio.core's pipeline "
                "(its halo is the caller's): it takes no blocksize, precision or input_padding",
                details={"option": clash},
            )
    if request.precision and request.reference_path:
        raise InvalidArgumentError(
            "reduced precision runs on the fast path only; it cannot go with reference_path",
            details={"precision": request.precision},
        )
    if request.precision and request.as_sent:
        raise InvalidArgumentError(
            f"{request.as_sent_option} runs bioimageio.core's pipeline; reduced precision runs on "
            "the fast path only",
            details={"precision": request.precision},
        )


def _invalid(option: str, value: object, expected: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{option} must be {expected}, got {value!r}",
        details={option: value if isinstance(value, int | float) else str(value)[:64]},
    )
