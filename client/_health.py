"""The standard gRPC health check (``grpc.health.v1.Health/Check``) from the client.

The client's base install has no ``grpcio-health-checking``; the two messages have one field
each, so they are encoded here (field 1: the service name; field 1 of the answer: the status)."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from modelrunner import errors
from modelrunner.transport_errors import translated_errors

_CHECK = "/grpc.health.v1.Health/Check"
_STATUSES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _encode_request(service: str) -> bytes:
    name = service.encode()
    length, size = bytearray(), len(name)
    while True:  # varint
        byte, size = size & 0x7F, size >> 7
        length.append(byte | (0x80 if size else 0))
        if not size:
            break
    return (b"\x0a" + bytes(length) + name) if name else b""


def _decode_status(data: bytes) -> str:
    # HealthCheckResponse{status = 1 (enum, varint)}; an absent field is 0 (UNKNOWN)
    if len(data) >= 2 and data[0] == 0x08:
        return _STATUSES.get(data[1], "UNKNOWN")
    return "UNKNOWN"


def check_health(channel: grpc.Channel, service: str, *, timeout: float | None) -> str:
    """The status of ``service`` ("" for the server): "SERVING", "NOT_SERVING", ...; an unknown
    service name raises NotFoundError."""
    call = channel.unary_unary(
        _CHECK, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    with translated_errors():
        return _decode_status(call(_encode_request(service), timeout=timeout))


def wait_until_serving(health: Callable[..., str], address: str, timeout: float) -> None:
    """Ask ``health`` (the client's, which takes ``timeout=``) every 0.1 s until the server is
    SERVING; DeadlineExceededError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            if health(timeout=max(0.1, left)) == "SERVING":
                return
        except errors.UnavailableError:
            pass
        if left <= 0:
            raise errors.DeadlineExceededError(
                f"the server at {address} was not ready within {timeout:g} s"
            )
        time.sleep(min(0.1, max(0.0, left)))
