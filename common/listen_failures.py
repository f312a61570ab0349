"""Why a server could not listen, told to a person: which port, whether a modelrunner answers
there, and the flag that picks another.

gRPC says only "Failed to bind" and Arrow Flight "Server did not start properly"; this module
asks the operating system why (binding a socket of its own to the same address), and, for a
port in use, asks whoever holds it whether it is a modelrunner.
"""

from __future__ import annotations

import errno
import socket
from typing import Literal

from modelrunner import errors

Plane = Literal["control", "runtime"]
PROBE_TIMEOUT_S = 1.0

_FLAGS: dict[Plane, str] = {"control": "--port", "runtime": "--flight-port"}
_NAMES: dict[Plane, str] = {"control": "control service", "runtime": "runtime"}


def listen_failure(host: str, port: int, plane: Plane) -> errors.UnavailableError:
    """The error for a server of ``plane`` that could not listen on ``host:port``."""
    flag = _FLAGS[plane]
    where = f"{host}:{port}"
    reason = _bind_error(host, port)
    if reason is None or reason.errno != errno.EADDRINUSE:
        cause = reason.strerror if reason is not None else "the server did not start"
        return errors.UnavailableError(
            f"the {_NAMES[plane]} cannot listen on {where}: {cause}"
            + (f"; is {host} an address of this machine?" if reason is not None else ""),
            details={"address": where},
        )
    probe_host = "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host
    holder = (_control_answer if plane == "control" else _runtime_answer)(probe_host, port)
    return errors.UnavailableError(
        f"port {port} is in use on {host or 'every interface'}: {holder}. Start this "
        f"{_NAMES[plane]} on another port with {flag} PORT ({flag} 0: any free port)",
        details={"address": where, "flag": flag},
    )


def _bind_error(host: str, port: int) -> OSError | None:
    """What the operating system says to binding ``host:port`` now (None: it would work)."""
    bind_host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            # as gRPC and Flight bind: a port a closed server left in TIME_WAIT is free
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((bind_host, port))
    except OSError as e:
        return e
    return None


def _control_answer(host: str, port: int) -> str:
    import grpc

    from modelrunner.v1 import control_pb2, control_pb2_grpc

    address = f"{host}:{port}"
    with grpc.insecure_channel(address) as channel:
        stub = control_pb2_grpc.ControlServiceStub(channel)
        try:
            info = stub.GetServerInfo(control_pb2.GetServerInfoRequest(), timeout=PROBE_TIMEOUT_S)
        except grpc.RpcError as e:
            code = e.code()  # type: ignore[attr-defined]
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                return (
                    "a modelrunner control service with tokens answers there "
                    f"(`modelrunner info --server {address} --token ...`)"
                )
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return "a gRPC server that is not a modelrunner answers there"
            return _other_program(host, port)
    return (
        f"a modelrunner control service answers there (modelrunner {info.modelrunner_version}; "
        f"`modelrunner info --server {address}`): use it, or stop it first"
    )


def _runtime_answer(host: str, port: int) -> str:
    import pyarrow.flight as flight

    try:
        with flight.connect(f"grpc://{host}:{port}") as client:
            actions = {
                a.type for a in client.list_actions(flight.FlightCallOptions(PROBE_TIMEOUT_S))
            }
    except flight.FlightUnauthenticatedError:
        return "a modelrunner runtime (or another Arrow Flight server) with tokens answers there"
    except Exception:  # noqa: BLE001 - whatever holds the port does not speak Flight to us
        return _other_program(host, port)
    if "load_model" in actions:
        return (
            "a modelrunner runtime answers there (that of a running `modelrunner serve`, "
            "or another `modelrunner runtime`)"
        )
    return "an Arrow Flight server that is not a modelrunner runtime answers there"


def _other_program(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError:
        return "no server answers there, but the port is held (a server starting or stopping?)"
    return (
        "another program listens there (or a modelrunner with TLS: "
        "`modelrunner info --server HOST:PORT --tls-ca CA.pem`)"
    )
