"""The runtime's budget for samples being received (``max_receiving_bytes``), attacked with raw
Flight exchanges that announce large samples and then send nothing (a Flight server cannot end
them: the budget bounds what they hold), on a runtime without authentication and on one with
it, whose tokens share the one budget. The runtimes here take 100 MiB at once; an announced
sample allocates nothing, so the attacks cost the test no memory."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from modelrunner import errors
from modelrunner.auth import Role
from modelrunner.client import ModelInfo, ModelRunnerClient
from modelrunner.entry_server.token_store import TokenStore
from modelrunner.serving import RunningServer, start_embedded
from modelrunner.settings import Settings, default_receiving_bytes
from modelrunner.transport_errors import ErrorTrailers, from_flight_error
from modelrunner.v1 import runtime_pb2
from modelrunner.wire import ArraySpec, SampleLayout, encode_sample
from tests.tiny_models import build_onnx_identity

MiB = 1024**2
BUDGET = 100 * MiB
IMAGE = np.zeros((1, 1, 8, 8), np.float32)

Served = tuple[RunningServer, dict[str, str], ModelInfo]


def _serve(tmp_path_factory: pytest.TempPathFactory, *, auth: bool) -> Iterator[Served]:
    cache = tmp_path_factory.mktemp("receiving")
    settings = Settings(
        host="127.0.0.1",
        port=0,
        flight_port=0,
        cache_dir=cache,
        heartbeat_interval_s=1.0,
        grace_period_s=0.5,
        auth=auth,
        max_receiving_bytes=BUDGET,
    )
    tokens = {}
    if auth:
        store = TokenStore(settings.effective_tokens_file)
        tokens = {name: store.create(name, Role.WRITE, "lab-r")[0] for name in ("rhea", "ray")}
    with start_embedded(settings) as running:
        with ModelRunnerClient(running.address, token=tokens.get("rhea"), timeout=60) as rhea:
            info = rhea.add_model(build_onnx_identity(cache.parent / "m"), upload=True)
            rhea.load(info.id)
        yield running, tokens, info


@pytest.fixture(scope="module")
def open_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Without authentication: nothing else bounds what its callers hold."""
    yield from _serve(tmp_path_factory, auth=False)


@pytest.fixture(scope="module")
def secured_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(tmp_path_factory, auth=True)


def _reserved(running: RunningServer) -> int:
    assert running.runtime is not None
    return running.runtime.server.gate.receiving.reserved


def _wait_reserved(running: RunningServer, expected: int) -> None:
    deadline = time.monotonic() + 30
    while _reserved(running) != expected:
        assert time.monotonic() < deadline, (_reserved(running), expected)
        time.sleep(0.01)


def _layout(nbytes: int) -> SampleLayout:
    """A float32 sample of ``nbytes`` (a multiple of 4 KiB), planned from its shape alone."""
    spec = ArraySpec((1, 1, nbytes // 4096, 1024), np.dtype("float32"))
    return SampleLayout.plan_shapes({"input": spec}, {})


def _announce(
    raw: flight.FlightClient, model_id: str, nbytes: int, token: str | None = None, **mode: bool
) -> Any:
    """An exchange (``mode``: ``stream`` or ``session``, else one sample) that announces a
    sample of ``nbytes`` and sends nothing of it; its reader cancels it."""
    command = runtime_pb2.PredictCommand(model_id=model_id, **mode)
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    writer, reader = raw.do_exchange(
        flight.FlightDescriptor.for_command(command.SerializeToString()),
        flight.FlightCallOptions(timeout=60, headers=headers),
    )
    writer.begin(_layout(nbytes).schema())
    return writer, reader


def _refusal(call: Any) -> errors.ModelRunnerError:
    try:
        call()
    except (flight.FlightError, pa.ArrowException) as exc:
        return from_flight_error(exc)
    raise AssertionError("the call succeeded")


def _connect(running: RunningServer) -> flight.FlightClient:
    assert running.runtime is not None
    return flight.connect(running.runtime.flight_uri, middleware=[ErrorTrailers()])


def test_exchanges_announcing_big_samples_and_sending_nothing_hold_at_most_the_budget(
    open_runtime: Served,
) -> None:
    """Attack: without authentication, open exchanges of every kind that announce 48 MiB
    samples and send nothing, to make the runtime hold (or later allocate) without bound."""
    running, _, model = open_runtime
    with ExitStack() as stack, _connect(running) as raw:
        held = [_announce(raw, model.id, 48 * MiB, **mode) for mode in ({}, {"stream": True})]
        for _, reader in held:  # (a writer dropped would end its exchange)
            stack.callback(reader.cancel)
        _wait_reserved(running, 96 * MiB)
        error = _refusal(lambda: _announce(raw, model.id, 48 * MiB, session=True)[1].read_chunk())
        assert isinstance(error, errors.ResourceExhaustedError), error
        assert error.details["limit"] == "max_receiving_bytes"
        assert error.details["limit_value"] == str(BUDGET)
        assert "(setting max_receiving_bytes)" in error.message
        assert "receiving 100663296 bytes of other samples" in error.message
        # what is left of the budget still serves others
        with ModelRunnerClient(running.address, timeout=60) as other:
            np.testing.assert_array_equal(other.predict(model.id, IMAGE)["output"], IMAGE)
    # cancelled exchanges give their share back
    _wait_reserved(running, 0)


def test_a_sample_larger_than_the_whole_budget_is_refused_naming_the_setting(
    open_runtime: Served,
) -> None:
    """Attack: announce one sample larger than everything the runtime receives at once."""
    running, _, model = open_runtime
    with _connect(running) as raw:
        error = _refusal(lambda: _announce(raw, model.id, 128 * MiB)[1].read_chunk())
    assert isinstance(error, errors.ResourceExhaustedError), error
    assert error.details["limit"] == "max_receiving_bytes"
    assert "more than this runtime receives at once" in error.message
    _wait_reserved(running, 0)


def test_a_session_holds_no_share_between_samples_and_is_refused_when_its_next_finds_none(
    open_runtime: Served,
) -> None:
    """Attack: go round the budget with sessions: one answered and left idle holds nothing;
    when its next sample comes while others hold the whole budget, it is refused with
    RESOURCE_EXHAUSTED, as a new exchange would be."""
    running, _, model = open_runtime
    layout = SampleLayout.plan({"input": IMAGE}, {})
    with ExitStack() as stack, _connect(running) as raw:
        command = runtime_pb2.PredictCommand(model_id=model.id, session=True)
        writer, reader = raw.do_exchange(
            flight.FlightDescriptor.for_command(command.SerializeToString())
        )
        stack.callback(reader.cancel)
        writer.begin(layout.schema())

        def send_sample() -> flight.FlightStreamChunk:
            for batch in encode_sample(layout, {"input": IMAGE}):
                writer.write_batch(batch)
            return reader.read_chunk()

        assert send_sample().data is not None
        _wait_reserved(running, 0)  # idle: its 256 bytes are given back
        held = [_announce(raw, model.id, 50 * MiB) for _ in range(2)]
        for _, holder in held:
            stack.callback(holder.cancel)
        _wait_reserved(running, BUDGET)
        error = _refusal(send_sample)
        assert isinstance(error, errors.ResourceExhaustedError), error
        assert error.details["limit"] == "max_receiving_bytes"
    _wait_reserved(running, 0)


def test_every_token_shares_the_one_budget(secured_runtime: Served) -> None:
    """Attack: with authentication, one token's exchanges (each within its own
    ``max_exchanges_per_token``) announce big samples and send nothing; the runtime's memory is
    bounded for all tokens together, so another token's big sample is refused while they
    hold, and its small ones still run."""
    running, tokens, model = secured_runtime
    with ExitStack() as stack, _connect(running) as raw:
        held = [_announce(raw, model.id, 48 * MiB, tokens["rhea"], stream=True) for _ in "ab"]
        for _, reader in held:
            stack.callback(reader.cancel)
        _wait_reserved(running, 96 * MiB)
        error = _refusal(lambda: _announce(raw, model.id, 48 * MiB, tokens["ray"])[1].read_chunk())
        assert isinstance(error, errors.ResourceExhaustedError), error
        assert error.details["limit"] == "max_receiving_bytes"
        with ModelRunnerClient(running.address, token=tokens["ray"], timeout=60) as ray:
            np.testing.assert_array_equal(ray.predict(model.id, IMAGE)["output"], IMAGE)
    _wait_reserved(running, 0)


def test_the_default_budget_is_half_the_machines_memory() -> None:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert Settings().max_receiving_bytes == default_receiving_bytes() == memory // 2
