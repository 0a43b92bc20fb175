"""The shared privacy and wire facts: one definition, one rule, used by every side."""

from __future__ import annotations

import math

import numpy as np
import pytest

from del_client import parameters
from del_client.codec import pack_symbols, unpack_symbols
from del_client.config import ClientConfig
from del_client.errors import FrameError, PrivacyParameterError, RequestOptionError
from del_client.mechanism import PrivacySpec
from del_client.parameters import (
    DEFAULT_BITS,
    DEFAULT_DELTA,
    MAX_BITS,
    MIN_BITS,
    SUPPORTED_BITS,
    check_bits,
    check_delta,
    check_mechanism,
    check_positive_finite,
    wire_bytes,
)
from del_client.proto import inference_pb2


def test_the_supported_bits_are_exactly_the_range_the_checks_accept():
    assert SUPPORTED_BITS == tuple(range(MIN_BITS, MAX_BITS + 1)) == (1, 2, 3, 4, 5, 6, 7, 8)
    assert [check_bits(b) for b in SUPPORTED_BITS] == list(SUPPORTED_BITS)
    for outside in (MIN_BITS - 1, MAX_BITS + 1):
        with pytest.raises(PrivacyParameterError, match=rf"bits must be in 1\.\.8, got {outside}"):
            check_bits(outside)


@pytest.mark.parametrize("bits", [True, 4.0, "4", None])
def test_bits_must_be_an_integer(bits):
    with pytest.raises(PrivacyParameterError, match="bits must be an integer"):
        check_bits(bits)


def test_the_mechanism_and_the_codec_apply_the_same_bits_rule_with_their_own_error():
    with pytest.raises(PrivacyParameterError, match=r"bits must be in 1\.\.8, got 9"):
        PrivacySpec(dim=4, bits=9, clip=1.0, scale=2.0)
    with pytest.raises(FrameError, match=r"bits must be in 1\.\.8, got 9"):
        pack_symbols(np.zeros(4, np.uint8), 9)
    with pytest.raises(FrameError, match=r"bits must be in 1\.\.8, got 0"):
        unpack_symbols(b"", 0, 0)


@pytest.mark.parametrize("delta", [1e-12, DEFAULT_DELTA, 0.5, np.float32(0.1)])
def test_a_delta_is_a_number_strictly_between_zero_and_one(delta):
    assert parameters.is_delta(delta)
    assert check_delta(delta) == float(delta)


@pytest.mark.parametrize("delta", [0, 1, -0.1, math.nan, math.inf, True, "1e-5", None])
def test_anything_else_is_refused_as_a_delta_naming_what_was_given(delta):
    assert not parameters.is_delta(delta)
    with pytest.raises(PrivacyParameterError, match=r"budget delta must lie in \(0, 1\)"):
        check_delta(delta, name="budget delta")


@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf])
def test_mu_epsilon_clip_and_scale_must_be_finite_and_positive(value):
    with pytest.raises(PrivacyParameterError, match="mu must be finite and > 0"):
        check_positive_finite("mu", value)


def test_a_positive_finite_value_comes_back_as_a_float():
    assert check_positive_finite("mu", np.int64(3)) == 3.0
    with pytest.raises(PrivacyParameterError, match="mu must be a number, got str"):
        check_positive_finite("mu", "3")


def test_the_mechanisms_are_binomial_or_raw():
    assert [check_mechanism(m) for m in parameters.MECHANISMS] == ["binomial", "raw"]
    with pytest.raises(RequestOptionError, match="mechanism must be one of"):
        check_mechanism("gaussian")


def test_the_defaults_the_client_falls_back_on():
    assert (DEFAULT_BITS, DEFAULT_DELTA) == (4, 1e-5)
    assert ClientConfig("localhost:1").max_payload_bytes == parameters.MAX_FRAME_PAYLOAD_BYTES


def test_a_message_costs_its_size_plus_grpcs_five_byte_prefix():
    message = inference_pb2.GenerateRequest(end=inference_pb2.End())
    assert wire_bytes(message) == message.ByteSize() + 5
