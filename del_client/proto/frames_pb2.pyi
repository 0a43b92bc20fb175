from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Mechanism(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MECHANISM_UNSPECIFIED: _ClassVar[Mechanism]
    MECHANISM_BINOMIAL: _ClassVar[Mechanism]
    MECHANISM_RAW_FLOAT32: _ClassVar[Mechanism]

class PayloadEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAYLOAD_ENCODING_PACKED: _ClassVar[PayloadEncoding]
    PAYLOAD_ENCODING_ANS: _ClassVar[PayloadEncoding]
MECHANISM_UNSPECIFIED: Mechanism
MECHANISM_BINOMIAL: Mechanism
MECHANISM_RAW_FLOAT32: Mechanism
PAYLOAD_ENCODING_PACKED: PayloadEncoding
PAYLOAD_ENCODING_ANS: PayloadEncoding

class MechanismParams(_message.Message):
    __slots__ = ("mechanism", "dim", "bits", "clip", "scale", "payload_encoding")
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_ENCODING_FIELD_NUMBER: _ClassVar[int]
    mechanism: Mechanism
    dim: int
    bits: int
    clip: float
    scale: float
    payload_encoding: PayloadEncoding
    def __init__(self, mechanism: _Optional[_Union[Mechanism, str]] = ..., dim: _Optional[int] = ..., bits: _Optional[int] = ..., clip: _Optional[float] = ..., scale: _Optional[float] = ..., payload_encoding: _Optional[_Union[PayloadEncoding, str]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("sequence", "token_count", "dim", "bits", "payload")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    token_count: int
    dim: int
    bits: int
    payload: bytes
    def __init__(self, sequence: _Optional[int] = ..., token_count: _Optional[int] = ..., dim: _Optional[int] = ..., bits: _Optional[int] = ..., payload: _Optional[bytes] = ...) -> None: ...
