"""gRPC server reflection in both versions clients ask for: ``grpc.reflection.v1`` (grpcurl,
Postman and most current tools try it first) and the older ``grpc.reflection.v1alpha``.

grpcio-reflection 1.85 serves only v1alpha. The two versions have the same messages, field for
field, under two package names, so the same bytes parse as either: v1 is served by a second
handler under v1's method name that runs the v1alpha servicer with v1alpha's message classes.
That servicer does not look at the method it was called as (it answers each request from the
descriptor pool and the list of names), so it serves v1 unchanged.

For a v1 client to reflect on the v1 service itself, its file must be in the descriptor pool:
:func:`_v1_file` derives it from v1alpha's (the package and type names renamed), which keeps
it identical to ``protos/grpc/reflection/v1/reflection.proto`` without generated code for it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
SERVICE_NAMES = (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
"""Both reflection services, to list among a server's services."""
V1_FILE_NAME = "grpc/reflection/v1/reflection.proto"
"""The name the v1 file has in the descriptor pool: the one grpc's own protos give it."""

_V1ALPHA_PACKAGE = reflection_pb2.DESCRIPTOR.package
_V1_PACKAGE = "grpc.reflection.v1"


def enable_server_reflection(service_names: Sequence[str], server: grpc.Server) -> None:
    """Serve reflection v1 and v1alpha on ``server``, listing ``service_names`` (fully
    qualified; include :data:`SERVICE_NAMES` to list the reflection services themselves)."""
    _v1_file()
    servicer = reflection.ReflectionServicer(service_names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler})
            for name in SERVICE_NAMES
        ]
    )


@functools.cache
def _v1_file() -> descriptor.FileDescriptor:
    """v1's file in the default descriptor pool (added once per process: a pool refuses a
    second file that defines the same symbols)."""
    pool = descriptor_pool.Default()
    try:
        return pool.FindFileByName(V1_FILE_NAME)
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = V1_FILE_NAME
    proto.package = _V1_PACKAGE
    old, new = f".{_V1ALPHA_PACKAGE}.", f".{_V1_PACKAGE}."
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name.removeprefix(old)
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type.removeprefix(old)
            method.output_type = new + method.output_type.removeprefix(old)
    # v1alpha's options name its Java and Go packages and mark it deprecated: none apply to v1
    proto.ClearField("options")
    pool.AddSerializedFile(proto.SerializeToString())
    return pool.FindFileByName(V1_FILE_NAME)
