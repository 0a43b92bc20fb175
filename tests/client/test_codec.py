"""Bit packing and frames: every width round-trips, every malformed payload is refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from del_client.codec import (
    FrameAssembler,
    RawSpec,
    encode_frames,
    mechanism_params,
    pack_symbols,
    packed_size,
    spec_from_params,
    unpack_symbols,
)
from del_client.errors import FrameError, LimitExceededError
from del_client.mechanism import PrivacySpec, decode_table
from del_client.proto import frames_pb2


@st.composite
def symbols_and_bits(draw, max_count: int = 2000):
    bits = draw(st.integers(1, 8))
    symbols = draw(
        hnp.arrays(np.uint8, st.integers(0, max_count), elements=st.integers(0, (1 << bits) - 1))
    )
    return symbols, bits


def reference_pack(symbols: np.ndarray, bits: int) -> bytes:
    """The documented bit order, spelled out bit by bit: MSB first, zero padding."""
    stream = "".join(format(int(s), f"0{bits}b") for s in symbols)
    stream += "0" * (-len(stream) % 8)
    return bytes(int(stream[i : i + 8], 2) for i in range(0, len(stream), 8))


@given(symbols_and_bits())
def test_unpack_undoes_pack_for_every_width_and_count(case):
    symbols, bits = case
    payload = pack_symbols(symbols, bits)
    assert len(payload) == packed_size(symbols.size, bits)
    np.testing.assert_array_equal(unpack_symbols(payload, bits, symbols.size), symbols)


@given(symbols_and_bits(max_count=200))
def test_pack_follows_the_documented_msb_first_bit_order(case):
    symbols, bits = case
    assert pack_symbols(symbols, bits) == reference_pack(symbols, bits)


def test_pack_writes_known_bytes():
    assert pack_symbols(np.array([1, 2, 3], np.uint8), 4) == bytes([0x12, 0x30])
    assert pack_symbols(np.array([5, 3], np.uint8), 3) == bytes([0b10101100])
    assert pack_symbols(np.array([1, 0, 1], np.uint8), 1) == bytes([0b10100000])


@given(symbols_and_bits(), st.sampled_from([-1, 1]))
def test_unpack_rejects_payload_longer_or_shorter_than_count_says(case, change):
    symbols, bits = case
    payload = pack_symbols(symbols, bits)
    wrong = payload + b"\x00" if change > 0 else payload[:-1]
    if len(payload) == 0 and change < 0:
        wrong = b""
        with pytest.raises(FrameError, match="payload"):
            unpack_symbols(wrong, bits, symbols.size + 8)
        return
    with pytest.raises(FrameError, match="payload"):
        unpack_symbols(wrong, bits, symbols.size)


@given(st.integers(1, 7), st.integers(1, 50), st.data())
def test_unpack_rejects_nonzero_padding_bits(bits, count, data):
    padding = -(count * bits) % 8
    if padding == 0:
        count += 1
        padding = -(count * bits) % 8
    if padding == 0:
        return  # bits * count is a multiple of 8 for every count: no padding exists
    payload = bytearray(pack_symbols(np.zeros(count, np.uint8), bits))
    payload[-1] |= 1 << data.draw(st.integers(0, padding - 1))
    with pytest.raises(FrameError, match="padding"):
        unpack_symbols(bytes(payload), bits, count)


@pytest.mark.parametrize("bits", [0, 9])
def test_pack_and_unpack_reject_bit_widths_outside_1_to_8(bits):
    with pytest.raises(FrameError, match="bits"):
        pack_symbols(np.zeros(4, np.uint8), bits)
    with pytest.raises(FrameError, match="bits"):
        unpack_symbols(b"\x00", bits, 1)


def test_pack_rejects_symbols_wider_than_the_bit_width():
    with pytest.raises(FrameError, match="does not fit"):
        pack_symbols(np.array([0, 16], np.uint8), 4)


SPEC = PrivacySpec.from_mu(mu=10.0, dim=16, bits=4, clip=1.0)


def random_symbols(tokens: int, spec: PrivacySpec = SPEC) -> np.ndarray:
    rng = np.random.default_rng(tokens)
    return rng.integers(0, spec.levels + 1, (tokens, spec.dim), dtype=np.uint8)


def assemble(frames, spec: PrivacySpec = SPEC, max_tokens: int = 10_000) -> FrameAssembler:
    assembler = FrameAssembler(spec, max_tokens=max_tokens)
    for frame in frames:
        assembler.add(frames_pb2.Frame.FromString(frame.SerializeToString()))
    return assembler


def test_frames_split_by_payload_budget_and_reassemble_in_order():
    symbols = random_symbols(1000)
    frames = list(encode_frames(symbols, SPEC, max_payload_bytes=1000))
    assert [f.sequence for f in frames] == list(range(len(frames)))
    assert all(len(f.payload) <= 1000 for f in frames)
    assert sum(f.token_count for f in frames) == 1000
    assembler = assemble(frames)
    np.testing.assert_array_equal(assembler.symbols(), symbols)
    np.testing.assert_array_equal(assembler.embeddings(), decode_table(SPEC)[symbols])


def test_assembler_rejects_out_of_order_and_repeated_frames():
    frames = list(encode_frames(random_symbols(100), SPEC, max_payload_bytes=100))
    with pytest.raises(FrameError, match="sequence 1, expected 0"):
        assemble([frames[1]])
    with pytest.raises(FrameError, match="sequence 0, expected 1"):
        assemble([frames[0], frames[0]])


@pytest.mark.parametrize(("field", "value"), [("dim", 17), ("bits", 3)])
def test_assembler_rejects_a_frame_that_contradicts_the_header(field, value):
    frame = next(encode_frames(random_symbols(4), SPEC))
    setattr(frame, field, value)
    with pytest.raises(FrameError, match="header says"):
        assemble([frame])


def test_assembler_rejects_empty_frames_and_prompts_over_the_token_limit():
    frame = next(encode_frames(random_symbols(4), SPEC))
    empty = frames_pb2.Frame(sequence=0, token_count=0, dim=SPEC.dim, bits=SPEC.bits)
    with pytest.raises(FrameError, match="no tokens"):
        assemble([empty])
    with pytest.raises(LimitExceededError, match="limit of 3 tokens"):
        assemble([frame], max_tokens=3)


def test_assembler_rejects_a_payload_shorter_than_its_token_count_says():
    frame = next(encode_frames(random_symbols(4), SPEC))
    frame.token_count = 5
    with pytest.raises(FrameError, match="expected 40"):
        assemble([frame])


def test_header_round_trips_and_refuses_invalid_parameters():
    params = mechanism_params(SPEC)
    assert (
        spec_from_params(frames_pb2.MechanismParams.FromString(params.SerializeToString())) == SPEC
    )
    bad_scale = frames_pb2.MechanismParams()
    bad_scale.CopyFrom(params)
    bad_scale.scale = SPEC.clip / 2
    with pytest.raises(FrameError, match="scale A must be >= clip"):
        spec_from_params(bad_scale)
    for field, value in [("bits", 0), ("bits", 9), ("dim", 0), ("clip", float("nan"))]:
        broken = frames_pb2.MechanismParams()
        broken.CopyFrom(params)
        setattr(broken, field, value)
        with pytest.raises(FrameError, match=field):
            spec_from_params(broken)
    with pytest.raises(FrameError, match="unknown mechanism"):
        spec_from_params(frames_pb2.MechanismParams(dim=16, bits=4, clip=1.0, scale=2.0))


def test_wire_overhead_of_a_prompt_frame_is_a_few_bytes():
    frame = next(encode_frames(random_symbols(32), SPEC))
    payload_bytes = 32 * SPEC.bits_per_token // 8
    assert payload_bytes < len(frame.SerializeToString()) <= payload_bytes + 16


def test_raw_frames_carry_float32_embeddings_exactly_and_refuse_nan():
    spec = RawSpec(dim=8)
    embeddings = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    np.testing.assert_array_equal(
        assemble(encode_frames(embeddings, spec), spec).embeddings(), embeddings
    )
    frame = next(encode_frames(embeddings, spec))
    frame.payload = np.full(40, np.nan, "<f4").tobytes()
    with pytest.raises(FrameError, match="NaN"):
        assemble([frame], spec)


@pytest.mark.parametrize(
    ("field", "value"),
    [("clip", 1.0), ("scale", 2.0), ("clip", float("nan")), ("bits", 4), ("dim", 0)],
)
def test_a_raw_header_carries_no_clip_or_scale_and_its_own_width(field, value):
    params = mechanism_params(RawSpec(dim=64))
    assert (params.clip, params.scale, params.bits) == (0, 0, 32)
    assert spec_from_params(params) == RawSpec(dim=64)
    setattr(params, field, value)
    with pytest.raises(FrameError, match=r"clip and scale must be 0|bits=32|dim >= 1"):
        spec_from_params(params)


def test_raw_frames_of_the_wrong_width_are_refused():
    spec = RawSpec(dim=8)
    frame = next(encode_frames(np.zeros((2, 8), np.float32), spec))
    frame.dim = 9
    with pytest.raises(FrameError, match="dim=9"):
        assemble([frame], spec)
    frame.dim = 8
    frame.payload = frame.payload[:-4]
    with pytest.raises(FrameError, match="expected 64"):
        assemble([frame], spec)
