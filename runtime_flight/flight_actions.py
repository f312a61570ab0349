"""The runtime's Flight actions (``do_action``): load, unload and test a model, and report the
runtime's state. Protobuf bodies in and out (``runtime.proto``), the data plane's domain types
in between; each asks the call gate (:mod:`.call_gate`) first: the caller's role, the model as
the caller resolves it, and the runtime's limits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pyarrow.flight as flight
from google.protobuf.message import DecodeError, Message

from modelrunner import converters, errors
from modelrunner.auth import Role
from modelrunner.v1 import control_pb2, runtime_pb2
from modelrunner.wire import check_model_ref

from .call_gate import CallGate
from .model_removal import remove_model
from .service import RuntimeService

ACTIONS = {
    "load_model": "Load a model: LoadModelRequest -> LoadModelResponse",
    "unload_model": "Unload a model: UnloadModelRequest -> UnloadModelResponse",
    "test_model": "Run bioimageio.core's model test: TestModelRequest -> TestModelResponse",
    "runtime_info": "Devices, warm models and versions: (empty) -> RuntimeInfo",
}
M = TypeVar("M", bound=Message)
Handler = Callable[[flight.ServerCallContext, bytes], bytes]


def parse_message(message: M, body: bytes) -> M:
    """``body`` parsed into ``message``; its model id, if any, checked."""
    try:
        message.ParseFromString(body)
    except DecodeError as e:
        raise errors.InvalidArgumentError(f"cannot parse {type(message).__name__}: {e}") from None
    model_id: Any = getattr(message, "model_id", None)
    if isinstance(model_id, str) and model_id:
        check_model_ref(model_id)
    return message


class FlightActions:
    def __init__(self, service: RuntimeService, gate: CallGate) -> None:
        self.service = service
        self.gate = gate
        self.caller_checks = gate.checks
        self.handlers: dict[str, Handler] = {
            "load_model": self.load,
            "unload_model": self.unload,
            "test_model": self.test,
            "runtime_info": self.info,
        }

    def load(self, context: flight.ServerCallContext, body: bytes) -> bytes:
        request = parse_message(runtime_pb2.LoadModelRequest(), body)
        model_id = self.gate.model_for(context, Role.READ, "load_model", request.model_id)
        info = self.service.load(model_id, request.weight_format, request.device)
        return runtime_pb2.LoadModelResponse(
            model=converters.to_pb_loaded_model(info.model), load_seconds=info.load_seconds
        ).SerializeToString()

    def unload(self, context: flight.ServerCallContext, body: bytes) -> bytes:
        # Unloading stops other users' work: an admin, or the control service when a model is
        # removed (with the control token it issued for this runtime).
        self.caller_checks.require(context, (Role.ADMIN, Role.CONTROL), "unload_model")
        request = parse_message(runtime_pb2.UnloadModelRequest(), body)
        if request.removed:
            removal = remove_model(self.service, self.gate.open_calls, request.model_id)
            return runtime_pb2.UnloadModelResponse(
                unloaded=removal.unloaded, calls_in_flight=removal.calls_in_flight
            ).SerializeToString()
        count = self.service.unload(request.model_id, request.weight_format, request.device)
        return runtime_pb2.UnloadModelResponse(unloaded=count).SerializeToString()

    def test(self, context: flight.ServerCallContext, body: bytes) -> bytes:
        request = parse_message(control_pb2.TestModelRequest(), body)
        with self.gate.tests.slot():
            model_id = self.gate.model_for(
                context, (Role.READ, Role.CONTROL), "test_model", request.model_id
            )
            report = self.service.test(model_id, request.weight_format, request.device)
        return control_pb2.TestModelResponse(
            report=converters.to_pb_report(report)
        ).SerializeToString()

    def info(self, context: flight.ServerCallContext, body: bytes) -> bytes:
        self.caller_checks.require(context, Role.READ, "runtime_info")
        info = self.service.info()
        if not self.caller_checks.sees_everything(context):
            # which models are warm would tell other workspaces' model ids
            info = info.model_copy(update={"loaded_models": ()})
        return converters.to_pb_runtime(info).SerializeToString()
