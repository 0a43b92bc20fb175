"""The exact accountant (DESIGN §3), checked against oracles that share none of its code.

Oracles
-------
* `float_delta`: the definition, literally: δ(ε) = Σ_j max(0, P_q(j) − e^ε·P_{1−q}(j)) over
  every j in 0..n, with scipy.stats.binom.pmf in linear space. Its absolute error is a few
  ulps of the largest term, so it is trusted to 1e-9 relative only where δ > 1e-6.
* `exact_delta`: the same sum in exact rational arithmetic (Python integers and Fraction),
  for q a dyadic rational such as 5/8 that the float q passed to the accountant equals exactly,
  and with e^ε replaced by the exact rational value of the float math.exp(ε). It validates the
  float oracle, and the accountant's log-space sum where δ is far too small for linear floats.
* `oracle_epsilon`: ε(δ) by scipy's brentq on `float_delta`, bracketed independently.

Monotonicity that must hold, and why:
* ε(δ) is non-increasing in δ (δ(ε) is non-increasing in ε).
* ε grows with the number of draws n, so with tokens T, dim k and bits b at a fixed A/c:
  Binomial(n, q) is a post-processing of Binomial(n + 1, q) (drop one draw at random given the
  sum, a q-free hypergeometric step), so n + 1 draws are never more private.
* ε grows with q, hence with μ under the paper's calibration (larger μ, smaller A/c): a draw
  at q' <= q is a draw at q passed through a fixed symmetric flip.
* Only A/c matters: from_mu gives the same ε for every clip bound c.
What does NOT hold in general, so it is not asserted: monotonicity in b at a fixed μ (A moves
with b), or the paper's central-limit ε being an upper bound (one randomized-response draw is
not μ_r-GDP; the exact ε exceeds the CLT figure e.g. at μ = 0.5, k = 1, b = 1, δ = 0.1).
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize, stats

from del_client import accountant
from del_client.budget import PrivacyBudget
from del_client.cli import main as cli_main
from del_client.errors import BudgetExceededError, DELError, PrivacyParameterError
from del_client.mechanism import PrivacySpec

# ---------------------------------------------------------------------------------------------
# Oracles


def _hockey_stick(epsilon: float, n: int, p: float, r: float) -> float:
    """Σ_j max(0, P_p(j) − e^ε·P_r(j)) over all j; e^ε·P_r(j) as exp(ε + log P_r(j)), which
    is the same number but neither overflows for ε > 709 nor underflows to 0·inf."""
    j = np.arange(n + 1)
    with np.errstate(over="ignore"):  # an infinite e^ε·P_r(j) rightly makes its term 0
        scaled = np.exp(epsilon + stats.binom.logpmf(j, n, r))
    return float(np.maximum(0.0, stats.binom.pmf(j, n, p) - scaled).sum())


def float_delta(epsilon: float, n: int, q: float) -> float:
    """δ(ε) of Binomial(n, q) vs Binomial(n, 1 − q) straight from the definition."""
    return _hockey_stick(epsilon, n, q, 1 - q)


def float_delta_reversed(epsilon: float, n: int, q: float) -> float:
    """δ(ε) of the pair the other way round: Binomial(n, 1 − q) vs Binomial(n, q)."""
    return _hockey_stick(epsilon, n, 1 - q, q)


def exact_delta(epsilon: float, n: int, q: Fraction) -> Fraction:
    """The same sum in exact rationals, with e^ε the exact value of the float math.exp(ε)."""
    u, d = q.numerator, q.denominator
    v = d - u
    e = Fraction(math.exp(epsilon))
    total = 0
    for j in range(n + 1):
        term = math.comb(n, j) * (
            e.denominator * u**j * v ** (n - j) - e.numerator * v**j * u ** (n - j)
        )
        if term > 0:
            total += term
    return Fraction(total, e.denominator * d**n)


def exact_log(x: Fraction) -> float:
    return -math.inf if x == 0 else math.log(x.numerator) - math.log(x.denominator)


def oracle_epsilon(delta: float, n: int, q: float) -> float:
    """ε(δ): the root of float_delta(ε) = δ, bracketed by [0, n·log(q/(1 − q))]."""
    if float_delta(0.0, n, q) <= delta:
        return 0.0
    top = n * math.log(q / (1 - q))  # the largest privacy loss: δ(top) = 0
    return optimize.brentq(
        lambda eps: float_delta(eps, n, q) - delta, 0.0, top, xtol=1e-13, rtol=1e-14
    )


def paper_scale(mu: float, dim: int, bits: int, clip: float) -> float:
    mu_r = mu / math.sqrt(dim * (2**bits - 1))
    return clip * math.sqrt(4 / mu_r**2 + 1)


# ---------------------------------------------------------------------------------------------
# δ(ε) and ε(δ) against the oracles

NS = (1, 3, 10, 64, 255, 1920)
QS = (0.5001, 0.52, 0.6, 0.75, 0.9, 0.999)
EPSILONS = (0.0, 0.01, 0.5, 2.0, 8.0)


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("q", QS)
def test_delta_equals_the_direct_sum_over_all_outcomes(n, q):
    for eps in EPSILONS:
        got = accountant.delta_for_epsilon(eps, n=n, q=q)
        want = float_delta(eps, n, q)
        if want > 1e-6:
            assert got == pytest.approx(want, rel=1e-9), (n, q, eps)
        else:  # the linear-space oracle only knows tiny δ to its absolute precision
            assert got == pytest.approx(want, abs=1e-15), (n, q, eps)


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("q", QS)
def test_the_profile_is_the_same_in_both_directions_of_the_pair(n, q):
    for eps in EPSILONS:
        forward, backward = float_delta(eps, n, q), float_delta_reversed(eps, n, q)
        assert forward == pytest.approx(backward, rel=1e-9, abs=1e-15)
        got = accountant.delta_for_epsilon(eps, n=n, q=q)
        assert got == pytest.approx(backward, rel=1e-9, abs=1e-15), (n, q, eps)


@pytest.mark.parametrize(
    ("n", "q"),
    [(1, 0.6), (10, 0.52), (64, 0.6), (255, 0.75), (1920, 0.611), (1920, 0.5005), (61440, 0.51)],
)
@pytest.mark.parametrize("delta", [0.3, 1e-2, 1e-5, 1e-8])
def test_epsilon_equals_an_independent_root_of_the_direct_sum(n, q, delta):
    want = oracle_epsilon(delta, n, q)
    got = accountant.epsilon_for_delta(delta, n=n, q=q)
    if want == 0.0:
        assert got == 0.0
    else:
        assert got == pytest.approx(want, rel=1e-6)


# Dyadic q: the float the accountant receives is exactly the rational the oracle uses.
RATIONAL_QS = (Fraction(5, 8), Fraction(3, 4), Fraction(9, 16), Fraction(17, 32), Fraction(0.6))


@pytest.mark.parametrize("q", RATIONAL_QS, ids=str)
@pytest.mark.parametrize("n", [1, 2, 7, 30, 200])
def test_the_float_oracle_agrees_with_exact_rational_arithmetic(q, n):
    assert Fraction(float(q)) == q
    for eps in (0.0, 0.3, 1.0, 2.5):
        exact = exact_delta(eps, n, q)
        if exact > Fraction(1, 10**6):
            assert float_delta(eps, n, float(q)) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("q", RATIONAL_QS, ids=str)
@pytest.mark.parametrize("n", [1, 2, 7, 30, 200])
def test_log_delta_matches_exact_arithmetic_even_where_delta_is_astronomically_small(q, n):
    a = math.log(float(q) / (1 - float(q)))
    max_loss = n * a
    # Spread ε over the whole range, up to just below the largest loss (δ as small as 1e-90),
    # and put some ε exactly on loss values (2j − n)·a where one term of the sum is zero.
    grid = [max_loss * f for f in (0.0, 0.1, 0.37, 0.62, 0.8, 0.93, 0.99)]
    on_lattice = [(2 * j - n) * a for j in range(n // 2 + 1, n, max(1, n // 5))]
    for eps in grid + on_lattice:
        exact = exact_log(exact_delta(eps, n, q))
        got = accountant.log_delta(eps, n=n, q=float(q))
        if exact == -math.inf:
            assert got == -math.inf, (n, q, eps)
        else:
            assert got == pytest.approx(exact, abs=1e-9), (n, q, eps)  # δ to 1e-9 relative


def test_delta_is_zero_at_and_beyond_the_largest_privacy_loss():
    n, q = 12, 0.75
    max_loss = n * math.log(3)
    assert accountant.delta_for_epsilon(max_loss * (1 + 1e-12), n=n, q=q) == 0.0
    assert accountant.delta_for_epsilon(2 * max_loss, n=n, q=q) == 0.0
    # Between the two largest losses, (n − 2)·a and n·a, only the outcome j = n counts.
    eps = max_loss * 0.999
    want = q**n * -math.expm1(eps - max_loss)
    assert accountant.delta_for_epsilon(eps, n=n, q=q) == pytest.approx(want, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# Monotonicity and composition

SPEC = PrivacySpec.from_mu(mu=4.0, dim=32, bits=4, clip=0.05)


def test_epsilon_decreases_as_delta_grows():
    deltas = [1e-12, 1e-9, 1e-6, 1e-4, 1e-2, 0.1, 0.3]
    eps = [SPEC.epsilon(delta=d) for d in deltas]
    assert all(a > b for a, b in itertools.pairwise(eps)), eps
    tv = accountant.delta_for_epsilon(0.0, n=SPEC.draws_per_token, q=SPEC.q)
    assert SPEC.epsilon(delta=min(0.999, tv * 1.001)) == 0.0  # δ above total variation


def test_epsilon_grows_with_the_number_of_tokens():
    eps = [SPEC.epsilon(delta=1e-5, tokens=t) for t in (1, 2, 3, 5, 8, 32, 128, 1024)]
    assert all(a < b for a, b in itertools.pairwise(eps)), eps


def test_epsilon_grows_with_q_at_a_fixed_number_of_draws():
    eps = [accountant.epsilon_for_delta(1e-5, n=500, q=q) for q in (0.501, 0.51, 0.55, 0.7, 0.95)]
    assert all(a < b for a, b in itertools.pairwise(eps)), eps


def test_epsilon_grows_with_mu_under_the_paper_calibration():
    specs = [PrivacySpec.from_mu(mu=m, dim=128, bits=4, clip=0.05) for m in (0.5, 1, 4, 20, 80)]
    assert all(a.scale > b.scale for a, b in itertools.pairwise(specs))
    eps = [s.epsilon(delta=1e-5) for s in specs]
    assert all(a < b for a, b in itertools.pairwise(eps)), eps


@pytest.mark.parametrize("scale_over_c", [1.5, 4.0, 40.0])
def test_epsilon_grows_with_bits_and_with_dim_at_a_fixed_scale_ratio(scale_over_c):
    by_bits = [
        PrivacySpec(dim=16, bits=b, clip=0.05, scale=0.05 * scale_over_c).epsilon(delta=1e-5)
        for b in range(1, 9)
    ]
    assert all(a < b for a, b in itertools.pairwise(by_bits)), by_bits
    by_dim = [
        PrivacySpec(dim=k, bits=4, clip=0.05, scale=0.05 * scale_over_c).epsilon(delta=1e-5)
        for k in (1, 4, 16, 128)
    ]
    assert all(a < b for a, b in itertools.pairwise(by_dim)), by_dim


def test_only_the_ratio_of_scale_to_clip_matters_under_the_paper_calibration():
    eps = {
        clip: PrivacySpec.from_mu(mu=6.0, dim=64, bits=3, clip=clip).epsilon(delta=1e-6)
        for clip in (1e-3, 0.05, 1.0, 7.0)
    }
    assert max(eps.values()) == pytest.approx(min(eps.values()), rel=1e-12), eps


@pytest.mark.parametrize("tokens", [1, 2, 7, 32])
def test_a_prompt_of_t_tokens_is_one_binomial_pair_with_t_times_the_draws(tokens):
    prompt = SPEC.epsilon(delta=1e-5, tokens=tokens)
    k, K = SPEC.dim, SPEC.levels
    assert prompt == accountant.epsilon_for_delta(1e-5, n=tokens * k * K, q=SPEC.q)
    wide = PrivacySpec(dim=tokens * k, bits=SPEC.bits, clip=SPEC.clip, scale=SPEC.scale)
    assert wide.epsilon(delta=1e-5) == pytest.approx(prompt, rel=1e-12)
    assert prompt == pytest.approx(oracle_epsilon(1e-5, tokens * k * K, SPEC.q), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Edges: large n, q = 1/2, q = 1, the paper's μ


def test_millions_of_draws_give_a_finite_epsilon_that_the_direct_sum_confirms():
    n, q = 4_000_000, 0.5 + 1e-3
    eps = accountant.epsilon_for_delta(1e-5, n=n, q=q)
    assert 0 < eps < math.inf
    # δ at that ε, summed over all four million outcomes, is the δ asked for.
    assert float_delta(eps, n, q) == pytest.approx(1e-5, rel=1e-6)


def test_a_billion_draws_give_an_epsilon_inside_rigorous_tail_bounds():
    n, q, delta = 10**9, 0.5 + 1e-5, 1e-5
    eps = accountant.epsilon_for_delta(delta, n=n, q=q)
    assert 0 < eps < math.inf
    # With L(j) = (2j − n)·a and j ~ Binomial(n, q), each term of δ(ε) lies between
    # P(j)·(1 − e^−t)·[L(j) > ε + t] and P(j)·[L(j) > ε], so binomial tails bracket ε:
    # ε <= L(j_up) when P[j > j_up] <= δ, and ε > L(j_lo) − t when P[j > j_lo] > δ/(1 − e^−t).
    a, t = math.log(q / (1 - q)), 1.0
    j_up = stats.binom.isf(delta, n, q)
    j_lo = stats.binom.isf(delta / -math.expm1(-t), n, q) - 1
    assert stats.binom.sf(j_up, n, q) <= delta
    assert stats.binom.sf(j_lo, n, q) > delta / -math.expm1(-t)
    assert (2 * j_lo - n) * a - t < eps <= (2 * j_up - n) * a


def test_q_one_half_gives_zero_epsilon_and_zero_delta():
    assert accountant.epsilon_for_delta(1e-5, n=1920, q=0.5) == 0.0
    assert accountant.delta_for_epsilon(0.0, n=1920, q=0.5) == 0.0
    assert accountant.gdp_mu(n=1920, q=0.5) == 0.0


def test_q_one_is_never_private():
    assert accountant.epsilon_for_delta(0.5, n=3, q=1.0) == math.inf
    assert accountant.delta_for_epsilon(100.0, n=3, q=1.0) == 1.0
    assert accountant.gdp_mu(n=3, q=1.0) == math.inf


@pytest.mark.parametrize(("dim", "bits", "clip", "scale"), [(128, 4, 0.05, 0.2), (16, 8, 1, 30)])
def test_the_gdp_mu_figure_is_the_paper_formula(dim, bits, clip, scale):
    spec = PrivacySpec(dim=dim, bits=bits, clip=clip, scale=scale)
    K = 2**bits - 1
    mu_r = 2 * clip / math.sqrt(scale**2 - clip**2)  # inverts A = c·√(4/μ_r² + 1)
    assert spec.mu() == pytest.approx(mu_r * math.sqrt(dim * K), rel=1e-12)
    assert spec.mu(tokens=5) == pytest.approx(mu_r * math.sqrt(5 * dim * K), rel=1e-12)
    assert accountant.gdp_mu(n=dim * K, q=spec.q) == pytest.approx(spec.mu(), rel=1e-15)


@pytest.mark.parametrize(("mu", "delta"), [(0.5, 1e-5), (2.0, 1e-5), (20.0, 1e-6), (1.0, 0.1)])
def test_gdp_epsilon_is_the_root_of_the_dong_roth_su_profile(mu, delta):
    def gdp_delta(eps):
        phi = stats.norm.cdf
        return phi(-eps / mu + mu / 2) - math.exp(eps) * phi(-eps / mu - mu / 2)

    top = 1.0
    while gdp_delta(top) > delta:
        top *= 2
    want = optimize.brentq(lambda e: gdp_delta(e) - delta, 0.0, top, xtol=1e-13)
    assert accountant.gdp_epsilon(delta, mu=mu) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize(
    "call",
    [
        lambda: accountant.delta_for_epsilon(1.0, n=0, q=0.6),
        lambda: accountant.delta_for_epsilon(1.0, n=2.5, q=0.6),
        lambda: accountant.delta_for_epsilon(1.0, n=10, q=0.4),
        lambda: accountant.delta_for_epsilon(1.0, n=10, q=math.nan),
        lambda: accountant.delta_for_epsilon(-0.1, n=10, q=0.6),
        lambda: accountant.delta_for_epsilon(math.nan, n=10, q=0.6),
        lambda: accountant.epsilon_for_delta(0.0, n=10, q=0.6),
        lambda: accountant.epsilon_for_delta(1.0, n=10, q=0.6),
        lambda: accountant.epsilon_for_delta(math.nan, n=10, q=0.6),
        lambda: accountant.gdp_epsilon(1e-5, mu=0.0),
    ],
)
def test_accountant_rejects_parameters_outside_their_domain(call):
    with pytest.raises(PrivacyParameterError):
        call()


# ---------------------------------------------------------------------------------------------
# The `del-client privacy` command

MU, DIM, BITS, CLIP, TOKENS, DELTA = 20.0, 128, 4, 0.05, 32, 1e-5
ARGS = ["--dim", "128", "--bits", "4", "--clip", "0.05", "--tokens", "32", "--delta", "1e-5"]
KEYS = {"A", "q", "bits_per_token", "delta", "epsilon_token", "epsilon_prompt", "mu_token"}


def _check_mu_report(report: dict) -> None:
    assert report.keys() >= KEYS
    A = paper_scale(MU, DIM, BITS, CLIP)
    q = 0.5 + CLIP / (2 * A)
    n_token = DIM * (2**BITS - 1)
    assert report["A"] == pytest.approx(A, rel=1e-6)
    assert report["q"] == pytest.approx(q, rel=1e-6)
    assert report["bits_per_token"] == DIM * BITS == 512
    assert report["delta"] == DELTA
    assert report["epsilon_token"] == pytest.approx(oracle_epsilon(DELTA, n_token, q), rel=1e-6)
    assert report["epsilon_prompt"] == pytest.approx(
        oracle_epsilon(DELTA, TOKENS * n_token, q), rel=1e-6
    )
    assert report["mu_token"] == pytest.approx(MU, rel=1e-6)


def test_privacy_command_reports_the_independently_computed_guarantee(capsys):
    cli_main(["privacy", "--mu", "20", *ARGS, "--json"])
    _check_mu_report(json.loads(capsys.readouterr().out))


def test_the_installed_console_script_prints_the_same_report():
    script = Path(sys.executable).with_name("del-client")
    assert script.is_file(), f"console script not installed at {script}"
    result = subprocess.run(
        [str(script), "privacy", "--mu", "20", *ARGS, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    _check_mu_report(json.loads(result.stdout))


def test_privacy_command_with_an_epsilon_target_round_trips(capsys):
    cli_main(["privacy", "--epsilon", "8", *ARGS, "--json"])
    report = json.loads(capsys.readouterr().out)
    n_token = DIM * (2**BITS - 1)
    assert report["epsilon_token"] == pytest.approx(8.0, rel=1e-9)
    q = report["q"]
    assert float_delta(8.0, n_token, q) == pytest.approx(DELTA, rel=1e-6)  # exactly (8, δ)-DP
    assert report["A"] == pytest.approx(CLIP / (2 * q - 1), rel=1e-9)
    assert report["epsilon_prompt"] == pytest.approx(
        oracle_epsilon(DELTA, TOKENS * n_token, q), rel=1e-6
    )


def test_privacy_command_without_json_prints_the_same_numbers(capsys):
    cli_main(["privacy", "--mu", "20", *ARGS])
    text = capsys.readouterr().out
    eps = oracle_epsilon(DELTA, DIM * 15, 0.5 + CLIP / (2 * paper_scale(MU, DIM, BITS, CLIP)))
    assert f"ε = {eps:.6g}" in text
    assert "512 payload bits per token" in text


def test_privacy_command_reports_bad_parameters_as_an_error_not_a_traceback(capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["privacy", "--mu", "20", "--dim", "128", "--bits", "9", "--clip", "0.05"])
    assert info.value.code == 2
    assert "del-client: error: bits must be in 1..8, got 9" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# PrivacyBudget


def test_budget_charges_accumulate_to_one_prompt_of_the_summed_length():
    budget = PrivacyBudget(epsilon=1e6, delta=1e-5)
    assert budget.spent == 0.0
    total_tokens = 0
    for tokens in (3, 1, 7, 32):
        total_tokens += tokens
        assert budget.cost_after(SPEC, tokens=tokens) == SPEC.epsilon(
            delta=1e-5, tokens=total_tokens
        )
        charged = budget.charge(SPEC, tokens=tokens)
        assert charged == SPEC.epsilon(delta=1e-5, tokens=total_tokens)
        assert budget.spent == charged


def test_budget_refuses_a_prompt_that_would_overspend_and_charges_nothing():
    limit = SPEC.epsilon(delta=1e-5, tokens=10)
    budget = PrivacyBudget(epsilon=limit, delta=1e-5)
    budget.charge(SPEC, tokens=4)
    before = budget.spent
    with pytest.raises(BudgetExceededError, match="over the budget") as info:
        budget.charge(SPEC, tokens=7)
    assert isinstance(info.value, DELError)
    assert budget.spent == before
    assert budget.charge(SPEC, tokens=6) == limit  # landing exactly on the budget is allowed
    with pytest.raises(BudgetExceededError):
        budget.charge(SPEC, tokens=1)
    assert budget.spent == limit


def test_budget_refuses_a_mechanism_that_is_not_private_at_all():
    budget = PrivacyBudget(epsilon=1e9, delta=0.5)
    with pytest.raises(BudgetExceededError):
        budget.charge(PrivacySpec(dim=4, bits=2, clip=1.0, scale=1.0), tokens=1)
    assert budget.spent == 0.0


def test_budget_charges_mixed_settings_at_the_largest_q_in_either_order():
    low = PrivacySpec.from_mu(mu=1.0, dim=32, bits=4, clip=0.05)
    high = PrivacySpec.from_mu(mu=3.0, dim=16, bits=2, clip=0.05)
    assert low.q < high.q
    draws = 5 * low.draws_per_token + 2 * high.draws_per_token
    want = accountant.epsilon_for_delta(1e-5, n=draws, q=high.q)
    for order in ((low, 5, high, 2), (high, 2, low, 5)):
        budget = PrivacyBudget(epsilon=1e6, delta=1e-5)
        budget.charge(order[0], tokens=order[1])
        assert budget.charge(order[2], tokens=order[3]) == want


def test_charging_at_the_largest_q_bounds_the_exact_heterogeneous_composition():
    # The exact pair for n1 draws at q1 and n2 at q2 is a product of two binomial pairs.
    n1, q1, n2, q2 = 30, 0.6, 45, 0.7
    i, j = np.arange(n1 + 1), np.arange(n2 + 1)
    p = np.outer(stats.binom.pmf(i, n1, q1), stats.binom.pmf(j, n2, q2))
    q = np.outer(stats.binom.pmf(i, n1, 1 - q1), stats.binom.pmf(j, n2, 1 - q2))
    for eps in (0.0, 1.0, 3.0, 8.0, 20.0):
        mixed = float(np.maximum(0.0, p - math.exp(eps) * q).sum())
        assert mixed <= accountant.delta_for_epsilon(eps, n=n1 + n2, q=q2) + 1e-15


def test_concurrent_charges_are_all_counted():
    budget = PrivacyBudget(epsilon=1e6, delta=1e-5)
    threads = [
        threading.Thread(target=budget.charge, args=(SPEC,), kwargs={"tokens": 3}) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.spent == SPEC.epsilon(delta=1e-5, tokens=24)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epsilon": 0.0, "delta": 1e-5},
        {"epsilon": math.inf, "delta": 1e-5},
        {"epsilon": math.nan, "delta": 1e-5},
        {"epsilon": 1.0, "delta": 0.0},
        {"epsilon": 1.0, "delta": 1.0},
        {"epsilon": 1.0, "delta": math.nan},
    ],
)
def test_budget_rejects_limits_outside_their_domain(kwargs):
    with pytest.raises(PrivacyParameterError):
        PrivacyBudget(**kwargs)


def test_budget_rejects_a_prompt_without_tokens():
    with pytest.raises(PrivacyParameterError, match="tokens"):
        PrivacyBudget(epsilon=1.0, delta=1e-5).charge(SPEC, tokens=0)
