"""One set of limits whichever plane is used: a caller going straight to the runtime meets the
limits it meets on the control service. Attacked with raw Flight calls against a secured server
with small limits (``max_exchanges_per_token`` 2, ``max_concurrent_tests`` 1). Sessions idle
between samples (the Python client keeps some for a few seconds) do not hold a token's slots, and
a token keeps no more of them than its limit."""

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
from modelrunner.wire import SampleLayout, encode_sample
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


def _answered(session: Any) -> bool:
    """Send one sample on a raw session; whether it was answered with outputs (False: the
    runtime ended the session before it)."""
    writer, reader = session
    try:
        for batch in encode_sample(SampleLayout.plan({"input": IMAGE}, {}), {"input": IMAGE}):
            writer.write_batch(batch)
    except (flight.FlightError, pa.ArrowException):
        pass  # the runtime ended the exchange: its reader says how
    try:
        chunk = reader.read_chunk()
    except StopIteration:
        return False
    return chunk.data is not None


def _idle_sessions(running: RunningServer, expected: int) -> None:
    """Wait until the runtime's exchanges are ``expected`` sessions, all idle."""
    assert running.runtime is not None
    server = running.runtime.server
    deadline = time.monotonic() + 30
    while (server.active_exchanges, server.active_sessions, server.busy_sessions) != (
        expected,
        expected,
        0,
    ):
        assert time.monotonic() < deadline, (server.active_exchanges, server.active_sessions)
        time.sleep(0.01)


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
        # the refusal may come before the schema is written, or after
        error = _refusal(lambda: _open_session(raw, tokens["lena"], model.id)[1].read_chunk())
        assert isinstance(error, errors.ResourceExhaustedError), error
        assert error.details["limit"] == "max_exchanges_per_token"
        # another token is not held back by lena's
        with ModelRunnerClient(running.address, token=tokens["leo"], timeout=60) as leo:
            leo.predict(model.id, IMAGE)
    # and lena's slots come back when her exchanges end
    with ModelRunnerClient(running.address, token=tokens["lena"], timeout=60) as lena:
        lena.predict(model.id, IMAGE)


def test_idle_sessions_of_a_token_leave_its_slots_to_new_calls(
    limited: tuple[RunningServer, dict[str, str], ModelInfo],
) -> None:
    """Each Python client keeps its session idle for a few seconds after a prediction: three
    clients sharing lena's token used to have the third refused by the two idle sessions (four
    processes of a facility filled the default 32 slots). A session that would be idle beyond
    the limit ends instead, and its client sends the next sample on a new exchange."""
    running, tokens, model = limited
    with ExitStack() as stack:
        clients = [
            stack.enter_context(
                ModelRunnerClient(running.address, token=tokens["lena"], timeout=60)
            )
            for _ in range(3)
        ]
        for client in clients:
            np.testing.assert_array_equal(client.predict(model.id, IMAGE)["output"], IMAGE)
        _idle_sessions(running, 2)  # the third session ended rather than wait idle
        for client in clients:  # each goes on, on its pooled session or on a new one
            np.testing.assert_array_equal(client.predict(model.id, IMAGE + 1)["output"], IMAGE + 1)


def test_a_token_cannot_keep_more_idle_sessions_than_its_limit(
    limited: tuple[RunningServer, dict[str, str], ModelInfo],
) -> None:
    """Attack: idle sessions hold no slot, so a token opens session after session, each
    answered once and left open, to hold runtime threads without bound: past the limit, a
    session ends after its sample instead of waiting."""
    running, tokens, model = limited
    with ExitStack() as stack, _client(running) as raw:
        sessions = []
        for i in range(4):
            sessions.append(_open_session(raw, tokens["lena"], model.id))
            stack.callback(sessions[-1][1].cancel)
            assert _answered(sessions[-1])
            _idle_sessions(running, min(i + 1, 2))
        assert [_answered(s) for s in sessions] == [True, True, False, False]


def test_an_idle_session_waking_while_its_tokens_slots_are_taken_is_refused(
    limited: tuple[RunningServer, dict[str, str], ModelInfo],
) -> None:
    """Attack: go round the limit by waking an idle session while the token's other exchanges
    hold every slot (two that announced a sample and send nothing): its sample is refused with
    RESOURCE_EXHAUSTED, as a new exchange would be."""
    running, tokens, model = limited
    assert running.runtime is not None
    with ExitStack() as stack, _client(running) as raw:
        idle = _open_session(raw, tokens["lena"], model.id)
        stack.callback(idle[1].cancel)
        assert _answered(idle)
        _idle_sessions(running, 1)
        holding = [_open_session(raw, tokens["lena"], model.id) for _ in range(2)]
        for _, reader in holding:  # (a writer dropped would end its exchange)
            stack.callback(reader.cancel)
        deadline = time.monotonic() + 30
        while running.runtime.server.active_exchanges < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        error = _refusal(lambda: _answered(idle))
        assert isinstance(error, errors.ResourceExhaustedError), error
        assert error.details["limit"] == "max_exchanges_per_token"


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
