"""The mechanisms the evaluation compares, behind one small numpy interface.

    Binomial          DEL's quantizer, run through del_client's own code (the deployed one)
    GaussianQuantized the paper's Gaussian variant: Gaussian noise on the clipped projected
                      embedding, then rounded to 2^b levels (a baseline; nothing serves it)

Each one privatizes (T, k) vectors into (T, k) symbols with a seeded numpy generator (these
are measurement draws, not privacy noise), decodes symbols back, gives the per-coordinate
likelihood table log P(symbol | value) the mechanism-aware attack needs, and states its
exact ε. An attack or a utility measurement written against this interface treats every
mechanism the same way, so the comparison at matched attack success rate is like for like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy import special, stats

from del_client.accountant import gdp_epsilon
from del_client.mechanism import BinomialQuantizer, PrivacySpec, dequantize


class Mechanism(Protocol):
    name: str
    dim: int  # coordinates per token
    alphabet: int  # symbols take values 0..alphabet-1
    bits_per_token: int

    def privatize(self, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(T, k) float32 -> (T, k) uint8 symbols."""

    def decode(self, symbols: np.ndarray) -> np.ndarray:
        """(T, k) uint8 -> (T, k) float32 estimates of the clipped vectors."""

    def log_likelihood(self, table: np.ndarray) -> np.ndarray:
        """(V, k) candidate vectors -> (V, k, alphabet) log P(symbol | that coordinate)."""

    def epsilon(self, *, delta: float, tokens: int = 1) -> float:
        """Exact ε at δ for `tokens` tokens."""

    def mu(self) -> float:
        """Per-token μ-GDP: the paper's approximation for Binomial, exact for Gaussian."""


@dataclass(frozen=True)
class Binomial:
    spec: PrivacySpec
    name: str = "binomial"

    @classmethod
    def at(cls, *, mu: float, dim: int, bits: int, clip: float) -> Binomial:
        return cls(PrivacySpec.from_mu(mu=mu, dim=dim, bits=bits, clip=clip))

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def alphabet(self) -> int:
        return self.spec.levels + 1

    @property
    def bits_per_token(self) -> int:
        return self.spec.bits_per_token

    def privatize(self, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return BinomialQuantizer(self.spec, rng=rng).privatize(z)

    def decode(self, symbols: np.ndarray) -> np.ndarray:
        return dequantize(symbols, self.spec)

    def log_likelihood(self, table: np.ndarray) -> np.ndarray:
        x = np.clip(table.astype(np.float64), -self.spec.clip, self.spec.clip)
        p = 0.5 + x / (2 * self.spec.scale)
        symbols = np.arange(self.alphabet)
        return stats.binom.logpmf(symbols, self.spec.levels, p[..., None])

    def epsilon(self, *, delta: float, tokens: int = 1) -> float:
        return self.spec.epsilon(delta=delta, tokens=tokens)

    def mu(self) -> float:
        return self.spec.mu()


@dataclass(frozen=True)
class GaussianQuantized:
    """x = clip(z, −c, c); y = x + N(0, σ²) per coordinate; send the nearest of 2^b evenly
    spaced levels on [−R, R], R = c + 2σ (beyond ±R rounds to the end levels).

    Two tokens' clipped vectors differ by at most 2c√k in L2 norm (opposite corners of the
    box), so the Gaussian step is exactly μ-GDP with μ = 2c√k/σ, and rounding is
    post-processing: ε comes from the exact Gaussian privacy profile, composed over T tokens
    as μ√T. With R = c + 2σ at least 95 % of draws land inside the range, at every level.
    """

    mu_token: float
    dim: int
    bits: int
    clip: float
    name: str = "gaussian"

    @property
    def sigma(self) -> float:
        return 2 * self.clip * math.sqrt(self.dim) / self.mu_token

    @property
    def levels(self) -> np.ndarray:
        bound = self.clip + 2 * self.sigma
        return np.linspace(-bound, bound, 1 << self.bits)

    @property
    def alphabet(self) -> int:
        return 1 << self.bits

    @property
    def bits_per_token(self) -> int:
        return self.dim * self.bits

    def _edges(self) -> np.ndarray:
        levels = self.levels
        return (levels[1:] + levels[:-1]) / 2  # alphabet − 1 inner edges

    def privatize(self, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = np.clip(z.astype(np.float64), -self.clip, self.clip)
        y = x + rng.normal(0.0, self.sigma, size=x.shape)
        return np.searchsorted(self._edges(), y).astype(np.uint8)

    def decode(self, symbols: np.ndarray) -> np.ndarray:
        return self.levels.astype(np.float32)[symbols]

    def log_likelihood(self, table: np.ndarray) -> np.ndarray:
        x = np.clip(table.astype(np.float64), -self.clip, self.clip)[..., None]  # (V, k, 1)
        edges = np.concatenate([[-np.inf], self._edges(), [np.inf]])
        lower, upper = (edges[:-1] - x) / self.sigma, (edges[1:] - x) / self.sigma
        # log(Φ(u) − Φ(l)) without cancellation: work in whichever tail the bin lies in.
        upper_tail = lower > 0
        a = np.where(upper_tail, -upper, lower)  # the bin as [a, b] on the lower tail
        b = np.where(upper_tail, -lower, upper)
        log_b, log_a = special.log_ndtr(b), special.log_ndtr(a)
        with np.errstate(divide="ignore"):
            return log_b + np.log1p(-np.exp(log_a - log_b))

    def epsilon(self, *, delta: float, tokens: int = 1) -> float:
        return gdp_epsilon(delta, mu=self.mu_token * math.sqrt(tokens))

    def mu(self) -> float:
        return self.mu_token
