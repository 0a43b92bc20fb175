"""Server reflection: grpc.reflection.v1 beside grpc.reflection.v1alpha.

grpcio-reflection (1.85) implements only v1alpha (grpc/grpc#38576), which gRPC's other
implementations deprecate; current tools ask for v1 first. v1 is the same protocol under
another package name: the same messages with the same fields and numbers, so the same bytes.
So v1 is served by the very servicer that serves v1alpha, registered under v1's method name
with v1alpha's message classes for (de)serializing, and v1's file descriptor, which a client
may ask for like any other, is v1alpha's with its package renamed (protos/grpc/reflection/v1/
reflection.proto is that file; a test compiles it and compares).
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA = "grpc.reflection.v1alpha"
V1 = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"
V1_SERVICE_NAME = f"{V1}.ServerReflection"
SERVICE_NAMES = (reflection.SERVICE_NAME, V1_SERVICE_NAME)


def v1_file_descriptor_proto() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto, from v1alpha's descriptor: the package renamed."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = V1_FILE, V1

    def rename(type_name: str) -> str:
        return type_name.replace(f".{V1ALPHA}.", f".{V1}.")

    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = rename(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type, method.output_type = (
                rename(method.input_type),
                rename(method.output_type),
            )
    options = proto.options
    options.Clear()  # v1alpha's say "deprecated" and name v1alpha's packages
    options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    options.java_multiple_files = True
    options.java_outer_classname = "ServerReflectionProto"
    options.java_package = "io.grpc.reflection.v1"
    return proto


def _register_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(V1_FILE)
    except KeyError:
        pool.AddSerializedFile(v1_file_descriptor_proto().SerializeToString())


def enable_reflection(service_names: list[str], server: grpc.aio.Server) -> None:
    """Reflection v1alpha and v1 on `server`, listing `service_names` and both of themselves."""
    pool = descriptor_pool.Default()
    _register_v1_descriptor(pool)
    servicer = reflection.aio.ReflectionServicer([*service_names, *SERVICE_NAMES], pool=pool)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.method_handlers_generic_handler(
        V1_SERVICE_NAME,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))
