"""The third-party protos in ``protos/`` compiled during the test run, as a client in another
language would use them: message classes and raw gRPC stubs built from the compiled
descriptors alone, with nothing of pyarrow's, grpcio-health-checking's or grpcio-reflection's
own code.

Each file lands in a descriptor pool of its own: the default pool already holds grpcio's
``grpc.health.v1`` and the server's ``grpc.reflection.v1`` symbols, and a pool refuses a second
file that defines the same names. protoc runs in a process of its own: grpc_tools' protoc
crashes in a process that has already served gRPC calls (see ``tests/common/test_protos.py``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, message, message_factory

PROTOS = Path(__file__).resolve().parents[1] / "protos"
FLIGHT = "arrow/flight/Flight.proto"
HEALTH = "grpc/health/v1/health.proto"
REFLECTION = "grpc/reflection/v1/reflection.proto"


@dataclass(frozen=True)
class CompiledProto:
    """One compiled ``.proto``: its descriptors in a pool of their own."""

    pool: descriptor_pool.DescriptorPool
    file: descriptor.FileDescriptor
    proto: descriptor_pb2.FileDescriptorProto
    """The file as protoc compiled it (``json_name`` filled in)."""

    def message(self, name: str) -> type[message.Message]:
        """The message class of ``name`` (in the file's package)."""
        found = self.pool.FindMessageTypeByName(f"{self.file.package}.{name}")
        return message_factory.GetMessageClass(found)

    def stub(self, channel: grpc.Channel, service: str) -> dict[str, Callable[..., Any]]:
        """A callable per method of ``service``, by method name, as protoc's gRPC plugins
        generate for other languages: the method's path, streaming kind and message types."""
        found = self.pool.FindServiceByName(f"{self.file.package}.{service}")
        calls: dict[str, Callable[..., Any]] = {}
        for method in found.methods:
            request = message_factory.GetMessageClass(method.input_type)
            response = message_factory.GetMessageClass(method.output_type)
            kind = {
                (False, False): channel.unary_unary,
                (False, True): channel.unary_stream,
                (True, False): channel.stream_unary,
                (True, True): channel.stream_stream,
            }[(method.client_streaming, method.server_streaming)]
            calls[method.name] = kind(
                f"/{found.full_name}/{method.name}",
                request_serializer=request.SerializeToString,
                response_deserializer=response.FromString,
            )
        return calls


def compile_proto(relative: str, out_dir: Path) -> CompiledProto:
    """Compile ``protos/<relative>`` with grpc_tools' protoc into ``out_dir``."""
    import grpc_tools

    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / (relative.replace("/", "_") + ".pb")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{well_known}",
            f"--descriptor_set_out={target}",
            "--include_imports",
            relative,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    files = descriptor_pb2.FileDescriptorSet.FromString(target.read_bytes()).file
    pool = descriptor_pool.DescriptorPool()
    for f in files:  # imports first: protoc writes the set in dependency order
        pool.AddSerializedFile(f.SerializeToString())
    (proto,) = (f for f in files if f.name == relative)
    return CompiledProto(pool, pool.FindFileByName(relative), proto)


def comparable(proto: descriptor_pb2.DescriptorProto, package: str = "") -> Any:
    """What a message puts on the wire and how it is named: per field its name, number, type,
    label, message/enum type (relative to ``package``), oneof and proto3 ``optional``; nested
    messages and enums likewise. ``json_name`` (which protoc fills in and generated Python
    code leaves out) and options do not count."""
    prefix = f".{package}." if package else ""
    return {
        "name": proto.name,
        "fields": [
            (
                f.name,
                f.number,
                f.type,
                f.label,
                f.type_name.removeprefix(prefix),
                f.oneof_index if f.HasField("oneof_index") else None,
                f.proto3_optional,
            )
            for f in proto.field
        ],
        "oneofs": [o.name for o in proto.oneof_decl],
        "nested": [comparable(n, package) for n in proto.nested_type],
        "enums": [(e.name, [(v.name, v.number) for v in e.value]) for e in proto.enum_type],
        "map_entry": proto.options.map_entry,
    }


def comparable_file(proto: descriptor_pb2.FileDescriptorProto) -> Any:
    """:func:`comparable` of every message, enum and service of a file, package-relative."""
    prefix = f".{proto.package}."
    return {
        "messages": [comparable(m, proto.package) for m in proto.message_type],
        "enums": [(e.name, [(v.name, v.number) for v in e.value]) for e in proto.enum_type],
        "services": [
            (
                s.name,
                [
                    (
                        m.name,
                        m.input_type.removeprefix(prefix),
                        m.output_type.removeprefix(prefix),
                        m.client_streaming,
                        m.server_streaming,
                    )
                    for m in s.method
                ],
            )
            for s in proto.service
        ],
    }


def file_proto(file: descriptor.FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    return proto
