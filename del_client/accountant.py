"""Exact privacy accounting for DEL's binomial mechanism (DESIGN §3), as pure functions.

Symbols, as in the paper and DESIGN §3: a token sends k coordinates, each the sum of
K = 2^b − 1 Bernoulli draws with success probability p = 1/2 + x/(2A), x in [−c, c].
Two neighbouring tokens differ most when every coordinate sits at opposite ends of the box,
so every neighbouring pair of output distributions is dominated (Blackwell) by

    P = Binomial(n, q)   versus   Q = Binomial(n, 1 − q),   q = 1/2 + c/(2A),

with n = k·K draws for one token and n = T·k·K for a prompt of T tokens (independent
binomials with the same q add up to one binomial, so composition over tokens is exact).

The privacy loss of outcome j is L(j) = log P(j)/Q(j) = (2j − n)·a with a = log(q/(1 − q)),
and the privacy profile (hockey-stick divergence) is

    δ(ε) = Σ_j max(0, P(j) − e^ε Q(j)) = Σ_{j : L(j) > ε} P(j) · (1 − e^{ε − L(j)}).

Swapping j ↔ n − j swaps P and Q, so one profile covers both directions. It is evaluated in
log space over the window of j that carries any mass in double precision (binomial tails
beyond 12·√n + 64 of the mode are below e^−288), so it costs O(√n) and works for millions of
draws. ε(δ) inverts the profile with Brent's method; from_epsilon inverts again, over q.

Beside it, the paper's central-limit figure: one draw is μ_r-GDP with μ_r = (2q − 1)/√(q(1 − q))
(= 2c/√(A² − c²)), n draws are μ_r·√n-GDP. It is an approximation, reported for comparison only.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .errors import PrivacyParameterError
from .parameters import check_delta

# Below e^-10000 a δ is zero for every practical purpose; clamping keeps root finding finite.
_LOG_DELTA_FLOOR = -1e4
_TAIL_SIGMAS = 12.0
# Largest log-odds a = log(q/(1-q)) searched: q = 1 − 1.5e-8. Beyond it 1 − q loses digits and
# the inversion drifts; ε above 18 per Bernoulli draw is no privacy anyway, so it is refused.
MAX_LOG_ODDS = 18.0


def _check_draws_and_q(n: int, q: float) -> None:
    if not isinstance(n, int | np.integer) or n < 1:
        raise PrivacyParameterError(f"draws n must be a positive integer, got {n!r}")
    if not (math.isfinite(q) and 0.5 <= q <= 1.0):
        raise PrivacyParameterError(f"q must lie in [0.5, 1], got {q!r}")


def _check_epsilon(epsilon: float) -> None:
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise PrivacyParameterError(f"epsilon must be finite and >= 0, got {epsilon!r}")


def log_delta(epsilon: float, *, n: int, q: float) -> float:
    """log δ(ε) of the pair Binomial(n, q) vs Binomial(n, 1 − q); −inf when δ is exactly 0."""
    from scipy import special, stats  # here: importing scipy takes seconds (module docstring)

    _check_draws_and_q(n, q)
    _check_epsilon(epsilon)
    if q == 0.5:
        return -math.inf  # P == Q: no loss at all
    if q == 1.0:
        return 0.0  # disjoint supports: δ = 1 for every finite ε
    a = math.log(q) - math.log1p(-q)
    first = math.floor((n + epsilon / a) / 2) + 1  # smallest j with L(j) > ε (up to rounding)
    if first > n:
        return -math.inf
    width = _TAIL_SIGMAS * math.sqrt(n) + 64
    lo = max(first - 1, math.floor(n * q - width), 0)
    hi = min(n, math.ceil(max(first, n * q) + width))
    j = np.arange(lo, hi + 1, dtype=np.float64)
    loss = (2 * j - n) * a
    j, loss = j[loss > epsilon], loss[loss > epsilon]  # exact filter, immune to rounding above
    if j.size == 0:
        return -math.inf
    log_terms = stats.binom.logpmf(j, n, q) + np.log(-np.expm1(epsilon - loss))
    return float(special.logsumexp(log_terms))


def delta_for_epsilon(epsilon: float, *, n: int, q: float) -> float:
    """δ(ε): the smallest δ for which n draws at q are (ε, δ)-DP."""
    return math.exp(log_delta(epsilon, n=n, q=q))


@functools.lru_cache(maxsize=4096)
def epsilon_for_delta(delta: float, *, n: int, q: float) -> float:
    """ε(δ): the smallest ε for which n draws at q are (ε, δ)-DP (inf when none is).

    Cached: a root search takes milliseconds, and a server reports ε for every request, of
    which only a few (level, length) pairs are distinct.
    """
    from scipy import optimize

    check_delta(delta)
    _check_draws_and_q(n, q)
    if q == 1.0:
        return math.inf
    target = math.log(delta)
    if log_delta(0.0, n=n, q=q) <= target:
        return 0.0
    max_loss = n * (math.log(q) - math.log1p(-q))  # δ(ε) = 0 from here on

    def excess(eps: float) -> float:
        return max(log_delta(eps, n=n, q=q), _LOG_DELTA_FLOOR) - target

    return float(optimize.brentq(excess, 0.0, max_loss, xtol=1e-14, rtol=1e-13, maxiter=500))


def q_for_epsilon(epsilon: float, *, delta: float, n: int) -> float:
    """The q at which n draws are exactly (ε, δ)-DP: the inverse of epsilon_for_delta over q."""
    from scipy import optimize, special

    check_delta(delta)
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise PrivacyParameterError(f"epsilon must be finite and > 0, got {epsilon!r}")
    _check_draws_and_q(n, 0.5)

    # Search over the log-odds a = log(q/(1-q)): ε(a) rises monotonically from 0 to inf.
    def shortfall(a: float) -> float:
        return epsilon_for_delta(delta, n=n, q=float(special.expit(a))) - epsilon

    lo = epsilon / n  # the loss never exceeds n·a, so ε(lo) <= epsilon in exact arithmetic
    if lo >= MAX_LOG_ODDS or shortfall(lo) >= 0:
        raise PrivacyParameterError(
            f"epsilon={epsilon} over {n} draws needs q within float resolution of 1; "
            "ask for a smaller epsilon or more draws"
        )
    hi = min(max(2 * lo, 1e-3), MAX_LOG_ODDS)
    while shortfall(hi) < 0:
        if hi == MAX_LOG_ODDS:
            raise PrivacyParameterError(f"epsilon={epsilon} at delta={delta} needs q -> 1")
        hi = min(2 * hi, MAX_LOG_ODDS)
    a = optimize.brentq(shortfall, lo, hi, xtol=1e-15, rtol=1e-13, maxiter=500)
    return float(special.expit(a))


def gdp_mu(*, n: int, q: float) -> float:
    """The paper's central-limit μ-GDP figure for n draws at q (an approximation)."""
    _check_draws_and_q(n, q)
    if q == 1.0:
        return math.inf
    return (2 * q - 1) / math.sqrt(q * (1 - q)) * math.sqrt(n)


def gdp_epsilon(delta: float, *, mu: float) -> float:
    """ε at δ for a μ-GDP mechanism (Dong, Roth & Su 2019), to compare with the exact ε."""
    from scipy import optimize, special

    check_delta(delta)
    if not (math.isfinite(mu) and mu > 0):
        raise PrivacyParameterError(f"mu must be finite and > 0, got {mu!r}")

    def gdp_log_delta(eps: float) -> float:
        # δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2), in log space.
        first = special.log_ndtr(-eps / mu + mu / 2)
        second = eps + special.log_ndtr(-eps / mu - mu / 2)
        return first + math.log(-math.expm1(second - first)) if second < first else -math.inf

    if gdp_log_delta(0.0) <= math.log(delta):
        return 0.0
    hi = 1.0
    while gdp_log_delta(hi) > math.log(delta):
        hi *= 2
    excess = lambda eps: max(gdp_log_delta(eps), _LOG_DELTA_FLOOR) - math.log(delta)  # noqa: E731
    return float(optimize.brentq(excess, 0.0, hi, xtol=1e-14, rtol=1e-13))
