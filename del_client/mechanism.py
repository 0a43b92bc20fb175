"""The DP stochastic quantizer: clip, privatize to b-bit symbols, decode (DESIGN §3).

Symbols (only here and in accountant.py):
    k  projected dimension (coordinates per token)     b  bits per symbol, 1..8
    K  = 2^b − 1 Bernoulli draws per coordinate        c  clip bound, x = clip(z, −c, c)
    A  decoding scale, A >= c                          q  = 1/2 + c/(2A), the worst-case p
    mu the paper's per-token Gaussian-DP level; A = c·√(4/μ_r² + 1), μ_r = μ/√(kK)

Per coordinate: p = 1/2 + x/(2A), N ~ Binomial(K, p), an integer in [0, K] (exactly b bits).
The receiver decodes x̂ = A·(2N/K − 1): E[x̂] = x and Var[x̂] = 4A²p(1 − p)/K.

Sampling is exact inversion: one uniform u per coordinate, N = #{j < K : u >= F(j)}, with the
binomial CDF F built in float64 by the pmf recurrence. A compiled, branch-free kernel runs it
over cache-sized chunks; it is about 7x faster than numpy's own binomial with per-element p,
which matters because the client privatizes every token it sends.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import accountant
from .errors import EmbeddingInputError, PrivacyParameterError
from .parameters import check_bits, check_count, check_positive_finite
from .randomness import secure_generator


def compiled(kernel: Callable) -> Callable:
    """`kernel` compiled by numba on its first call (and cached on disk, cache=True).

    Importing numba takes about a second, which commands that never privatize or pack
    (`del-client --help`, `del-client manifest`) should not wait for.
    """
    jitted = None

    @functools.wraps(kernel)
    def call(*args):
        nonlocal jitted
        if jitted is None:
            import numba

            jitted = numba.njit(nogil=True, cache=True)(kernel)
        return jitted(*args)

    return call


@dataclass(frozen=True, slots=True)
class PrivacySpec:
    """Public parameters of the quantizer; validated on construction, immutable after.

    Build one from a privacy target rather than by hand::

        spec = PrivacySpec.from_mu(mu=20, dim=128, bits=4, clip=0.05)
        spec = PrivacySpec.from_epsilon(epsilon=8, delta=1e-5, dim=128, bits=4, clip=0.05)
        spec.epsilon(delta=1e-5, tokens=32)   # exact ε for a 32-token prompt
    """

    dim: int  # k
    bits: int  # b
    clip: float  # c
    scale: float  # A

    def __post_init__(self) -> None:
        object.__setattr__(self, "dim", check_count("dim", self.dim, 1))
        object.__setattr__(self, "bits", check_bits(self.bits))
        object.__setattr__(self, "clip", check_positive_finite("clip", self.clip))
        object.__setattr__(self, "scale", check_positive_finite("scale", self.scale))
        if self.scale < self.clip:
            raise PrivacyParameterError(
                f"scale A must be >= clip c (else p leaves [0, 1]), got A={self.scale} < c={self.clip}"
            )

    @classmethod
    def from_mu(cls, *, mu: float, dim: int, bits: int, clip: float) -> PrivacySpec:
        """The paper's calibration: per-draw μ_r = μ/√(kK), A = c·√(4/μ_r² + 1).

        A draw's log-odds log(q/(1 − q)) is then 2·asinh(μ_r/2); past the accountant's
        largest, where from_epsilon refuses too, 1 − q has lost its digits and nothing is
        private any more, so such a μ is refused rather than reported as a guarantee.
        """
        mu = check_positive_finite("mu", mu)
        draws = check_count("dim", dim, 1) * ((1 << check_bits(bits)) - 1)
        largest = 2 * math.sinh(accountant.MAX_LOG_ODDS / 2) * math.sqrt(draws)
        if mu > largest:
            raise PrivacyParameterError(
                f"mu={mu:g} over {draws} draws per token needs q within float resolution of 1 "
                f"(no privacy left); ask for mu <= {largest:.6g} at dim={dim}, bits={bits}"
            )
        mu_draw = mu / math.sqrt(draws)
        clip = check_positive_finite("clip", clip)
        # c·√(4/μ_r² + 1) written so that a tiny μ_r cannot underflow when squared.
        return cls(dim=dim, bits=bits, clip=clip, scale=clip * math.hypot(2, mu_draw) / mu_draw)

    @classmethod
    def from_epsilon(
        cls, *, epsilon: float, delta: float, dim: int, bits: int, clip: float
    ) -> PrivacySpec:
        """The A at which one token is exactly (ε, δ)-DP, solved with the exact accountant."""
        draws = check_count("dim", dim, 1) * ((1 << check_bits(bits)) - 1)
        q = accountant.q_for_epsilon(epsilon, delta=delta, n=draws)
        clip = check_positive_finite("clip", clip)
        return cls(dim=dim, bits=bits, clip=clip, scale=clip / (2 * q - 1))

    @property
    def levels(self) -> int:
        """K = 2^b − 1: Bernoulli draws per coordinate, and the largest symbol."""
        return (1 << self.bits) - 1

    @property
    def q(self) -> float:
        """Success probability at the clip bound: the worst case the accountant uses."""
        return 0.5 + self.clip / (2 * self.scale)

    @property
    def draws_per_token(self) -> int:
        return self.dim * self.levels

    @property
    def bits_per_token(self) -> int:
        return self.dim * self.bits

    def epsilon(self, *, delta: float, tokens: int = 1) -> float:
        """Exact ε at δ for `tokens` tokens, each replaced by any other token."""
        tokens = check_count("tokens", tokens, 1)
        return accountant.epsilon_for_delta(delta, n=tokens * self.draws_per_token, q=self.q)

    def mu(self, *, tokens: int = 1) -> float:
        """The paper's (central-limit) μ-GDP figure for `tokens` tokens."""
        tokens = check_count("tokens", tokens, 1)
        return accountant.gdp_mu(n=tokens * self.draws_per_token, q=self.q)


# Chunk of coordinates processed per pass: the five float64 work arrays stay in L1/L2.
_CHUNK = 1024


@compiled
def _sample_binomial_symbols(x, clip, scale, bits, u, out):  # pragma: no cover - compiled
    """out[i] ~ Binomial(K, 1/2 + clip(x[i])/(2A)) by inversion of u[i] (all 1-D, same size)."""
    K = (1 << bits) - 1
    lo = np.empty(_CHUNK)
    ratio = np.empty(_CHUNK)
    pmf = np.empty(_CHUNK)
    cdf = np.empty(_CHUNK)
    count = np.empty(_CHUNK, np.uint8)
    for start in range(0, x.size, _CHUNK):
        m = min(_CHUNK, x.size - start)
        for i in range(m):
            xi = min(max(np.float64(x[start + i]), -clip), clip)
            p = 0.5 + xi / (2.0 * scale)
            low = min(p, 1.0 - p)  # sample the lighter side: hi^K cannot underflow
            high = 1.0 - low
            ratio[i] = low / high
            pmf_0 = high
            for _ in range(bits):
                pmf_0 *= pmf_0
            pmf_0 /= high  # high^(2^b - 1) = high^K
            lo[i] = p
            pmf[i] = pmf_0
            cdf[i] = pmf_0
            count[i] = u[start + i] >= pmf_0
        for j in range(K - 1):
            step = (K - j) / (j + 1.0)
            for i in range(m):
                pmf[i] *= ratio[i] * step
                cdf[i] += pmf[i]
                count[i] += u[start + i] >= cdf[i]
        for i in range(m):
            out[start + i] = K - count[i] if lo[i] > 0.5 else count[i]


def check_embeddings(z: np.ndarray, dim: int) -> np.ndarray:
    """Return z as a C-contiguous (T, dim) float array, or raise EmbeddingInputError."""
    if not isinstance(z, np.ndarray):
        raise EmbeddingInputError(f"embeddings must be a numpy array, got {type(z).__name__}")
    if z.dtype not in (np.float32, np.float64):
        raise EmbeddingInputError(f"embeddings must be float32 or float64, got {z.dtype}")
    if z.ndim != 2 or z.shape[1] != dim:
        raise EmbeddingInputError(f"embeddings must have shape (tokens, {dim}), got {z.shape}")
    if not np.isfinite(z).all():
        raise EmbeddingInputError("embeddings contain NaN or infinite values")
    return np.ascontiguousarray(z)


class BinomialQuantizer:
    """Privatizes projected embeddings into b-bit symbols. Thread-safe; holds no secrets but rng.

    `rng` defaults to the process's ChaCha20 generator keyed from OS entropy. Pass
    `randomness.seeded_generator_for_tests(seed)` only in tests.
    """

    def __init__(self, spec: PrivacySpec, *, rng: np.random.Generator | None = None) -> None:
        self.spec = spec
        self._rng = rng

    def privatize(self, z: np.ndarray) -> np.ndarray:
        """(T, k) float embeddings -> (T, k) uint8 symbols in [0, K]."""
        z = check_embeddings(z, self.spec.dim)
        rng = self._rng if self._rng is not None else secure_generator()
        uniforms = rng.random(z.size)  # float64 in [0, 1), 53 random bits each
        symbols = np.empty(z.shape, dtype=np.uint8)
        _sample_binomial_symbols(
            z.reshape(-1),
            self.spec.clip,
            self.spec.scale,
            self.spec.bits,
            uniforms,
            symbols.reshape(-1),
        )
        return symbols


def decode_table(spec: PrivacySpec) -> np.ndarray:
    """x̂ for every symbol N in 0..K: A·(2N/K − 1), as float32 (shape (K + 1,))."""
    n = np.arange(spec.levels + 1, dtype=np.float64)
    return (spec.scale * (2 * n / spec.levels - 1)).astype(np.float32)


def dequantize(symbols: np.ndarray, spec: PrivacySpec) -> np.ndarray:
    """(T, k) symbols -> (T, k) float32 unbiased estimates of the clipped embeddings."""
    if symbols.dtype != np.uint8 or symbols.ndim != 2 or symbols.shape[1] != spec.dim:
        raise EmbeddingInputError(
            f"symbols must be uint8 of shape (tokens, {spec.dim}), got {symbols.dtype} {symbols.shape}"
        )
    if symbols.size and int(symbols.max()) > spec.levels:
        raise EmbeddingInputError(f"symbols must be <= K={spec.levels}")
    return decode_table(spec)[symbols]
