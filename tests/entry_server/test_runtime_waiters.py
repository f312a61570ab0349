"""A call that finds no runtime waits for one (start-up), but only a few calls at once and never
past their own deadline: waiting calls hold threads of the control service's shared pool."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelrunner import errors
from modelrunner.entry_server import RuntimeDirectory
from modelrunner.entry_server.runtimes.directory import MAX_WAITERS
from modelrunner.v1 import control_pb2, models_pb2
from tests.entry_server.conftest import ServerFactory, make_settings
from tests.entry_server.helpers import NUCLEI, add_model


def test_more_waiters_than_the_cap_fail_at_once_while_health_answers(
    start_server: ServerFactory,
) -> None:
    """Attack: many route calls during start-up, each of which would hold a pool thread for
    runtime_wait_s, starving health checks and the RegisterRuntime they wait for."""
    control = start_server(runtime_wait_s=20)
    model = add_model(control.stub, path=str(NUCLEI))[0].model
    request = control_pb2.GetModelRouteRequest(model_id=model.id)
    waiters = control.server.runtimes._waiters
    with ThreadPoolExecutor(MAX_WAITERS) as pool:
        waiting = [
            pool.submit(control.stub.GetModelRoute, request, timeout=30) for _ in range(MAX_WAITERS)
        ]
        deadline = time.monotonic() + 10
        while waiters._value > 0 and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.01)
        assert waiters._value == 0  # type: ignore[attr-defined]
        for _ in range(2 * MAX_WAITERS):
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                control.stub.GetModelRoute(request, timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "no runtime registered yet" in (caught.value.details() or "")
            assert time.monotonic() - start < 5  # at once, not after runtime_wait_s
        health = health_pb2_grpc.HealthStub(control.channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        # the registration the waiters wait for still gets a thread, and ends their wait
        control.stub.RegisterRuntime(
            control_pb2.RegisterRuntimeRequest(
                runtime=models_pb2.RuntimeInfo(
                    runtime_id="r", flight_uri="grpc://h:1", available=True
                )
            ),
            timeout=5,
        )
        routes = [f.result(timeout=10) for f in waiting]
    assert {r.runtime_id for r in routes} == {"r"}


def test_a_wait_ends_at_the_callers_deadline(tmp_path: Path) -> None:
    directory = RuntimeDirectory(make_settings(tmp_path, runtime_wait_s=30))
    start = time.monotonic()
    with pytest.raises(errors.UnavailableError, match="no runtime registered"):
        directory.candidates("m", model_weight_formats=["onnx"], wait_s=0.2)
    assert time.monotonic() - start < 5


def test_a_route_call_hears_unavailable_before_its_deadline(start_server: ServerFactory) -> None:
    """The wait ends a little before the caller's deadline: the caller gets UNAVAILABLE (which
    the client retries), not DEADLINE_EXCEEDED, and the thread goes back to the pool."""
    control = start_server(runtime_wait_s=20)
    model = add_model(control.stub, path=str(NUCLEI))[0].model
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        control.stub.GetModelRoute(control_pb2.GetModelRouteRequest(model_id=model.id), timeout=1)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - start < 5
