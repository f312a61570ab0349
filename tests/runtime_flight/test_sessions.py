"""The runtime's session mode as a client in another language sees it (plain pyarrow.flight): one
exchange, samples answered in order with ``FrameResult.frame`` = their index in the session,
errors of single samples answered in their place, the exchange open until the client ends it;
and tiled predictions answered whole."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from modelrunner import errors
from modelrunner.client import ModelInfo
from modelrunner.runtime_flight.server import RuntimeFlightServer
from modelrunner.runtime_flight.service import RuntimeService
from modelrunner.runtime_flight.session_exchange import serve_session
from modelrunner.serving import RunningServer
from modelrunner.settings import Settings
from modelrunner.transport_errors import ErrorTrailers, from_flight_error
from modelrunner.v1 import runtime_pb2
from modelrunner.wire import SampleDecoder, SampleLayout, encode_rows, encode_sample
from tests.reference import Pipelines
from tests.runtime_flight.predicting import predict

Tiny = Callable[[str], Path]
READ_OPTIONS = pa.ipc.IpcReadOptions(ensure_alignment=pa.ipc.Alignment.DataTypeSpecific)


@pytest.fixture
def flight_client(server: RunningServer) -> Iterator[flight.FlightClient]:
    assert server.runtime is not None
    # with the middleware that reads the typed error's trailer, as the reference client has
    with flight.connect(server.runtime.flight_uri, middleware=[ErrorTrailers()]) as c:
        yield c


class _Session:
    """A bare session client: write samples, read answers (outputs or errors) one by one."""

    def __init__(self, client: flight.FlightClient, model_id: str, layout: SampleLayout) -> None:
        command = runtime_pb2.PredictCommand(model_id=model_id, session=True)
        self.writer, self.reader = client.do_exchange(
            flight.FlightDescriptor.for_command(command.SerializeToString()),
            flight.FlightCallOptions(timeout=60, read_options=READ_OPTIONS),
        )
        self.writer.begin(layout.schema())
        self.layout = layout
        self.decoder: SampleDecoder | None = None

    def send(self, *samples: dict[str, np.ndarray]) -> None:
        if len(samples) == 1:
            for batch in encode_sample(self.layout, samples[0]):
                self.writer.write_batch(batch)
        else:
            self.writer.write_batch(encode_rows(self.layout, samples))

    def answer(self) -> tuple[runtime_pb2.FrameResult, dict[str, np.ndarray] | None]:
        while True:
            chunk = self.reader.read_chunk()
            meta = runtime_pb2.FrameResult.FromString(chunk.app_metadata.to_pybytes())
            if meta.HasField("error"):
                return meta, None
            if self.decoder is None:
                self.decoder = SampleDecoder(SampleLayout.from_schema(self.reader.schema))
            done = self.decoder.feed(chunk.data)
            if done:
                return meta, done[0]

    def end(self) -> None:
        self.writer.done_writing()
        with pytest.raises(StopIteration):
            self.reader.read_chunk()
        self.writer.close()


def _frame(value: float) -> dict[str, np.ndarray]:
    return {"input": np.full((1, 1, 8, 8), value, np.float32)}


def test_samples_are_answered_in_order_on_one_exchange(
    flight_client: flight.FlightClient, identity: ModelInfo, runtime: RuntimeFlightServer
) -> None:
    before = runtime.exchanges_opened
    session = _Session(flight_client, identity.id, SampleLayout.plan(_frame(0)))
    for i in range(5):
        session.send(_frame(i))
        meta, out = session.answer()
        assert meta.frame == i and meta.weight_format == "onnx" and meta.device == "cpu"
        assert out is not None
        np.testing.assert_array_equal(out["output"], _frame(i)["input"])
    session.end()
    assert runtime.exchanges_opened == before + 1


def test_several_samples_in_one_batch_are_answered_one_by_one(
    flight_client: flight.FlightClient, identity: ModelInfo
) -> None:
    """Attacks the one-sample-at-a-time reading with a batch of three rows: each row is a sample
    of its own, answered in order."""
    session = _Session(flight_client, identity.id, SampleLayout.plan(_frame(0)))
    session.send(_frame(1), _frame(2), _frame(3))
    for i in range(3):
        meta, out = session.answer()
        assert meta.frame == i and out is not None
        np.testing.assert_array_equal(out["output"], _frame(i + 1)["input"])
    session.end()


def test_a_failing_model_call_is_answered_with_its_error_and_the_session_goes_on(
    flight_client: flight.FlightClient,
    identity: ModelInfo,
    runtime: RuntimeFlightServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attacks the session loop with a model call that raises a plain Python exception (not a
    modelrunner error), then with a NaN input: each is answered as that frame's error."""
    service = runtime.service
    real = service.predict
    calls = iter([RuntimeError("model exploded"), None, None])

    def flaky(*args: Any, **kwargs: Any) -> Any:
        error = next(calls)
        if error is not None:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "predict", flaky)
    session = _Session(flight_client, identity.id, SampleLayout.plan(_frame(0)))
    session.send(_frame(1))
    meta, out = session.answer()
    assert out is None and meta.frame == 0
    rebuilt = _rebuilt(meta)
    assert isinstance(rebuilt, errors.InternalError)
    assert rebuilt.message == "prediction failed: RuntimeError: model exploded"
    session.send(_frame(np.nan))
    meta, out = session.answer()
    assert out is None and meta.frame == 1
    assert isinstance(_rebuilt(meta), errors.InvalidTensorError)
    session.send(_frame(2))
    meta, out = session.answer()
    assert meta.frame == 2 and out is not None
    np.testing.assert_array_equal(out["output"], _frame(2)["input"])
    session.end()


def test_outputs_that_change_shape_within_a_session_are_refused_alone(
    flight_client: flight.FlightClient,
    identity: ModelInfo,
    runtime: RuntimeFlightServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attacks the exchange's one output schema with a model whose second output is larger
    than its first: that frame is answered with an error, the next one normally."""
    service = runtime.service
    real = service.predict
    count = iter(range(100))

    def growing(*args: Any, **kwargs: Any) -> Any:
        outputs = real(*args, **kwargs)
        if next(count) == 1:
            bigger = {k: np.concatenate([a, a], axis=-1) for k, a in outputs.arrays.items()}
            outputs = type(outputs)(**{**outputs.__dict__, "arrays": bigger})
        return outputs

    monkeypatch.setattr(service, "predict", growing)
    session = _Session(flight_client, identity.id, SampleLayout.plan(_frame(0)))
    results = []
    for i in range(3):
        session.send(_frame(i))
        results.append(session.answer())
    assert [meta.frame for meta, _ in results] == [0, 1, 2]
    assert results[1][1] is None
    refused = _rebuilt(results[1][0])
    assert isinstance(refused, errors.InternalError)
    assert "output shapes changed within a session" in refused.message
    assert refused.details == {"frame": "1"}
    out = results[2][1]
    assert out is not None
    np.testing.assert_array_equal(out["output"], _frame(2)["input"])
    session.end()


def test_serving_path_is_reported_with_the_outputs(
    flight_client: flight.FlightClient,
    identity: ModelInfo,
    runtime: RuntimeFlightServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = runtime.service
    real = service.predict
    paths: list[str] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        outputs = real(*args, **kwargs)
        paths.append(getattr(outputs, "serving_path", ""))
        return outputs

    monkeypatch.setattr(service, "predict", recording)
    session = _Session(flight_client, identity.id, SampleLayout.plan(_frame(0)))
    session.send(_frame(1))
    meta, _ = session.answer()
    session.end()
    assert [meta.serving_path] == paths


def test_a_schema_that_is_not_tensors_ends_the_exchange_with_a_typed_error(
    flight_client: flight.FlightClient, identity: ModelInfo
) -> None:
    """Attacks the session's input schema with a plain int64 column."""
    command = runtime_pb2.PredictCommand(model_id=identity.id, session=True)
    writer, reader = flight_client.do_exchange(
        flight.FlightDescriptor.for_command(command.SerializeToString())
    )
    batch = pa.record_batch([pa.array([1, 2, 3])], names=["input"])
    writer.begin(batch.schema)
    # the write, or else the read; INVALID_ARGUMENT comes as pyarrow's ArrowInvalid
    with pytest.raises((flight.FlightError, pa.ArrowInvalid)) as caught:
        writer.write_batch(batch)
        reader.read_chunk()
    error = from_flight_error(caught.value)
    assert isinstance(error, errors.InvalidTensorError)
    assert error.details == {"tensor": "input", "got": "int64"}
    with contextlib.suppress(flight.FlightError, pa.ArrowException):  # over, with that error
        writer.close()


def _rebuilt(meta: runtime_pb2.FrameResult) -> errors.ModelRunnerError:
    from modelrunner.converters import from_pb_error

    return from_pb_error(meta.error)


# -- tiled predictions streamed by the service are answered whole --------------------------------


class _Reader:
    """A client's session input, as Flight hands it to the handler."""

    def __init__(self, samples: list[dict[str, np.ndarray]]) -> None:
        self.layout = SampleLayout.plan(samples[0])
        self.schema = self.layout.schema()
        self._batches = iter([b for s in samples for b in encode_sample(self.layout, s)])

    def read_chunk(self) -> _Chunk:
        return _Chunk(next(self._batches))  # StopIteration after the last, as Flight's


class _Chunk:
    def __init__(self, data: pa.RecordBatch) -> None:
        self.data = data
        self.app_metadata = None


class _Writer:
    def __init__(self) -> None:
        self.schema: pa.Schema | None = None
        self.messages: list[tuple[runtime_pb2.FrameResult, pa.RecordBatch | None]] = []

    def begin(self, schema: pa.Schema, options: object = None) -> None:
        assert self.schema is None, "one output schema per exchange"
        self.schema = schema

    def write_metadata(self, buffer: bytes) -> None:
        self.messages.append((runtime_pb2.FrameResult.FromString(bytes(buffer)), None))

    def write_with_metadata(self, batch: pa.RecordBatch, metadata: pa.Buffer) -> None:
        self.messages.append((runtime_pb2.FrameResult.FromString(metadata.to_pybytes()), batch))


class _Context:
    def is_cancelled(self) -> bool:
        return False


@pytest.fixture
def streaming_runtime(tiny: Tiny, tmp_path: Path) -> Iterator[RuntimeFlightServer]:
    """A runtime that streams every tiled prediction back band by band (as one of 64 MiB and
    more would by default), in 2 MiB output batches."""
    package = tiny("halo")
    settings = Settings(cache_dir=tmp_path / "cache", device="cpu", stream_tiles_min_bytes=0)
    service = RuntimeService(settings, lambda model_id: package)
    server = RuntimeFlightServer("grpc://127.0.0.1:0", service, batch_bytes=2 * 1024**2)
    try:
        service.load("halo", "pytorch_state_dict", "cpu")
        yield server
    finally:
        server.shutdown()
        service.close()


def test_a_streamed_tiled_prediction_is_answered_whole_in_a_session(
    streaming_runtime: RuntimeFlightServer, pipelines: Pipelines, tiny: Tiny
) -> None:
    images = [
        np.random.default_rng(i).random((1, 1, 1024, 1024), dtype=np.float32) for i in range(2)
    ]
    command = runtime_pb2.PredictCommand(
        model_id="halo", weight_format="pytorch_state_dict", blocksize=14, session=True
    )
    writer = _Writer()
    serve_session(
        streaming_runtime.exchange_call(
            _Context(),  # type: ignore[arg-type]
            command,
            _Reader([{"raw": image} for image in images]),  # type: ignore[arg-type]
            writer,  # type: ignore[arg-type]
        )
    )
    assert writer.schema is not None
    decoder = SampleDecoder(SampleLayout.from_schema(writer.schema))
    assert decoder.layout.chunks == 2  # 4 MiB of output in 2 MiB batches
    answers = []
    for meta, batch in writer.messages:
        assert batch is not None, meta.error
        answers += [(meta.frame, sample) for sample in decoder.feed(batch)]
    assert [frame for frame, _ in answers] == [0, 1]
    pipeline = pipelines.get(tiny("halo"), "pytorch_state_dict")
    for image, (_, sample) in zip(images, answers, strict=True):
        expected = predict(pipeline, {"raw": image}, blocksize=14)
        np.testing.assert_allclose(sample["out"], expected["out"], rtol=1e-5, atol=1e-6)
