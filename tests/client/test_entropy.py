"""Entropy-coded payloads: the symbol model and the rANS coder follow docs/PROTOCOL.md §3.11 to
the bit (checked against a plain-Python implementation written from that page), every payload
round-trips, malformed ones are refused, coded frames come within 2 % of the model's
cross-entropy, which is within a hair of the symbols' entropy, and frames are coded only when
client and server agree."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from del_client import ans
from del_client.codec import FrameAssembler, RawSpec, encode_frames
from del_client.config import ClientConfig
from del_client.errors import ConfigError, FrameError, RequestOptionError
from del_client.manifest import ModelInfo
from del_client.mechanism import BinomialQuantizer, PrivacySpec
from del_client.proto import frames_pb2, inference_pb2
from del_client.randomness import seeded_generator_for_tests
from del_client.symbol_model import TOTAL, SymbolModel, mixture, quantize

# ── docs/PROTOCOL.md §3.11, spelled out in plain Python (doubles are IEEE-754 doubles) ──────


def reference_mixture(table: np.ndarray, spec: PrivacySpec) -> list[list[float]]:
    K, c, A = spec.levels, spec.clip, spec.scale
    out = [[0.0] * (K + 1) for _ in range(spec.dim)]
    for row in table.tolist():  # float32 widened to double, exactly
        for i, z in enumerate(row):
            x = min(max(z, -c), c)
            p = 0.5 + x / (2.0 * A)
            low = min(p, 1.0 - p)
            high = 1.0 - low
            ratio = low / high
            power = high
            for _ in range(spec.bits):
                power = power * power
            g = [power / high]
            for j in range(K):
                g.append(g[j] * (ratio * ((K - j) / (j + 1.0))))
            for n in range(K + 1):
                out[i][n] += g[K - n] if p > 0.5 else g[n]
    return out


def reference_frequencies(weights: list[list[float]]) -> list[list[int]]:
    rows = []
    for row in weights:
        size = len(row)
        below, running = [], 0.0
        for w in row:
            running += w
            below.append(running)
        factor = (TOTAL - size) / below[-1]
        cumulative = [0] + [n + math.floor(below[n - 1] * factor) for n in range(1, size)]
        cumulative.append(TOTAL)
        rows.append([cumulative[n + 1] - cumulative[n] for n in range(size)])
    return rows


def _order(tokens: int, dim: int):
    """The coding order: coordinate 0 of every token, then coordinate 1, ..."""
    return [(t, i) for i in range(dim) for t in range(tokens)]


def reference_encode(symbols: np.ndarray, frequencies: list[list[int]]) -> bytes:
    cumulative = [[sum(f[:n]) for n in range(len(f))] for f in frequencies]
    state, words = 0, []
    for t, i in reversed(_order(*symbols.shape)):
        n = int(symbols[t, i])
        f, c = frequencies[i][n], cumulative[i][n]
        if (state >> 40) >= f:
            words.append(state & 0xFFFFFFFF)
            state >>= 32
        state = ((state // f) << 24) | ((state % f) + c)
    while state:
        words.append(state & 0xFFFFFFFF)
        state >>= 32
    return b"".join(w.to_bytes(4, "little") for w in words).rstrip(b"\x00")


def reference_decode(payload: bytes, frequencies: list[list[int]], tokens: int) -> np.ndarray:
    cumulative = [[sum(f[:n]) for n in range(len(f) + 1)] for f in frequencies]
    assert not payload.endswith(b"\x00")
    payload += bytes(-len(payload) % 4)
    words = [int.from_bytes(payload[j : j + 4], "little") for j in range(0, len(payload), 4)]
    state = 0
    if words:
        state = words.pop()
        if words:
            state = (state << 32) | words.pop()
    out = np.empty((tokens, len(frequencies)), np.uint8)
    for t, i in _order(tokens, len(frequencies)):
        quantile = state & (TOTAL - 1)
        n = next(n for n in range(len(frequencies[i])) if cumulative[i][n + 1] > quantile)
        state = (state >> 24) * frequencies[i][n] + quantile - cumulative[i][n]
        if state < (1 << 32) and words:
            state = (state << 32) | words.pop()
        out[t, i] = n
    assert state == 0
    assert not words
    return out


# ── strategies ─────────────────────────────────────────────────────────────────────────


@st.composite
def coded_cases(draw, max_tokens: int = 12):
    """A small table and mechanism, and symbols of every value (the unlikely ones too)."""
    dim = draw(st.integers(1, 5))
    bits = draw(st.integers(1, 8))
    clip = draw(st.floats(0.05, 3.0))
    scale = clip * draw(st.sampled_from([1.0, 1.0001, 1.5, 4.0, 40.0]))
    spec = PrivacySpec(dim=dim, bits=bits, clip=clip, scale=scale)
    rows = draw(st.integers(1, 6))
    values = st.floats(-4.0, 4.0, width=32)
    table = draw(hnp.arrays(np.float32, (rows, dim), elements=values))
    tokens = draw(st.integers(1, max_tokens))
    symbols = draw(
        hnp.arrays(np.uint8, (tokens, dim), elements=st.integers(0, spec.levels))
        | st.just(
            BinomialQuantizer(spec, rng=seeded_generator_for_tests(0)).privatize(
                table[np.arange(tokens) % rows]
            )
        )
    )
    return table, spec, symbols


# ── the model ──────────────────────────────────────────────────────────────────────────


@settings(max_examples=60, deadline=None)
@given(coded_cases())
def test_the_model_is_the_documented_float_steps_to_the_bit(case):
    table, spec, _ = case
    weights = mixture(table, spec)
    assert weights.tolist() == reference_mixture(table, spec)  # exact, not approximate
    assert quantize(weights).tolist() == reference_frequencies(weights.tolist())


@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 4), st.integers(2, 256)),
        elements=st.floats(0, 1e6) | st.just(0.0) | st.floats(0, 1e-300),
    ).filter(lambda w: (w.sum(axis=1) >= 0.5).all())  # a mixture of V rows sums to about V
)
def test_frequencies_are_at_least_one_and_sum_to_two_to_the_24(weights):
    frequencies = quantize(weights)
    assert frequencies.dtype == np.uint32
    assert (frequencies >= 1).all()
    assert (frequencies.astype(np.int64).sum(axis=1) == TOTAL).all()


def test_the_model_is_the_symbols_law_for_tokens_drawn_from_the_table():
    """Drawn from the table uniformly, privatized symbols cost what the model's entropy says."""
    rng = np.random.default_rng(3)
    spec = PrivacySpec.from_mu(mu=20, dim=32, bits=4, clip=1.0)
    table = rng.normal(0, 0.5, (256, 32)).astype(np.float32)
    model = SymbolModel.from_table(table, spec)
    probabilities = model.frequencies / TOTAL
    entropy = -(probabilities * np.log2(probabilities)).sum()  # per token: k coordinates
    symbols = BinomialQuantizer(spec, rng=seeded_generator_for_tests(1)).privatize(
        table[rng.integers(0, 256, 20_000)]
    )
    assert model.cross_entropy_bits(symbols) / 20_000 == pytest.approx(entropy, rel=2e-3)


# ── the coder ──────────────────────────────────────────────────────────────────────────


@settings(max_examples=80, deadline=None)
@given(coded_cases())
def test_a_coded_payload_decodes_to_its_symbols(case):
    table, spec, symbols = case
    model = SymbolModel.from_table(table, spec)
    payload = ans.encode(symbols, model)
    np.testing.assert_array_equal(ans.decode(payload, model, symbols.shape[0]), symbols)
    assert len(payload) <= ans.worst_case_bytes(symbols.size)


@settings(max_examples=60, deadline=None)
@given(coded_cases())
def test_the_coder_is_the_documented_rans_to_the_bit(case):
    table, spec, symbols = case
    model = SymbolModel.from_table(table, spec)
    frequencies = model.frequencies.tolist()
    payload = ans.encode(symbols, model)
    assert payload == reference_encode(symbols, frequencies)
    np.testing.assert_array_equal(reference_decode(payload, frequencies, symbols.shape[0]), symbols)


@settings(max_examples=40, deadline=None)
@given(coded_cases(max_tokens=40), st.integers(16, 256))
def test_coded_frames_round_trip_and_fit_a_small_frame_budget(case, budget):
    table, spec, symbols = case
    model = SymbolModel.from_table(table, spec)
    budget = max(budget, ans.worst_case_bytes(spec.dim))
    frames = list(encode_frames(symbols, spec, max_payload_bytes=budget, model=model))
    assert all(len(f.payload) <= budget for f in frames)
    assembler = FrameAssembler(spec, max_tokens=symbols.shape[0], model=model)
    for frame in frames:
        assembler.add(frame)
    np.testing.assert_array_equal(assembler.symbols(), symbols)
    assert assembler.payload_bits == 8 * sum(len(f.payload) for f in frames)


@pytest.fixture(scope="module")
def realistic():
    """k = 128, b = 4 at μ = 20 (the codec bench's setting) with a table of 4096 rows."""
    rng = np.random.default_rng(5)
    spec = PrivacySpec.from_mu(mu=20, dim=128, bits=4, clip=1.0)
    table = rng.normal(0, 0.5, (4096, 128)).astype(np.float32)
    return spec, table, SymbolModel.from_table(table, spec), rng


@pytest.mark.parametrize("tokens", [8, 32, 1024])
def test_coded_frames_are_within_two_percent_of_the_cross_entropy(realistic, tokens):
    spec, table, model, rng = realistic
    quantizer = BinomialQuantizer(spec, rng=seeded_generator_for_tests(tokens))
    for _ in range(5):
        symbols = quantizer.privatize(table[rng.integers(0, len(table), tokens)])
        coded_bits = 8 * len(ans.encode(symbols, model))
        cross_entropy = model.cross_entropy_bits(symbols)
        assert cross_entropy < coded_bits <= 1.02 * cross_entropy
        assert coded_bits <= cross_entropy + 64  # the coder's final state: at most two words
        assert coded_bits < 0.8 * symbols.size * spec.bits  # a fifth under packing


def _payload(realistic) -> tuple[SymbolModel, bytes]:
    spec, table, model, _ = realistic
    symbols = BinomialQuantizer(spec, rng=seeded_generator_for_tests(9)).privatize(table[:3])
    return model, ans.encode(symbols, model)


def _whole_words(payload: bytes) -> bytes:
    return payload + bytes(-len(payload) % 4)


# A word short at the start: the symbols decode, but the coder is not left empty.
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p + b"\x00", "zero byte"),
        (lambda p: _whole_words(p + b"\x01") + bytes(4), "zero byte"),
        (lambda p: _whole_words(p) + b"\x07\x00\x00\x01", "more than"),
        (lambda p: p[4:], "more than"),
    ],
)
def test_a_malformed_coded_payload_is_refused(realistic, change, message):
    model, payload = _payload(realistic)
    with pytest.raises(FrameError, match=message):
        ans.decode(change(payload), model, 3)


def test_a_payload_of_fewer_tokens_than_it_holds_is_refused(realistic):
    model, payload = _payload(realistic)
    with pytest.raises(FrameError, match="more than"):
        ans.decode(payload, model, 2)


LAZY = """
import sys
import del_client.client, del_client.aio, del_client.codec, del_client.session
assert "constriction" not in sys.modules, "imported before any frame is coded"
import numpy as np
from del_client import ans
from del_client.mechanism import PrivacySpec
from del_client.symbol_model import SymbolModel
spec = PrivacySpec.from_mu(mu=5.0, dim=4, bits=4, clip=1.0)
model = SymbolModel.from_table(np.zeros((3, 4), np.float32), spec)
ans.encode(np.zeros((1, 4), np.uint8), model)
assert "constriction" in sys.modules
"""


def test_constriction_loads_only_when_a_frame_is_coded():
    result = subprocess.run([sys.executable, "-c", LAZY], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ── negotiation ────────────────────────────────────────────────────────────────────────


def _server(*encodings: int) -> ModelInfo:
    return ModelInfo.from_pb(inference_pb2.ModelInfo(payload_encodings=encodings))


CODED = PrivacySpec.from_mu(mu=10, dim=16, bits=4, clip=1.0)


def test_a_server_that_lists_no_encodings_gets_packed_frames():
    older = _server()
    assert older.payload_encodings == ("packed",)
    assert older.payload_encoding("auto", CODED, 65536) == "packed"
    with pytest.raises(RequestOptionError, match="does not decode"):
        older.payload_encoding("ans", CODED, 65536)


def test_frames_are_coded_only_when_both_sides_agree():
    offering = _server(frames_pb2.PAYLOAD_ENCODING_PACKED, frames_pb2.PAYLOAD_ENCODING_ANS, 9)
    assert offering.payload_encodings == ("packed", "ans")  # 9: unknown here, left out
    assert offering.payload_encoding("auto", CODED, 65536) == "ans"
    assert offering.payload_encoding("ans", CODED, 65536) == "ans"
    assert offering.payload_encoding("packed", CODED, 65536) == "packed"
    assert offering.payload_encoding("auto", RawSpec(dim=64), 65536) == "packed"
    # A frame budget under one token's worst case: packing, which always fits.
    tiny = ans.worst_case_bytes(CODED.dim) - 1
    assert offering.payload_encoding("auto", CODED, tiny) == "packed"
    with pytest.raises(RequestOptionError, match="too small"):
        offering.payload_encoding("ans", CODED, tiny)


def test_the_client_config_names_an_encoding():
    assert ClientConfig("localhost:50051").payload_encoding == "auto"
    with pytest.raises(ConfigError, match="payload_encoding"):
        ClientConfig("localhost:50051", payload_encoding="zip")
