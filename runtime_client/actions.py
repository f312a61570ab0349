"""A runtime's Flight actions (``runtime.proto``): load, unload, test and describe, protobuf
bodies in and out, domain types to the caller."""

from __future__ import annotations

import pyarrow.flight as flight
from google.protobuf.message import DecodeError, Message

from modelrunner import converters, errors, types
from modelrunner.transport_errors import translated_errors
from modelrunner.v1 import control_pb2, models_pb2, runtime_pb2

from .exchanges import call_options

LOAD_MODEL = "load_model"
UNLOAD_MODEL = "unload_model"
TEST_MODEL = "test_model"
RUNTIME_INFO = "runtime_info"


def do_action(
    client: flight.FlightClient,
    action_type: str,
    body: Message | None,
    response: Message,
    *,
    timeout: float | None,
) -> None:
    """Run an action and parse its one result into ``response``."""
    payload = b"" if body is None else body.SerializeToString()
    with translated_errors():
        results = list(client.do_action(flight.Action(action_type, payload), call_options(timeout)))
    if not results:
        raise errors.InternalError(f"the runtime answered {action_type!r} with no result")
    try:
        response.ParseFromString(results[0].body.to_pybytes())
    except DecodeError as e:
        raise errors.InternalError(
            f"the runtime answered {action_type!r} with an unreadable body: {e}"
        ) from None


def load_model(
    client: flight.FlightClient,
    model_id: str,
    weight_format: str = "",
    device: str = "",
    *,
    timeout: float | None,
) -> types.LoadInfo:
    response = runtime_pb2.LoadModelResponse()
    request = runtime_pb2.LoadModelRequest(
        model_id=model_id, weight_format=weight_format, device=device
    )
    do_action(client, LOAD_MODEL, request, response, timeout=timeout)
    return types.LoadInfo(
        model=converters.from_pb_loaded_model(response.model), load_seconds=response.load_seconds
    )


def unload_model(
    client: flight.FlightClient,
    model_id: str,
    weight_format: str = "",
    device: str = "",
    *,
    timeout: float | None,
) -> int:
    """How many pipelines the runtime unloaded (ModelInUseError when one serves a request)."""
    response = runtime_pb2.UnloadModelResponse()
    request = runtime_pb2.UnloadModelRequest(
        model_id=model_id, weight_format=weight_format, device=device
    )
    do_action(client, UNLOAD_MODEL, request, response, timeout=timeout)
    return response.unloaded


def remove_model(
    client: flight.FlightClient, model_id: str, *, timeout: float | None
) -> tuple[int, int]:
    """Tell the runtime the model (a full id) was removed from the server (the control
    service's call): it unloads it even while in use, ends the exchanges open on it and waits
    for its predictions in flight. Returns how many pipelines it unloaded and how many
    predictions it waited for."""
    response = runtime_pb2.UnloadModelResponse()
    request = runtime_pb2.UnloadModelRequest(model_id=model_id, removed=True)
    do_action(client, UNLOAD_MODEL, request, response, timeout=timeout)
    return response.unloaded, response.calls_in_flight


def test_model(
    client: flight.FlightClient,
    model_id: str,
    weight_format: str = "",
    device: str = "",
    *,
    timeout: float | None,
) -> types.ValidationReport:
    """bioimageio.core's model test on the runtime; the outcome is a report."""
    response = control_pb2.TestModelResponse()
    request = control_pb2.TestModelRequest(
        model_id=model_id, weight_format=weight_format, device=device
    )
    do_action(client, TEST_MODEL, request, response, timeout=timeout)
    return converters.from_pb_report(response.report)


test_model.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def runtime_info(client: flight.FlightClient, *, timeout: float | None) -> types.RuntimeInfo:
    info = models_pb2.RuntimeInfo()
    do_action(client, RUNTIME_INFO, None, info, timeout=timeout)
    return converters.from_pb_runtime(info)
