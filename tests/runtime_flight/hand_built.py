"""Flight messages built by hand from ``protos/arrow/flight/Flight.proto``, the way
docs/wire-format.md section 2.4 tells a client in another language to build them: pyarrow only
produces the Arrow IPC bytes (``schema.serialize()``, ``batch.serialize()``), and the tests cut
them into ``data_header`` and ``data_body`` themselves."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from tests.compiled_protos import CompiledProto

CONTINUATION = b"\xff\xff\xff\xff"


def split_encapsulated(message: bytes) -> tuple[bytes, bytes]:
    """(data_header, data_body) of one encapsulated IPC message: 0xFFFFFFFF, the flatbuffer's
    length (int32, little-endian, padding included), the flatbuffer, then the body."""
    assert message[:4] == CONTINUATION, "not an encapsulated IPC message"
    (length,) = struct.unpack("<i", message[4:8])
    return message[8 : 8 + length], message[8 + length :]


def encapsulated(header: bytes, body: bytes) -> bytes:
    """The reverse of :func:`split_encapsulated`, the flatbuffer padded to 8 bytes as the IPC
    stream format wants it."""
    padded = header + b"\0" * (-len(header) % 8)
    return CONTINUATION + struct.pack("<i", len(padded)) + padded + body


def exchange_messages(
    flight: CompiledProto,
    command: bytes,
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
) -> list[Any]:
    """A DoExchange's messages: the first carries the CMD descriptor and the Schema, each next
    one a record batch."""
    flight_data = flight.message("FlightData")
    descriptor = flight.message("FlightDescriptor")
    header, _ = split_encapsulated(schema.serialize().to_pybytes())
    cmd = descriptor.DESCRIPTOR.enum_values_by_name["CMD"].number
    messages = [
        flight_data(flight_descriptor=descriptor(type=cmd, cmd=command), data_header=header)
    ]
    for batch in batches:
        header, body = split_encapsulated(batch.serialize().to_pybytes())
        messages.append(flight_data(data_header=header, data_body=body))
    return messages


@dataclass(frozen=True)
class Answer:
    """What the runtime wrote on an exchange, decoded."""

    batches: list[pa.RecordBatch]
    metadata: list[bytes]
    """``app_metadata`` of every message, in order (``b""`` where there was none)."""
    metadata_only: int
    """How many messages carried app_metadata and no IPC message (progress, frame errors)."""


def decode(answers: Sequence[Any]) -> Answer:
    """Rebuild the IPC stream from the answers' data_header/data_body and read it."""
    stream = b"".join(encapsulated(a.data_header, a.data_body) for a in answers if a.data_header)
    batches = list(pa.ipc.open_stream(stream + CONTINUATION + b"\0\0\0\0")) if stream else []
    return Answer(
        batches,
        [a.app_metadata for a in answers],
        sum(1 for a in answers if a.app_metadata and not a.data_header),
    )
