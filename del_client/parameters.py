"""The privacy and wire facts every part of DEL shares: defaults, the ranges values must lie
in (with the checks that enforce them), and the sizes of things on the wire.

Client, server, training, evaluation and both CLIs import these instead of restating them, so
a default or a rule changes in one place. The module imports nothing heavy (no numpy), so a
CLI can show the defaults in --help without loading numpy, numba or scipy.

The checks raise PrivacyParameterError unless told otherwise (`error=`): the codec raises
FrameError, because a bad value there came off the wire. Predicates (`is_delta`) serve code
with errors of its own (the server's settings, the ledger file).
"""

from __future__ import annotations

import math
import numbers

from .errors import PrivacyParameterError, RequestOptionError

# ── Privacy ─────────────────────────────────────────────────────────────────────────────

MIN_BITS, MAX_BITS = 1, 8  # b, bits per symbol: a symbol is a count of 2^b − 1 draws
SUPPORTED_BITS = tuple(range(MIN_BITS, MAX_BITS + 1))  # every b the codec and server handle
# b when neither the user nor the server's level says; also the training pipeline's default,
# so the bits of soft prompts trained before their adapter recorded its bits.
DEFAULT_BITS = 4
# δ at which ε is stated (results, manifest, calibration, reports) and budgets are counted,
# unless a caller gives another.
DEFAULT_DELTA = 1e-5
MECHANISMS = ("binomial", "raw")  # raw: unprivatized embeddings, NO privacy (a baseline)

# ── Wire ────────────────────────────────────────────────────────────────────────────────

GRPC_MESSAGE_PREFIX_BYTES = 5  # compressed flag + 4-byte length before every gRPC message
# gRPC's default per-message limit, which the server keeps unless told otherwise.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# A frame's payload stays under this size (the client's default frame, the server's default
# limit), far below MAX_MESSAGE_BYTES.
MAX_FRAME_PAYLOAD_BYTES = 64 * 1024


def wire_bytes(message) -> int:
    """Bytes a protobuf message takes on a gRPC stream: both sides count them this way."""
    return message.ByteSize() + GRPC_MESSAGE_PREFIX_BYTES


# ── Checks ──────────────────────────────────────────────────────────────────────────────


def _is_number(value) -> bool:
    """A real number, numpy's included; not a bool (True is no privacy parameter)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_finite(
    name: str, value, *, error: type[Exception] = PrivacyParameterError
) -> float:
    """`value` as a float, or `error` unless it is a finite number > 0 (μ, ε, c, A, ...)."""
    if not _is_number(value):
        raise error(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise error(f"{name} must be finite and > 0, got {value!r}")
    return float(value)


def check_count(
    name: str,
    value,
    lo: int,
    hi: int | None = None,
    *,
    error: type[Exception] = PrivacyParameterError,
) -> int:
    """`value` as an int, or `error` unless it is an integer in lo..hi (no upper end: None)."""
    if not _is_integer(value):
        raise error(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        expected = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise error(f"{name} must be {expected}, got {value}")
    return int(value)


def check_bits(bits, *, error: type[Exception] = PrivacyParameterError) -> int:
    """`bits` as an int, or `error` unless it is in MIN_BITS..MAX_BITS."""
    return check_count("bits", bits, MIN_BITS, MAX_BITS, error=error)


def is_bits(value) -> bool:
    """Whether `value` is a b the codec and server handle: an integer in MIN_BITS..MAX_BITS."""
    return _is_integer(value) and value in SUPPORTED_BITS


def is_delta(value) -> bool:
    """Whether `value` is a δ: a number in (0, 1)."""
    return _is_number(value) and 0 < value < 1


def check_delta(delta, *, name: str = "delta") -> float:
    """`delta` as a float, or PrivacyParameterError unless it lies in (0, 1)."""
    if not is_delta(delta):
        raise PrivacyParameterError(f"{name} must lie in (0, 1), got {delta!r}")
    return float(delta)


def check_mechanism(mechanism: str) -> str:
    """`mechanism`, or RequestOptionError unless it is one of MECHANISMS."""
    if mechanism not in MECHANISMS:
        raise RequestOptionError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")
    return mechanism
