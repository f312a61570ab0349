"""The runtime's end notice (docs/wire-format.md, section 3) as the Python client takes it, on
every exchange kind that reads answers while it sends: a metadata-only message with
``FrameResult.frame = -1`` and the error the call ends with. The client ends its side of the
exchange (it does not cancel: the runtime waits for that end before it ends the call) and raises
the call's typed error.

A hand-written Flight server sends the notice after the first sample, then waits for the
client's end, as the runtime does, and records how the client's side ended."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pyarrow.flight as flight
import pytest

from modelrunner import converters, errors
from modelrunner.client._stream import FrameStream
from modelrunner.runtime_client.cancellation import CallRegistry
from modelrunner.runtime_client.exchanges import END_NOTICE_FRAME
from modelrunner.runtime_client.sessions import SessionPool
from modelrunner.transport_errors import to_flight_error
from modelrunner.v1 import runtime_pb2

IMAGE = np.zeros((1, 1, 8, 8), np.float32)
REFUSAL = errors.UnauthenticatedError("the token is not known to this server (revoked?)")


class NoticeServer(flight.FlightServerBase):  # type: ignore[misc]
    """Reads the first input batch of any exchange, sends the end notice, reads on until the
    client ends its side (``ended``) or cancels, then ends the call with :data:`REFUSAL`."""

    def __init__(self) -> None:
        super().__init__("grpc://127.0.0.1:0")
        self.ended: list[str] = []
        self.done = threading.Event()

    def do_exchange(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
    ) -> None:
        try:
            reader.read_chunk()
            writer.write_metadata(
                runtime_pb2.FrameResult(
                    frame=END_NOTICE_FRAME, error=converters.to_pb_error(REFUSAL)
                ).SerializeToString()
            )
            try:
                for _ in reader:
                    pass
                self.ended.append("cancelled" if context.is_cancelled() else "ended its side")
            except Exception:  # noqa: BLE001 - the client cancelled
                self.ended.append("cancelled")
            raise to_flight_error(REFUSAL, context)
        finally:
            self.done.set()


@pytest.fixture
def notice_server() -> Iterator[NoticeServer]:
    server = NoticeServer()
    try:
        yield server
    finally:
        server.shutdown()


def test_a_session_ends_its_side_on_the_end_notice_and_raises_the_calls_error(
    notice_server: NoticeServer,
) -> None:
    uri = f"grpc://127.0.0.1:{notice_server.port}"
    command = runtime_pb2.PredictCommand(model_id="m" * 64, session=True).SerializeToString()
    pool = SessionPool(CallRegistry())
    with (
        flight.connect(uri) as connection,
        pytest.raises(errors.UnauthenticatedError, match="revoked"),
    ):
        pool.predict(connection, uri, command, {"input": IMAGE}, {}, timeout=30, batch_bytes=2**24)
    pool.close()
    assert notice_server.done.wait(10)
    assert notice_server.ended == ["ended its side"]


def test_a_frame_stream_ends_its_side_on_the_end_notice_and_raises_the_calls_error(
    notice_server: NoticeServer,
) -> None:
    """The frame source has nothing more to send for now (a microscope between
    acquisitions): the notice still ends the stream at once."""
    more = threading.Event()

    def frames() -> Iterator[np.ndarray]:
        yield IMAGE
        more.wait(30)
        yield IMAGE

    command = runtime_pb2.PredictCommand(model_id="m" * 64, stream=True)
    with flight.connect(f"grpc://127.0.0.1:{notice_server.port}") as connection:
        stream = FrameStream(
            connection,
            command,
            frames(),
            max_in_flight=4,
            timeout=None,
            batch_bytes=2**24,
            on_error="raise",
        )
        try:
            with pytest.raises(errors.UnauthenticatedError, match="revoked"):
                for _ in stream:
                    pass
        finally:
            more.set()
            stream.close()
    assert notice_server.done.wait(10)
    assert notice_server.ended == ["ended its side"]
