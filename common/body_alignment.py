"""Record batches that land aligned in the receiver's buffer.

Arrow Flight carries a record batch as one protobuf ``FlightData`` message: the IPC header
(``data_header``), the ``app_metadata``, then the body. gRPC hands a receiver the message in a
buffer that starts 16-byte aligned, so the body, and with it every tensor, starts wherever the
fields before it end: for a 16 MiB float32 frame that is byte 145, misaligned for float32, and
the receiver must copy the frame before a framework takes it (about 3.5 ms on a 2-core VM, a
sixth of a lockstep round trip at that size). Growing the ``app_metadata`` by a padding field
(``FrameResult.padding``, field 15: zero bytes) moves the body onto a 16-byte boundary.

The padding is worked out from the sizes of the message's fields (the IPC header's length
depends on the column types and counts, not on the values: it is measured once per batch
structure and size). Where a receiver's buffer is not laid out this way, the batch arrives as before and
is copied: alignment is an optimisation, never a requirement.
"""

from __future__ import annotations

import functools
import struct
import threading

import pyarrow as pa
import pyarrow.flight as flight

ALIGNMENT = 16
_FIELD_TAG_BYTES = 1
"""``data_header`` (field 2) and ``app_metadata`` (field 3) have one-byte tags."""
_BODY_TAG_BYTES = 2
"""``data_body`` is field 1000: a two-byte tag."""
_PADDING_TAG = bytes([(15 << 3) | 2])
"""``FrameResult.padding``: field 15, length-delimited."""
_CACHE_SIZE = 256

_sizes: dict[tuple[object, ...], tuple[int, int]] = {}
_lock = threading.Lock()


def write_aligned(
    writer: flight.MetadataRecordBatchWriter,
    batch: pa.RecordBatch,
    metadata: bytes | pa.Buffer | None = None,
) -> None:
    """Write ``batch`` with ``metadata`` (a serialized ``FrameResult``, or none), padded so
    that the batch's body starts on a 16-byte boundary in the receiver's buffer."""
    padded = aligned_metadata(batch, metadata)
    if padded is None:
        writer.write_batch(batch)
    else:
        writer.write_with_metadata(batch, padded)


def aligned_metadata(
    batch: pa.RecordBatch, metadata: bytes | pa.Buffer | None = None
) -> pa.Buffer | None:
    """``metadata`` with the padding field that aligns ``batch``'s body (None: no metadata is
    needed)."""
    raw = b"" if metadata is None else bytes(metadata)
    header_bytes, body_bytes = _message_sizes(batch)
    suffix = _padding(header_bytes, body_bytes, len(raw))
    if not raw and not suffix:
        return None
    return pa.py_buffer(raw + suffix)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _padding(header_bytes: int, body_bytes: int, metadata_bytes: int) -> bytes:
    if body_offset(header_bytes, body_bytes, metadata_bytes) % ALIGNMENT == 0:
        return b""
    for n in range(2 * ALIGNMENT):
        suffix = _PADDING_TAG + _varint(n) + bytes(n)
        if body_offset(header_bytes, body_bytes, metadata_bytes + len(suffix)) % ALIGNMENT == 0:
            return suffix
    raise AssertionError("some padding of fewer than 32 bytes always aligns")


def body_offset(header_bytes: int, body_bytes: int, metadata_bytes: int = 0) -> int:
    """Where the body starts in a serialized ``FlightData`` of a record batch."""
    offset = _FIELD_TAG_BYTES + len(_varint(header_bytes)) + header_bytes
    if metadata_bytes:
        offset += _FIELD_TAG_BYTES + len(_varint(metadata_bytes)) + metadata_bytes
    return offset + _BODY_TAG_BYTES + len(_varint(body_bytes))


def _message_sizes(batch: pa.RecordBatch) -> tuple[int, int]:
    """The IPC header's and the body's sizes of ``batch`` (an encapsulated IPC message is a
    continuation marker, the header's length, the header and the body); serialized once per
    batch structure and size."""
    # enough for batches of the wire format (one fixed-shape tensor column per tensor); a key
    # that mixes up two structures costs an aligned body, never a wrong result
    key = (batch.num_columns, batch.num_rows, batch.get_total_buffer_size())
    with _lock:
        sizes = _sizes.get(key)
    if sizes is None:
        message = batch.serialize()
        (header_bytes,) = struct.unpack_from("<i", message, 4)
        sizes = (header_bytes, message.size - 8 - header_bytes)
        with _lock:
            if len(_sizes) >= _CACHE_SIZE:
                _sizes.clear()
            _sizes[key] = sizes
    return sizes


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
