"""The converter pair between :class:`~modelrunner.predict_request.PredictRequest` and the
runtime's ``PredictCommand`` (a Flight exchange's command): the client side of the Flight edge
writes commands with :func:`to_command`, the runtime reads them with :func:`from_command`.

A command carries no tensors (they travel as record batches) and no deadline (that is the
call's); the kind of exchange (one sample, a frame stream, a session) and progress reports are
the transport's, given beside the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

from modelrunner.converters import from_pb_sample_statistics, to_pb_sample_statistics
from modelrunner.predict_request import NanPolicy, PredictRequest
from modelrunner.v1 import runtime_pb2

ExchangeKind = Literal["predict", "stream", "session"]
"""One sample on its own exchange, a stream of frames, or lockstep samples on one exchange."""

NAN_POLICY_TO_PB = {
    "reject": runtime_pb2.NAN_POLICY_REJECT,
    "allow": runtime_pb2.NAN_POLICY_ALLOW,
}
"""The one NaN-policy table; an unset or unknown enum value reads as ``reject``."""
_NAN_POLICY_FROM_PB: dict[int, NanPolicy] = {v: k for k, v in NAN_POLICY_TO_PB.items()}  # type: ignore[misc]


def to_command(
    request: PredictRequest, *, kind: ExchangeKind = "predict", report_progress: bool = False
) -> runtime_pb2.PredictCommand:
    """The command of an exchange of ``kind`` for ``request`` (its inputs and deadline travel
    otherwise)."""
    command = runtime_pb2.PredictCommand(
        model_id=request.model_id,
        weight_format=request.weight_format,
        device=request.device,
        stream=kind == "stream",
        session=kind == "session",
        max_batch_size=request.max_batch_size,
        nan_policy=NAN_POLICY_TO_PB[request.nan_policy],
        skip_preprocessing=request.skip_preprocessing,
        skip_postprocessing=request.skip_postprocessing,
        reference_path=request.reference_path,
        precision=request.precision,
        report_progress=report_progress,
        keep_shape=request.keep_shape,
        input_padding="" if request.input_padding == "none" else request.input_padding,
    )
    if request.blocksize is not None:
        command.blocksize = request.blocksize
    if request.block_statistics is not None:
        command.block_of_sample.CopyFrom(to_pb_sample_statistics(request.block_statistics))
    return command


def from_command(
    command: runtime_pb2.PredictCommand,
    inputs: Mapping[str, np.ndarray] | None = None,
    dim_names: Mapping[str, tuple[str, ...]] | None = None,
) -> PredictRequest:
    """The request a command asks for (InvalidArgumentError when an option is not valid)."""
    return PredictRequest(
        model_id=command.model_id,
        inputs=inputs or {},
        dim_names=dim_names or {},
        weight_format=command.weight_format,
        device=command.device,
        blocksize=command.blocksize if command.HasField("blocksize") else None,
        nan_policy=_NAN_POLICY_FROM_PB.get(command.nan_policy, "reject"),
        skip_preprocessing=command.skip_preprocessing,
        skip_postprocessing=command.skip_postprocessing,
        reference_path=command.reference_path,
        precision=command.precision,  # type: ignore[arg-type]  # checked by the request
        keep_shape=command.keep_shape,
        input_padding=command.input_padding or "none",  # type: ignore[arg-type]
        block_statistics=(
            from_pb_sample_statistics(command.block_of_sample)
            if command.HasField("block_of_sample")
            else None
        ),
        # a stream's limit; a negative one (no valid client sends it) means none
        max_batch_size=max(0, command.max_batch_size),
    )


def exchange_kind(command: runtime_pb2.PredictCommand) -> ExchangeKind:
    return "session" if command.session else "stream" if command.stream else "predict"


_NOT_IN_COMMAND = frozenset({"inputs", "dim_names", "timeout_s"})
_COMMANDS: dict[tuple[object, ...], bytes] = {}
_MAX_COMMANDS = 256


def command_bytes(
    request: PredictRequest, *, kind: ExchangeKind = "predict", report_progress: bool = False
) -> bytes:
    """:func:`to_command`, serialized: a client's lockstep calls send the same command again and
    again, so it is made once per model, options and kind."""
    key = (
        kind,
        report_progress,
        *(v for k, v in request.__dict__.items() if k not in _NOT_IN_COMMAND),
    )
    data = _COMMANDS.get(key)
    if data is None:
        data = to_command(request, kind=kind, report_progress=report_progress).SerializeToString()
        if len(_COMMANDS) >= _MAX_COMMANDS:
            _COMMANDS.clear()
        _COMMANDS[key] = data
    return data
