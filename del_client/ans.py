"""Entropy-coded frame payloads: rANS over the public symbol model (docs/PROTOCOL.md §3.11).

The coder is constriction's AnsCoder, a maintained Rust implementation (32-bit words, a
64-bit state, frequencies of 24 bits), not one of our own. A frame's symbols are coded
coordinate by coordinate (coordinate 0 of each of its tokens in order, then coordinate 1,
...): each run shares one model, which constriction codes in one call at about a million
tokens per second at k = 128. A payload is the coder's words, each little-endian, less the
zero bytes that end the last word (never zero itself): 12 bits a frame on average. It is
valid only if it ends in a non-zero byte and decoding its symbols leaves the coder exactly
empty, so that, as with packing, a payload has one reading and trailing bytes are refused.

constriction is imported on first use: a client that never codes a frame does not load it.
"""

from __future__ import annotations

import functools

import numpy as np

from .errors import FrameError
from .symbol_model import PRECISION, SymbolModel

WORD_BYTES = 4


def worst_case_bytes(symbols: int) -> int:
    """A bound on the payload of `symbols` symbols, whatever they are: a symbol costs at most
    24 bits (its frequency is at least 1 in 2^24) and the coder's rounding well under one
    more; the final state adds at most two words."""
    return WORD_BYTES * (-(-(PRECISION + 1) * symbols // 32) + 2)


def _words(payload: bytes) -> np.ndarray:
    """The coder's words from a payload: its bytes, zero-padded to whole little-endian words."""
    if payload[-1:] == b"\x00":
        raise FrameError("an ANS payload never ends in a zero byte")
    padded = payload + bytes(-len(payload) % WORD_BYTES)
    return np.frombuffer(padded, dtype="<u4").astype(np.uint32)


@functools.lru_cache(maxsize=16)
def _coder_models(model: SymbolModel) -> tuple:
    """One constriction categorical model per coordinate, with exactly `model`'s frequencies.

    constriction quantizes float weights w to C(n) = n + ⌊(Σ_{m<n} w_m)·(2^24 − (K + 1))/Σ w⌋
    (the rule of symbol_model.quantize). With w = f − 1, integers that doubles hold exactly,
    the factor is exactly 1 and C(n) = Σ_{m<n} f_m: the frequencies themselves.
    """
    import constriction

    weights = model.frequencies.astype(np.float64) - 1.0
    return tuple(constriction.stream.model.Categorical(w, perfect=False) for w in weights)


def encode(symbols: np.ndarray, model: SymbolModel) -> bytes:
    """(T, k) symbols -> the payload: the coder's words, little-endian, less trailing zeros."""
    import constriction

    models = _coder_models(model)
    columns = np.ascontiguousarray(symbols.T, dtype=np.int32)
    coder = constriction.stream.stack.AnsCoder()
    # A stack: the last coordinate goes in first, so that decoding yields coordinate 0 first.
    for i in reversed(range(model.dim)):
        coder.encode_reverse(columns[i], models[i])
    return coder.get_compressed().astype("<u4").tobytes().rstrip(b"\x00")


def decode(payload: bytes, model: SymbolModel, tokens: int) -> np.ndarray:
    """The payload's (tokens, k) uint8 symbols, or FrameError for a malformed payload."""
    import constriction

    coder = constriction.stream.stack.AnsCoder(_words(payload))
    out = np.empty((tokens, model.dim), dtype=np.uint8)
    for i, coordinate in enumerate(_coder_models(model)):
        out[:, i] = coder.decode(coordinate, tokens)
    if not coder.is_empty():
        raise FrameError("the ANS payload holds more than its token_count × dim symbols")
    return out
