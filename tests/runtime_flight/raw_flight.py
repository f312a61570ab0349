"""A Flight client written by hand, as a client in another language would: raw gRPC calls with
hand-encoded protobuf (``Flight.proto``), so tests see the status codes that reach any client
and can send what pyarrow never would (garbage, truncated messages)."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
import pyarrow as pa

SERVICE = "/arrow.flight.protocol.FlightService/"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, value: bytes | int) -> bytes:
    """One protobuf field: length-delimited for bytes, varint for int."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def action(action_type: str, body: bytes = b"") -> bytes:
    """``Action``: field 1 type (string), field 2 body (bytes)."""
    return field(1, action_type.encode()) + field(2, body)


def command_descriptor(command: bytes) -> bytes:
    """``FlightDescriptor`` of type CMD (2) with ``command``."""
    return field(1, 2) + field(2, command)


def flight_data(
    *,
    descriptor: bytes | None = None,
    header: bytes = b"",
    body: bytes = b"",
    app_metadata: bytes = b"",
) -> bytes:
    """``FlightData``: 1 flight_descriptor, 2 data_header, 3 app_metadata, 1000 data_body."""
    out = b""
    if descriptor is not None:
        out += field(1, descriptor)
    if header:
        out += field(2, header)
    if app_metadata:
        out += field(3, app_metadata)
    if body:
        out += field(1000, body)
    return out


def ipc_messages(
    schema: pa.Schema, batches: Iterable[pa.RecordBatch] = ()
) -> list[tuple[bytes, bytes]]:
    """(data_header, data_body) of each IPC message: the flatbuffer ``Message`` without the
    continuation marker and length prefix, and the body."""
    messages = [pa.ipc.read_message(schema.serialize())]
    messages += [pa.ipc.read_message(b.serialize()) for b in batches]
    return [(m.metadata.to_pybytes(), m.body.to_pybytes() if m.body else b"") for m in messages]


class RawFlight:
    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RawFlight:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def do_action(self, request: bytes, timeout: float = 30) -> list[bytes]:
        call = self.channel.unary_stream(SERVICE + "DoAction")
        return list(call(request, timeout=timeout))

    def do_exchange(self, messages: Iterable[bytes], timeout: float = 30) -> list[bytes]:
        call = self.channel.stream_stream(SERVICE + "DoExchange")
        return list(call(iter(list(messages)), timeout=timeout))
