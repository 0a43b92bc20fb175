"""The .proto files shipped for other clients beside del.v1 are what the server serves:
protos/grpc/health/v1/health.proto is the installed grpc.health.v1 service, and
protos/grpc/reflection/v1/reflection.proto is reflection v1 as del_server/reflection.py serves it."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_tools import protoc

from del_server.reflection import v1_file_descriptor_proto

PROTOS = Path(__file__).resolve().parents[2] / "protos"


def compiled(relative: str, tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path / "set.pb"
    args = ["protoc", f"-I{PROTOS}", f"--descriptor_set_out={out}", relative]
    assert protoc.main(args) == 0, f"{relative} does not compile"
    (file,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return file


def comparable(file: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """The parts that define the wire contract: no file name, no derived JSON names."""
    file = descriptor_pb2.FileDescriptorProto.FromString(file.SerializeToString())
    file.ClearField("name")
    file.ClearField("source_code_info")
    for message in [*file.message_type, *(n for m in file.message_type for n in m.nested_type)]:
        for field in message.field:
            field.ClearField("json_name")
    return file


@pytest.mark.parametrize(
    ("relative", "served"),
    [
        pytest.param("grpc/health/v1/health.proto", health_pb2.DESCRIPTOR, id="health"),
        pytest.param("grpc/reflection/v1/reflection.proto", None, id="reflection v1"),
    ],
)
def test_a_shipped_proto_is_the_service_the_server_runs(relative, served, tmp_path):
    if served is None:
        expected = v1_file_descriptor_proto()
    else:
        expected = descriptor_pb2.FileDescriptorProto()
        served.CopyToProto(expected)
    assert comparable(compiled(relative, tmp_path)) == comparable(expected)
