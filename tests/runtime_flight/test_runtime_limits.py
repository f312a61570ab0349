"""One set of limits whichever plane is used: a caller going straight to the runtime meets the
limits it meets on the control service. Attacked with raw Flight calls against a secured server
with small limits (``max_exchanges_per_token`` 2, ``max_concurrent_tests`` 1)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from modelrunner import errors, types
from modelrunner.auth import Role
from modelrunner.client import ModelInfo, ModelRunnerClient
from modelrunner.entry_server.token_store import TokenStore
from modelrunner.serving import RunningServer, start_embedded
from modelrunner.settings import Settings
from modelrunner.transport_errors import ErrorTrailers, from_flight_error
from modelrunner.v1 import control_pb2, runtime_pb2
from modelrunner.wire import SampleLayout
from tests.tiny_models import build_onnx_identity

IMAGE = np.zeros((1, 1, 8, 8), np.float32)


@pytest.fixture(scope="module")
def limited(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, dict[str, str], ModelInfo]]:
    cache = tmp_path_factory.mktemp("limited")
    settings = Settings(
        host="127.0.0.1",
        port=0,
        flight_port=0,
        cache_dir=cache,
        heartbeat_interval_s=1.0,
        grace_period_s=0.5,
        auth=True,
        max_exchanges_per_token=2,
        max_concurrent_tests=1,
    )
    store = TokenStore(settings.effective_tokens_file)
    tokens = {name: store.create(name, Role.WRITE, "lab-l")[0] for name in ("lena", "leo")}
    with start_embedded(settings) as running:
        with ModelRunnerClient(running.address, token=tokens["lena"], timeout=60) as lena:
            info = lena.add_model(build_onnx_identity(cache.parent / "m"), upload=True)
            lena.load(info.id)
        yield running, tokens, info


def _client(running: RunningServer) -> flight.FlightClient:
    assert running.runtime is not None
    return flight.connect(running.runtime.flight_uri, middleware=[ErrorTrailers()])


def _options(token: str) -> flight.FlightCallOptions:
    return flight.FlightCallOptions(
        timeout=60, headers=[(b"authorization", f"Bearer {token}".encode())]
    )


def _open_session(raw: flight.FlightClient, token: str, model_id: str) -> Any:
    """An exchange that announced its sample and sends nothing yet (a slow client)."""
    command = runtime_pb2.PredictCommand(model_id=model_id, session=True)
    writer, reader = raw.do_exchange(
        flight.FlightDescriptor.for_command(command.SerializeToString()), _options(token)
    )
    writer.begin(SampleLayout.plan({"input": IMAGE}, {}).schema())
    return writer, reader


def _refusal(call: Any) -> errors.ModelRunnerError:
    try:
        call()
    except (flight.FlightError, pa.ArrowException) as exc:
        return from_flight_error(exc)
    raise AssertionError("the call succeeded")


def test_a_token_cannot_hold_more_exchanges_than_its_limit(
    limited: tuple[RunningServer, dict[str, str], ModelInfo],
) -> None:
    """Attack: one read token opens exchanges that announce a sample and never send it, each
    holding a runtime thread (and, stopping inside a sample, that sample's memory)."""
    running, tokens, model = limited
    assert running.runtime is not None
    with ExitStack() as stack, _client(running) as raw:
        held = [_open_session(raw, tokens["lena"], model.id) for _ in range(2)]
        for _, reader in held:  # (a writer dropped would end its exchange)
            stack.callback(reader.cancel)
        deadline = time.monotonic() + 30
        while running.runtime.server.active_exchanges < 2:  # both reached the runtime
            assert time.monotonic() < deadline
            time.sleep(0.01)
        _, refused = _open_session(raw, tokens["lena"], model.id)
        error = _refusal(refused.read_chunk)
        assert isinstance(error, errors.ResourceExhaustedError), error
        assert error.details["limit"] == "max_exchanges_per_token"
        # another token is not held back by lena's
        with ModelRunnerClient(running.address, token=tokens["leo"], timeout=60) as leo:
            leo.predict(model.id, IMAGE)
    # and lena's slots come back when her exchanges end
    with ModelRunnerClient(running.address, token=tokens["lena"], timeout=60) as lena:
        lena.predict(model.id, IMAGE)


def test_model_tests_straight_to_the_runtime_are_limited(
    limited: tuple[RunningServer, dict[str, str], ModelInfo], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: many test_model actions straight to the runtime, past the control service's
    max_concurrent_tests (12 of them all ran)."""
    running, tokens, model = limited
    assert running.runtime is not None
    service = running.runtime.server.service
    started, release = threading.Event(), threading.Event()
    real_test = service.test

    def slow_test(*args: Any) -> types.ValidationReport:
        started.set()
        release.wait(30)
        return real_test(*args)

    monkeypatch.setattr(service, "test", slow_test)
    body = control_pb2.TestModelRequest(model_id=model.id).SerializeToString()
    results: list[object] = []

    def run_test() -> None:
        with _client(running) as raw:
            results.extend(
                raw.do_action(flight.Action("test_model", body), _options(tokens["leo"]))
            )

    first = threading.Thread(target=run_test)
    first.start()
    try:
        assert started.wait(30)
        with _client(running) as raw:
            error = _refusal(
                lambda: list(
                    raw.do_action(flight.Action("test_model", body), _options(tokens["lena"]))
                )
            )
        assert isinstance(error, errors.ResourceExhaustedError), error
        assert error.details["limit"] == "max_concurrent_tests"
    finally:
        release.set()
        first.join()
    assert len(results) == 1


def test_the_limits_have_their_documented_defaults() -> None:
    settings = Settings()
    assert settings.max_exchanges_per_token == 32
    assert settings.max_concurrent_tests == 4
    assert settings.auth_cache_s == 1.0
