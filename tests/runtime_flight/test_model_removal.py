"""Removing a model is complete: every runtime unloads it, exchanges open on it end with
NOT_FOUND at their next frame, nothing answers for its id afterwards on any plane, a removal
that waits for predictions in flight says so, and the same package added again serves again.
Without authentication (where nothing else would stop a removed model) and on a second runtime
whose heartbeat has not yet told the control service that it loaded the model. A removal waiting
for a busy runtime holds up no other workspace's adds, only an add of the same package."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from modelrunner import errors
from modelrunner.client import (
    AsyncModelRunnerClient,
    ModelInfo,
    ModelRunnerClient,
    RemovedModel,
)
from modelrunner.open_inference import grpc_predict_v2_pb2 as v2
from modelrunner.open_inference import grpc_predict_v2_pb2_grpc as v2_grpc
from modelrunner.serving import RunningServer, control_address_of, start_runtime
from modelrunner.settings import Settings
from modelrunner.transport_errors import from_flight_error
from modelrunner.v1 import control_pb2, control_pb2_grpc, runtime_pb2
from tests.conftest import Secured
from tests.tiny_models import build_onnx_identity

IMAGE = np.arange(64, dtype="float32").reshape(1, 1, 8, 8)

_names = iter(range(10**6))


@pytest.fixture
def model(
    server: RunningServer, client: ModelRunnerClient, tmp_path_factory: pytest.TempPathFactory
) -> ModelInfo:
    """A model of its own on the shared server (without authentication), loaded."""
    name = f"removed-{next(_names)}"
    info = client.add_model(build_onnx_identity(tmp_path_factory.mktemp(name) / "m", name=name))
    client.load(info.id)
    return info


def _runtime_pool_has(server: RunningServer, model_id: str) -> bool:
    assert server.runtime is not None
    return server.runtime.server.service.pool.has_warm(model_id)


def _refused(call: Callable[[], object]) -> errors.ModelRunnerError:
    try:
        call()
    except errors.ModelRunnerError as exc:
        return exc
    except (flight.FlightError, pa.ArrowException) as exc:
        return from_flight_error(exc)
    raise AssertionError("the call succeeded")


def test_removing_a_model_ends_an_open_session_with_not_found(
    server: RunningServer, client: ModelRunnerClient, model: ModelInfo
) -> None:
    """Attack: keep predicting on a session opened before the model was removed."""
    with ModelRunnerClient(server.address, timeout=30) as user:
        user.predict(model.id, IMAGE)
        client.remove_model(model.id)
        error = _refused(lambda: user.predict(model.id, IMAGE))
    assert isinstance(error, errors.ModelNotFoundError), error
    assert not _runtime_pool_has(server, model.id)
    assert model.id not in {
        m.model_id for r in client.server_info().runtimes for m in r.loaded_models
    }


def test_removing_a_model_while_a_session_predicts_ends_the_session(
    server: RunningServer, client: ModelRunnerClient, model: ModelInfo
) -> None:
    """Attack: a session predicting as fast as it can while the model is removed (it used to
    answer thousands more predictions from a pipeline it loaded again, its package gone)."""
    outcome: list[BaseException] = []
    predicting = threading.Event()

    def predict_on() -> None:
        with ModelRunnerClient(server.address, timeout=30) as user:
            deadline = time.monotonic() + 20
            try:
                while time.monotonic() < deadline:
                    user.predict(model.id, IMAGE)
                    predicting.set()
            except BaseException as exc:  # noqa: BLE001 - the test looks at it
                outcome.append(exc)

    worker = threading.Thread(target=predict_on)
    worker.start()
    assert predicting.wait(10)
    client.remove_model(model.id)
    removed = time.monotonic()
    worker.join()
    assert outcome and isinstance(outcome[0], errors.ModelNotFoundError), outcome
    assert time.monotonic() - removed < 5
    assert not _runtime_pool_has(server, model.id)


def test_removing_a_model_ends_an_open_frame_stream_with_not_found(
    client: ModelRunnerClient, model: ModelInfo
) -> None:
    def frames() -> Iterator[np.ndarray]:
        for i in range(10_000):
            yield IMAGE + i
            time.sleep(0.005)

    answered = 0
    with pytest.raises(errors.ModelNotFoundError):
        for _ in client.predict_stream(model.id, frames()):
            answered += 1
            if answered == 3:
                threading.Thread(target=client.remove_model, args=(model.id,)).start()
    assert answered < 10_000


def test_nothing_answers_for_a_removed_id_afterwards(
    server: RunningServer, client: ModelRunnerClient, model: ModelInfo
) -> None:
    """Attack: name the removed model's full id on every plane, Flight straight to the runtime
    included (which before this kept it warm and answered)."""
    client.remove_model(model.id)
    assert server.runtime is not None
    command = runtime_pb2.PredictCommand(model_id=model.id)
    with flight.connect(server.runtime.flight_uri) as raw:

        def exchange() -> None:
            writer, reader = raw.do_exchange(
                flight.FlightDescriptor.for_command(command.SerializeToString())
            )
            with writer:
                reader.read_chunk()

        assert isinstance(_refused(exchange), errors.NotFoundError)
        load = runtime_pb2.LoadModelRequest(model_id=model.id).SerializeToString()
        assert isinstance(
            _refused(lambda: list(raw.do_action(flight.Action("load_model", load)))),
            errors.NotFoundError,
        )
    assert isinstance(_refused(lambda: client.predict(model.id, IMAGE)), errors.NotFoundError)
    with grpc.insecure_channel(server.address) as channel:
        request = v2.ModelInferRequest(
            model_name=model.id,
            inputs=[
                v2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[8, 8])
            ],
            raw_input_contents=[IMAGE.tobytes()],
        )
        with pytest.raises(grpc.RpcError) as caught:
            v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@contextmanager
def prediction_in_flight(server: RunningServer, model_id: str) -> Iterator[None]:
    """What a long prediction holds on the runtime, its pipeline, for half a second from
    when the block starts."""
    assert server.runtime is not None
    pool = server.runtime.server.service.pool
    lent = threading.Event()

    def predicting() -> None:
        with pool.use(model_id):
            lent.set()
            time.sleep(0.5)

    worker = threading.Thread(target=predicting)
    worker.start()
    try:
        assert lent.wait(10)
        yield
    finally:
        worker.join()


def test_a_removal_waits_for_a_prediction_in_flight_and_says_so(
    server: RunningServer, model: ModelInfo, caplog: pytest.LogCaptureFixture
) -> None:
    """A prediction running when the model is removed finishes; the removal waits for it and
    its response and log say so."""
    assert server.runtime is not None
    pool = server.runtime.server.service.pool
    with (
        prediction_in_flight(server, model.id),
        caplog.at_level(logging.INFO, logger="modelrunner.entry_server.control_plane"),
        grpc.insecure_channel(server.address) as channel,
    ):
        started = time.monotonic()
        response = control_pb2_grpc.ControlServiceStub(channel).RemoveModel(
            control_pb2.RemoveModelRequest(model_id=model.id), timeout=60
        )
        waited = time.monotonic() - started
    assert response.model_id == model.id and response.calls_in_flight == 1
    assert waited >= 0.3
    assert f"model {model.id[:12]} removed after waiting for 1 prediction(s) in flight" in (
        caplog.text
    )
    assert not pool.has_warm(model.id)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_remove_model_says_how_many_predictions_it_waited_for(
    server: RunningServer, client: ModelRunnerClient, model: ModelInfo, kind: str
) -> None:
    async def remove_async() -> RemovedModel:
        async with AsyncModelRunnerClient(server.address, timeout=60) as other:
            return await other.remove_model(model.id[:12])

    with prediction_in_flight(server, model.id):
        if kind == "sync":
            removed = client.remove_model(model.id[:12])
        else:
            removed = asyncio.run(remove_async())
    assert isinstance(removed, RemovedModel)
    assert (removed.model_id, removed.calls_in_flight) == (model.id, 1)
    assert removed.freed_bytes > 0  # no other workspace holds it


def test_remove_model_without_predictions_in_flight_says_none(
    client: ModelRunnerClient, model: ModelInfo
) -> None:
    removed = client.remove_model(model.id)
    assert (removed.model_id, removed.calls_in_flight) == (model.id, 0)


def test_a_model_is_unloaded_from_a_runtime_that_has_not_reported_it_yet(
    server: RunningServer, client: ModelRunnerClient, model: ModelInfo, tmp_path: Path
) -> None:
    """A second runtime loads the model and the model is removed before its next heartbeat:
    the removal still reaches it, and its own copy of the package goes."""
    settings = Settings(
        host="127.0.0.1",
        flight_port=0,
        cache_dir=tmp_path / "second-runtime",
        heartbeat_interval_s=60.0,  # its heartbeat will not say it loaded the model
        grace_period_s=0.5,
    )
    second = start_runtime(settings, control_address_of(server))
    try:
        load = runtime_pb2.LoadModelRequest(model_id=model.id).SerializeToString()
        with flight.connect(second.flight_uri) as raw:
            list(raw.do_action(flight.Action("load_model", load)))
        pool = second.server.service.pool
        assert pool.has_warm(model.id)
        client.remove_model(model.id)
        assert not pool.has_warm(model.id)
        assert not (settings.cache_dir / "runtime" / "models" / model.id).exists()
    finally:
        second.stop()


def test_the_same_package_added_again_serves_again(
    client: ModelRunnerClient, tmp_path: Path
) -> None:
    """A removal is of that moment: the content added again (same id) is served."""
    package = build_onnx_identity(tmp_path / "m", name="removed-and-added-again")
    info = client.add_model(package)
    client.predict(info.id, IMAGE)
    client.remove_model(info.id)
    assert client.add_model(package).id == info.id
    np.testing.assert_array_equal(client.predict(info.id, IMAGE)["output"], IMAGE)


def test_a_runtimes_copy_of_a_removed_package_outlives_a_load_reading_it(
    server: RunningServer, client: ModelRunnerClient, model: ModelInfo, tmp_path: Path
) -> None:
    """A load under way on a runtime with its own copy of the package when the model is
    removed: the copy stays until the load has read it (it used to go at once, and the load
    failed on the missing weights), new calls get NOT_FOUND meanwhile, then the pipeline and
    the copy go."""
    settings = Settings(
        host="127.0.0.1",
        flight_port=0,
        cache_dir=tmp_path / "own-copy",
        heartbeat_interval_s=60.0,
        grace_period_s=0.5,
    )
    second = start_runtime(settings, control_address_of(server))
    loading, go_on = threading.Event(), threading.Event()
    try:
        service = second.server.service
        pool = service.pool
        factory = pool._factory

        def slow_factory(*args: object) -> object:
            loading.set()
            assert go_on.wait(30)
            return factory(*args)  # type: ignore[arg-type]

        pool._factory = slow_factory  # type: ignore[assignment]
        load = runtime_pb2.LoadModelRequest(model_id=model.id).SerializeToString()
        loaded: list[object] = []

        def load_it() -> None:
            with flight.connect(second.flight_uri) as raw:
                try:
                    loaded.extend(raw.do_action(flight.Action("load_model", load)))
                except flight.FlightError as exc:
                    loaded.append(from_flight_error(exc))

        loader = threading.Thread(target=load_it)
        loader.start()
        assert loading.wait(30)
        copy = settings.cache_dir / "runtime" / "models" / model.id
        assert copy.is_dir()
        remover = threading.Thread(target=client.remove_model, args=(model.id,))
        remover.start()
        deadline = time.monotonic() + 30
        while not isinstance(
            _refused_or_none(lambda: service.resolve(model.id)), errors.NotFoundError
        ):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)  # the removal waits for the load
        assert remover.is_alive() and copy.is_dir()
        with flight.connect(second.flight_uri) as raw:
            refused = _refused(lambda: list(raw.do_action(flight.Action("load_model", load))))
        assert isinstance(refused, errors.NotFoundError), refused
        go_on.set()
        loader.join(60)
        remover.join(60)
        assert len(loaded) == 1 and not isinstance(loaded[0], errors.ModelRunnerError), loaded
        assert not pool.has_warm(model.id)
        assert not copy.exists()
    finally:
        go_on.set()
        second.stop()


def _refused_or_none(call: Callable[[], object]) -> errors.ModelRunnerError | None:
    try:
        call()
    except errors.ModelRunnerError as exc:
        return exc
    return None


def test_a_removal_waiting_on_a_busy_runtime_holds_up_only_adds_of_its_package(
    secured: Secured, tmp_path: Path
) -> None:
    """Attack: a write-role user removes a model while a prediction runs on it; the removal
    waits for the runtime (up to 30 s each) and used to hold a lock every add of every
    workspace waits for, so one user could stall adds across the server."""
    assert secured.server.runtime is not None
    pool = secured.server.runtime.server.service.pool
    package = build_onnx_identity(tmp_path / "a", name="removed-while-busy")
    with secured.client("alice") as alice:
        model = alice.add_model(package, upload=True)
        alice.load(model.id)
    lent, release = threading.Event(), threading.Event()

    def predicting() -> None:  # what a long prediction holds: its pipeline
        with pool.use(model.id):
            lent.set()
            release.wait(60)

    removals: list[object] = []

    def remove() -> None:
        with secured.client("alice") as alice:
            alice.remove_model(model.id)
        removals.append(model.id)

    adds: dict[str, object] = {}

    def add(name: str, path: Path) -> None:
        with secured.client(name) as user:
            adds[name] = user.add_model(path, upload=True)

    threads = [threading.Thread(target=predicting), threading.Thread(target=remove)]
    try:
        threads[0].start()
        assert lent.wait(10)
        threads[1].start()
        deadline = time.monotonic() + 30
        while pool.has_warm(model.id):  # the runtime took it out: it waits for the prediction
            assert time.monotonic() < deadline
            time.sleep(0.01)
        other = threading.Thread(
            target=add, args=("bob", build_onnx_identity(tmp_path / "b", name="lab-b-meanwhile"))
        )
        other.start()
        other.join(10)
        assert not other.is_alive() and "bob" in adds  # lab-b's add went through ...
        assert threads[1].is_alive() and not removals  # ... while the removal still waits
        again = threading.Thread(target=add, args=("alice", package))
        again.start()
        again.join(0.5)
        assert again.is_alive()  # the same package waits for its removal to end
        release.set()
        for t in (*threads, again):
            t.join(60)
        assert removals == [model.id]
        assert adds["alice"].id == model.id  # type: ignore[attr-defined]
        with secured.client("alice") as alice:  # added anew after the removal: it serves
            np.testing.assert_array_equal(alice.predict(model.id, IMAGE)["output"], IMAGE)
    finally:
        release.set()
        for t in threads:
            t.join(60)
