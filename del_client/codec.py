"""Bit packing of b-bit symbols and the frames that carry them (protos/del/v1/frames.proto).

Bit order (the wire contract, also written in frames.proto): symbols are taken token-major
((T, k) row-major), each written as b bits most significant bit first into one bit stream
whose first bit is the most significant bit of byte 0; the last byte is zero-padded, and a
payload is exactly ceil(count·b/8) bytes. A receiver rejects any other length and any
non-zero padding, so every payload has exactly one valid reading.

That is the "packed" payload encoding, the default. A stream whose header says "ans" (when
the server's manifest offers it) carries each frame's symbols entropy-coded instead (ans.py,
with symbol_model.py's model): about the symbols' entropy, a fifth less than packing at b = 4.

The server imports this module to decode: frame parsing exists once, here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from . import ans
from .errors import FrameError, LimitExceededError
from .mechanism import PrivacySpec, check_embeddings, compiled, decode_table
from .parameters import MAX_FRAME_PAYLOAD_BYTES, check_bits
from .proto import frames_pb2
from .symbol_model import SymbolModel

# Payload encodings by name, as MechanismParams.payload_encoding carries them.
ENCODINGS = {
    "packed": frames_pb2.PAYLOAD_ENCODING_PACKED,
    "ans": frames_pb2.PAYLOAD_ENCODING_ANS,
}


def packed_size(count: int, bits: int) -> int:
    """Bytes needed for `count` symbols of `bits` bits."""
    return (count * bits + 7) // 8


@compiled
def _pack(symbols, bits, out):  # pragma: no cover - compiled
    acc = np.uint32(0)
    held = 0
    o = 0
    for s in symbols:
        acc = ((acc << bits) | np.uint32(s)) & np.uint32(0xFFFF)
        held += bits
        if held >= 8:
            held -= 8
            out[o] = (acc >> held) & 0xFF
            o += 1
    if held:
        out[o] = (acc << (8 - held)) & 0xFF


@compiled
def _unpack(payload, bits, out):  # pragma: no cover - compiled
    """Fill out with symbols; return the padding bits left in the last byte (must be 0)."""
    mask = np.uint32((1 << bits) - 1)
    acc = np.uint32(0)
    held = 0
    i = 0
    for n in range(out.size):
        if held < bits:
            acc = ((acc << 8) | np.uint32(payload[i])) & np.uint32(0xFFFF)
            i += 1
            held += 8
        held -= bits
        out[n] = (acc >> held) & mask
    return acc & np.uint32((1 << held) - 1)


def pack_symbols(symbols: np.ndarray, bits: int) -> bytes:
    """Pack uint8 symbols (any shape, read in C order) of `bits` bits each into bytes."""
    check_bits(bits, error=FrameError)
    flat = np.ascontiguousarray(symbols, dtype=np.uint8).reshape(-1)
    if flat.size and int(flat.max()) >= 1 << bits:
        raise FrameError(f"a symbol does not fit in {bits} bits (max {int(flat.max())})")
    out = np.empty(packed_size(flat.size, bits), dtype=np.uint8)
    if bits == 8:
        out[:] = flat
    else:
        _pack(flat, bits, out)
    return out.tobytes()


def unpack_symbols(payload: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of pack_symbols: `count` uint8 symbols, or FrameError for a malformed payload."""
    check_bits(bits, error=FrameError)
    if len(payload) != packed_size(count, bits):
        raise FrameError(
            f"payload of {len(payload)} bytes, expected {packed_size(count, bits)} "
            f"for {count} symbols of {bits} bits"
        )
    data = np.frombuffer(payload, dtype=np.uint8)
    if bits == 8:
        return data.copy()
    out = np.empty(count, dtype=np.uint8)
    if _unpack(data, bits, out):
        raise FrameError("non-zero padding bits after the last symbol")
    return out


@dataclass(frozen=True)
class RawSpec:
    """The no-privacy baseline: unprojected float32 embeddings of width `dim`, little-endian."""

    dim: int
    bits: int = 32

    @property
    def bits_per_token(self) -> int:
        return self.dim * self.bits


FrameSpec = PrivacySpec | RawSpec


def mechanism_params(spec: FrameSpec, encoding: str = "packed") -> frames_pb2.MechanismParams:
    """The stream header's public parameters for `spec`, its frames in `encoding`."""
    if isinstance(spec, RawSpec):
        return frames_pb2.MechanismParams(
            mechanism=frames_pb2.MECHANISM_RAW_FLOAT32, dim=spec.dim, bits=spec.bits
        )
    return frames_pb2.MechanismParams(
        mechanism=frames_pb2.MECHANISM_BINOMIAL,
        dim=spec.dim,
        bits=spec.bits,
        clip=spec.clip,
        scale=spec.scale,
        payload_encoding=ENCODINGS[encoding],
    )


def payload_encoding(params: frames_pb2.MechanismParams) -> str:
    """The name of a received header's payload encoding; FrameError for one that is unknown
    or does not apply (raw floats are not symbols: nothing to code)."""
    names = {value: name for name, value in ENCODINGS.items()}
    if params.payload_encoding not in names:
        raise FrameError(f"unknown payload encoding {params.payload_encoding}")
    name = names[params.payload_encoding]
    if name != "packed" and params.mechanism == frames_pb2.MECHANISM_RAW_FLOAT32:
        raise FrameError(f"raw float32 frames are not coded: payload encoding {name!r}")
    return name


def spec_from_params(params: frames_pb2.MechanismParams) -> FrameSpec:
    """Validate a received header into a spec; FrameError names what is wrong."""
    if params.mechanism == frames_pb2.MECHANISM_RAW_FLOAT32:
        if params.dim < 1 or params.bits != 32:
            raise FrameError(
                f"raw float32 frames need dim >= 1 and bits=32, got {params.dim}, {params.bits}"
            )
        if params.clip != 0 or params.scale != 0:  # NaN != 0 too
            raise FrameError(
                f"raw float32 frames are neither clipped nor scaled: clip and scale must be 0, "
                f"got {params.clip!r}, {params.scale!r}"
            )
        return RawSpec(dim=params.dim)
    if params.mechanism != frames_pb2.MECHANISM_BINOMIAL:
        raise FrameError(f"unknown mechanism {params.mechanism}")
    try:
        return PrivacySpec(dim=params.dim, bits=params.bits, clip=params.clip, scale=params.scale)
    except ValueError as exc:
        raise FrameError(f"invalid mechanism parameters: {exc}") from exc


def tokens_per_frame(spec: FrameSpec, max_payload_bytes: int = MAX_FRAME_PAYLOAD_BYTES) -> int:
    """The most tokens whose packed symbols fit in one frame's payload budget."""
    return max(1, max_payload_bytes * 8 // spec.bits_per_token)


def encode_frames(
    data: np.ndarray,
    spec: FrameSpec,
    *,
    max_payload_bytes: int = MAX_FRAME_PAYLOAD_BYTES,
    model: SymbolModel | None = None,
) -> Iterator[frames_pb2.Frame]:
    """Split (T, k) symbols (or raw (T, d) float32 embeddings) into numbered frames: packed,
    or entropy-coded with `model` (the "ans" encoding) when one is given."""
    if isinstance(spec, RawSpec):
        data = check_embeddings(data, spec.dim).astype("<f4", copy=False)
    elif data.ndim != 2 or data.shape[1] != spec.dim:
        raise FrameError(f"symbols must have shape (tokens, {spec.dim}), got {data.shape}")
    step = tokens_per_frame(spec, max_payload_bytes)
    chunks = (data[start : start + step] for start in range(0, data.shape[0], step))
    if model is not None:
        payloads = (p for chunk in chunks for p in _coded(chunk, model, max_payload_bytes))
    elif isinstance(spec, RawSpec):
        payloads = ((chunk.shape[0], chunk.tobytes()) for chunk in chunks)
    else:
        payloads = ((chunk.shape[0], pack_symbols(chunk, spec.bits)) for chunk in chunks)
    for sequence, (tokens, payload) in enumerate(payloads):
        yield frames_pb2.Frame(
            sequence=sequence, token_count=tokens, dim=spec.dim, bits=spec.bits, payload=payload
        )


def _coded(
    chunk: np.ndarray, model: SymbolModel, max_payload_bytes: int
) -> Iterator[tuple[int, bytes]]:
    """(tokens, payload) of `chunk` coded; halved until each part fits the budget, for the rare
    chunk whose symbols are so unlikely under the model that coding makes them larger."""
    payload = ans.encode(chunk, model)
    if len(payload) <= max_payload_bytes or chunk.shape[0] == 1:
        yield chunk.shape[0], payload
        return
    half = chunk.shape[0] // 2
    yield from _coded(chunk[:half], model, max_payload_bytes)
    yield from _coded(chunk[half:], model, max_payload_bytes)


@dataclass
class FrameAssembler:
    """Receiving side: checks each frame against the header and its predecessors.

    Frames must arrive numbered 0, 1, 2, ... with the header's dim and bits, at least one
    token each, and no more than `max_tokens` tokens in total. `max_frames` and
    `max_payload_bytes` bound the work a stream can cause, checked before a payload is read.
    With a `model`, payloads are entropy-coded ("ans"); without one, packed.
    """

    spec: FrameSpec
    max_tokens: int
    max_frames: int | None = None
    max_payload_bytes: int | None = None
    model: SymbolModel | None = None

    def __post_init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._tokens = 0
        self._coded_bytes = 0

    @property
    def tokens(self) -> int:
        return self._tokens

    @property
    def payload_bits(self) -> int:
        """The prompt's payload bits: packed, tokens × bits per token (no padding); coded, the
        bits of the payloads as received."""
        if self.model is not None:
            return 8 * self._coded_bytes
        return self._tokens * self.spec.bits_per_token

    def add(self, frame: frames_pb2.Frame) -> None:
        expected = len(self._chunks)
        if self.max_frames is not None and expected >= self.max_frames:
            raise LimitExceededError(f"the stream exceeds the limit of {self.max_frames} frames")
        if self.max_payload_bytes is not None and len(frame.payload) > self.max_payload_bytes:
            raise LimitExceededError(
                f"a frame payload of {len(frame.payload)} bytes exceeds the limit of "
                f"{self.max_payload_bytes} bytes"
            )
        if frame.sequence != expected:
            raise FrameError(f"frame sequence {frame.sequence}, expected {expected}")
        if frame.dim != self.spec.dim or frame.bits != self.spec.bits:
            raise FrameError(
                f"frame has dim={frame.dim} bits={frame.bits}, "
                f"header says dim={self.spec.dim} bits={self.spec.bits}"
            )
        if frame.token_count == 0:
            raise FrameError("frame carries no tokens")
        if self._tokens + frame.token_count > self.max_tokens:
            raise LimitExceededError(f"prompt exceeds the limit of {self.max_tokens} tokens")
        count = frame.token_count * frame.dim
        if isinstance(self.spec, RawSpec):
            chunk = _raw_floats(frame.payload, count)
        elif self.model is not None:
            chunk = ans.decode(frame.payload, self.model, frame.token_count)
            self._coded_bytes += len(frame.payload)
        else:
            chunk = unpack_symbols(frame.payload, frame.bits, count)
        self._chunks.append(chunk.reshape(frame.token_count, frame.dim))
        self._tokens += frame.token_count

    def symbols(self) -> np.ndarray:
        """All received data, (T, k): uint8 symbols, or float32 for raw frames."""
        if not self._chunks:
            dtype = np.float32 if isinstance(self.spec, RawSpec) else np.uint8
            return np.empty((0, self.spec.dim), dtype=dtype)
        return np.concatenate(self._chunks)

    def embeddings(self) -> np.ndarray:
        """Decoded (T, k) float32 estimates x̂ (raw frames: the embeddings as sent)."""
        if isinstance(self.spec, RawSpec):
            return self.symbols()
        return decode_table(self.spec)[self.symbols()]


def _raw_floats(payload: bytes, count: int) -> np.ndarray:
    if len(payload) != 4 * count:
        raise FrameError(
            f"payload of {len(payload)} bytes, expected {4 * count} for {count} float32"
        )
    values = np.frombuffer(payload, dtype="<f4").astype(np.float32)
    if not np.isfinite(values).all():
        raise FrameError("raw payload contains NaN or infinite values")
    return values
