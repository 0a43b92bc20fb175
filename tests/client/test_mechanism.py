"""The binomial quantizer (DESIGN §3): its output law, its parameter guards, its calibration.

Statistical tests: how the tolerances are derived
--------------------------------------------------
Every case privatizes an (n, 9) array whose 9 columns hold 9 values of x (box ends, 0, inner
points, and points outside the box that must be clipped), with a fixed-seed ChaCha20 generator.
Column by column, with p = 1/2 + clip(x, −c, c)/(2A) and N ~ Binomial(K, p) under the null:

* Mean (exact, no CLT). The sum S of the n symbols of a column is exactly Binomial(nK, p), and
  the decoded mean is the affine image A·(2S/(nK) − 1). We accept iff S lies in the central
  1 − α interval [ppf(α/2), isf(α/2)] of Binomial(nK, p), mapped through that affine map; that
  is the exact form of "within z·σ/√n" (the interval's half-width is ≈ z·σ_x̂/√n). The decoded
  values come from a float32 table, so each is off by at most A·2⁻²⁴ and the mean by no more;
  the interval is widened by exactly that.
* Variance. For K >= 2 the sample variance s² (ddof 1) of x̂ is asymptotically normal with
  Var(s²) = μ₄/n − σ⁴(n − 3)/(n(n − 1)), where σ² = 4A²p(1 − p)/K and, for the binomial,
  μ₄(N) = Kpq(1 + 3(K − 2)pq), scaled by (2A/K)⁴. We accept iff |s² − σ²| <= z·√Var(s²) +
  4A²·2⁻²³ (the float32 decode moves s² by at most 2·(A·2⁻²⁴)·2A). The normal approximation is
  the only asymptotic step; with n ≈ 5·10⁴ its Edgeworth correction moves the effective z by
  well under 0.1. For K = 1 (b = 1), s² = (2A)²·S(n − S)/(n(n − 1)) is a function of S, and at
  p = 1/2 it is not asymptotically normal at all, so there we use the exact image of the exact
  interval for S instead.
* Histogram. Pearson's χ² of the symbol counts against n·Binomial(K, p).pmf, after pooling
  neighbouring symbols into groups whose expected count is at least 50, with (groups − 1)
  degrees of freedom; accept iff the χ² survival probability is >= α.
* When p is 0 or 1 (A = c at the box ends), every symbol must equal 0 or K exactly.

α is one Bonferroni share of a module-wide false-failure rate of 10⁻⁶ over all those checks,
so a correct quantizer fails this module with probability below 10⁻⁶ for a random seed (the
seeds are fixed, so in practice the outcome is deterministic).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from scipy import stats

from del_client import randomness
from del_client.errors import EmbeddingInputError, PrivacyParameterError
from del_client.mechanism import BinomialQuantizer, PrivacySpec, decode_table, dequantize

# ---------------------------------------------------------------------------------------------
# Statistical tests of the output law

CLIP = 0.05
# x as multiples of c: both box ends, 0, inner points, and two points outside the box.
X_OVER_C = (-1.0, -0.6, -0.15, 0.0, 0.3, 0.85, 1.0, 4.0, -1.0e3)
# A/c: 1 puts p at exactly 0 and 1 on the box ends; 4.48... is the paper's μ=20, k=128, b=4.
SCALE_OVER_C = (1.0, math.sqrt(4 / (20 / math.sqrt(128 * 15)) ** 2 + 1))
BITS = tuple(range(1, 9))
ROWS = 50_021  # odd, so that rows·9 is not a multiple of the kernel's 1024-element chunk
CHECKS_PER_COLUMN = 3  # mean, variance, histogram
MODULE_FALSE_FAILURE_RATE = 1e-6
N_CHECKS = len(BITS) * len(SCALE_OVER_C) * len(X_OVER_C) * CHECKS_PER_COLUMN
ALPHA = MODULE_FALSE_FAILURE_RATE / N_CHECKS
Z = float(stats.norm.isf(ALPHA / 2))  # two-sided
MIN_EXPECTED_PER_GROUP = 50.0
FLOAT32_HALF_ULP = 2.0**-24  # relative rounding of one decode-table entry


def _p_of(x: float, c: float, a: float) -> float:
    return 0.5 + min(max(x, -c), c) / (2 * a)


def _pooled_groups(pmf: np.ndarray, n: int) -> list[np.ndarray]:
    """Consecutive symbols grouped so that each group expects >= MIN_EXPECTED_PER_GROUP counts."""
    groups, current, expected = [], [], 0.0
    for symbol, mass in enumerate(pmf):
        current.append(symbol)
        expected += n * mass
        if expected >= MIN_EXPECTED_PER_GROUP:
            groups.append(current)
            current, expected = [], 0.0
    if current:
        if groups:
            groups[-1].extend(current)
        else:
            groups.append(current)
    return [np.array(g) for g in groups]


def _privatized_case(bits: int, scale_over_c: float, seed: int):
    spec = PrivacySpec(dim=len(X_OVER_C), bits=bits, clip=CLIP, scale=CLIP * scale_over_c)
    row = np.array([r * CLIP for r in X_OVER_C])
    z = np.broadcast_to(row, (ROWS, row.size)).copy()
    rng = randomness.seeded_generator_for_tests(seed)
    symbols = BinomialQuantizer(spec, rng=rng).privatize(z)
    return spec, row, symbols


CASES = [
    pytest.param(bits, ratio, id=f"b{bits}-A/c={ratio:.3g}")
    for bits in BITS
    for ratio in SCALE_OVER_C
]


@pytest.mark.parametrize(("bits", "scale_over_c"), CASES)
def test_symbols_decode_to_an_unbiased_estimate_with_the_stated_variance_and_binomial_law(
    bits, scale_over_c
):
    seed = 1000 * bits + round(100 * scale_over_c)
    spec, row, symbols = _privatized_case(bits, scale_over_c, seed)
    K, A, c, n = spec.levels, spec.scale, spec.clip, ROWS
    assert symbols.dtype == np.uint8
    assert symbols.shape == (n, row.size)
    assert int(symbols.max()) <= K
    decoded = dequantize(symbols, spec).astype(np.float64)

    for col, x in enumerate(row):
        p = _p_of(float(x), c, A)
        x_clipped = min(max(float(x), -c), c)
        column = symbols[:, col].astype(np.int64)
        xhat = decoded[:, col]
        where = f"b={bits} A/c={scale_over_c:.4g} x/c={x / c:g} (p={p:.6g})"

        if p in (0.0, 1.0):  # deterministic: A = c at a box end
            assert np.all(column == (K if p == 1.0 else 0)), where
            np.testing.assert_array_equal(xhat, np.float32(A * (2 * p - 1)), err_msg=where)
            continue

        # Mean: S ~ Binomial(nK, p) exactly; accept the affine image of its central interval.
        s_lo = stats.binom.ppf(ALPHA / 2, n * K, p)
        s_hi = stats.binom.isf(ALPHA / 2, n * K, p)
        rounding = A * FLOAT32_HALF_ULP
        mean_lo = A * (2 * s_lo / (n * K) - 1) - rounding
        mean_hi = A * (2 * s_hi / (n * K) - 1) + rounding
        mean = float(xhat.mean())
        assert mean_lo <= mean <= mean_hi, f"{where}: mean {mean} not in [{mean_lo}, {mean_hi}]"
        assert mean_lo < x_clipped < mean_hi  # the interval is centred on clip(x), not x

        # Variance of the decoded values.
        sigma2 = 4 * A**2 * p * (1 - p) / K
        s2 = float(xhat.var(ddof=1))
        var_rounding = 4 * A**2 * 2 * FLOAT32_HALF_ULP
        if K == 1:
            # s² = (2A)²·S(n − S)/(n(n − 1)); S(n − S) is concave, extremes over [s_lo, s_hi].
            def s2_of(s):
                return (2 * A) ** 2 * s * (n - s) / (n * (n - 1))

            candidates = [s_lo, s_hi] + ([n / 2] if s_lo <= n / 2 <= s_hi else [])
            values = [s2_of(s) for s in candidates]
            lo, hi = min(values) - var_rounding, max(values) + var_rounding
            assert lo <= s2 <= hi, f"{where}: variance {s2} not in [{lo}, {hi}]"
        else:
            pq = p * (1 - p)
            mu4 = (2 * A / K) ** 4 * K * pq * (1 + 3 * (K - 2) * pq)
            var_s2 = mu4 / n - sigma2**2 * (n - 3) / (n * (n - 1))
            tolerance = Z * math.sqrt(var_s2) + var_rounding
            assert abs(s2 - sigma2) <= tolerance, (
                f"{where}: variance {s2} vs {sigma2}, tolerance {tolerance}"
            )

        # Histogram against Binomial(K, p), Pearson χ² on pooled groups.
        counts = np.bincount(column, minlength=K + 1)
        pmf = stats.binom.pmf(np.arange(K + 1), K, p)
        groups = _pooled_groups(pmf, n)
        observed = np.array([counts[g].sum() for g in groups], dtype=np.float64)
        expected = np.array([n * pmf[g].sum() for g in groups])
        expected *= n / expected.sum()  # pmf sums to 1 up to rounding; make it exact
        if len(groups) > 1:
            chi2 = float(((observed - expected) ** 2 / expected).sum())
            p_value = float(stats.chi2.sf(chi2, len(groups) - 1))
            assert p_value >= ALPHA, f"{where}: histogram χ²={chi2:.1f}, p-value {p_value:.3g}"


def test_the_bonferroni_share_is_what_the_docstring_says():
    assert N_CHECKS == 432
    assert 5.9 < Z < 6.1  # two-sided z for α = 10⁻⁶ / 432


def test_float32_and_float64_inputs_give_identical_symbols_for_the_same_seed():
    # Dyadic values are exact in both precisions, so p, and hence every symbol, must agree.
    spec = PrivacySpec(dim=16, bits=5, clip=0.5, scale=1.0)
    z64 = (np.arange(-40, 40, dtype=np.float64).reshape(5, 16)) / 64
    sym64 = BinomialQuantizer(spec, rng=randomness.seeded_generator_for_tests(3)).privatize(z64)
    z32 = z64.astype(np.float32)
    sym32 = BinomialQuantizer(spec, rng=randomness.seeded_generator_for_tests(3)).privatize(z32)
    np.testing.assert_array_equal(sym64, sym32)


def test_non_contiguous_input_is_privatized_like_its_contiguous_copy():
    spec = PrivacySpec(dim=8, bits=4, clip=1.0, scale=2.0)
    base = np.linspace(-1.5, 1.5, 8 * 40).reshape(8, 40)
    view = base.T[::2]  # (20, 8), Fortran-ordered and strided
    assert not view.flags.c_contiguous
    a = BinomialQuantizer(spec, rng=randomness.seeded_generator_for_tests(9)).privatize(view)
    b = BinomialQuantizer(spec, rng=randomness.seeded_generator_for_tests(9)).privatize(
        np.ascontiguousarray(view)
    )
    np.testing.assert_array_equal(a, b)


def test_decode_table_is_the_affine_map_from_symbols_to_the_box_minus_a_to_a():
    spec = PrivacySpec(dim=3, bits=3, clip=0.25, scale=0.75)
    np.testing.assert_allclose(
        decode_table(spec), [0.75 * (2 * n / 7 - 1) for n in range(8)], rtol=2**-24
    )


# ---------------------------------------------------------------------------------------------
# Parameter guards


def _raises_naming(error, fn, *needles):
    with pytest.raises(error) as info:
        fn()
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bits", [0, 9, -1, 255])
def test_spec_rejects_bit_widths_outside_1_to_8_and_says_which(bits):
    _raises_naming(
        PrivacyParameterError,
        lambda: PrivacySpec(dim=4, bits=bits, clip=1.0, scale=2.0),
        "bits",
        f"got {bits}",
    )


@pytest.mark.parametrize("bits", [4.0, 4.5, "4", True, None])
def test_spec_rejects_non_integer_bit_widths_and_says_which(bits):
    _raises_naming(
        PrivacyParameterError,
        lambda: PrivacySpec(dim=4, bits=bits, clip=1.0, scale=2.0),
        "bits",
        repr(bits),
    )


@pytest.mark.parametrize(
    ("clip", "shown"),
    [(0.0, "0.0"), (-0.5, "-0.5"), (math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf")],
)
def test_spec_rejects_clip_bounds_that_are_not_finite_and_positive(clip, shown):
    _raises_naming(
        PrivacyParameterError,
        lambda: PrivacySpec(dim=4, bits=4, clip=clip, scale=2.0),
        "clip",
        shown,
    )


def test_spec_rejects_a_scale_below_the_clip_bound_and_names_both():
    _raises_naming(
        PrivacyParameterError,
        lambda: PrivacySpec(dim=4, bits=4, clip=0.05, scale=0.04),
        "A=0.04",
        "c=0.05",
    )


def test_spec_accepts_a_scale_equal_to_the_clip_bound_which_is_not_private():
    spec = PrivacySpec(dim=4, bits=4, clip=0.05, scale=0.05)
    assert spec.q == 1.0
    assert spec.epsilon(delta=1e-5) == math.inf


@pytest.mark.parametrize(("mu", "shown"), [(0, "0"), (-1.0, "-1.0"), (math.nan, "nan")])
def test_from_mu_rejects_mu_that_is_not_finite_and_positive(mu, shown):
    _raises_naming(
        PrivacyParameterError,
        lambda: PrivacySpec.from_mu(mu=mu, dim=128, bits=4, clip=0.05),
        "mu",
        shown,
    )


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"epsilon": math.nan}, "nan"),
        ({"epsilon": math.inf}, "inf"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"delta": math.nan}, "nan"),
        ({"bits": 9}, "bits"),
    ],
)
def test_from_epsilon_rejects_out_of_range_targets_and_says_which(kwargs, needle):
    args = {"epsilon": 8.0, "delta": 1e-5, "dim": 128, "bits": 4, "clip": 0.05} | kwargs
    _raises_naming(PrivacyParameterError, lambda: PrivacySpec.from_epsilon(**args), needle)


SPEC = PrivacySpec(dim=6, bits=4, clip=0.5, scale=1.0)


@pytest.mark.parametrize(
    ("z", "needle"),
    [
        (np.array([[0.0, np.nan, 0, 0, 0, 0]]), "NaN"),
        (np.array([[0.0, 0, 0, np.inf, 0, 0]]), "infinite"),
        (np.array([[0.0, 0, 0, -np.inf, 0, 0]], dtype=np.float32), "infinite"),
        (np.zeros((2, 5)), "(2, 5)"),
        (np.zeros(6), "(6,)"),
        (np.zeros((1, 2, 6)), "(1, 2, 6)"),
        (np.zeros((2, 6), dtype=np.int64), "int64"),
        (np.zeros((2, 6), dtype=np.int8), "int8"),
        (np.zeros((2, 6), dtype=np.float16), "float16"),
        (np.zeros((2, 6), dtype=bool), "bool"),
        ([[0.0] * 6], "list"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_privatize_rejects_non_finite_misshapen_or_non_float_input_and_says_why(z, needle):
    quantizer = BinomialQuantizer(SPEC, rng=randomness.seeded_generator_for_tests(0))
    _raises_naming(EmbeddingInputError, lambda: quantizer.privatize(z), needle)


# ---------------------------------------------------------------------------------------------
# Calibration


@pytest.mark.parametrize(
    ("mu", "dim", "bits", "clip"),
    [(20, 128, 4, 0.05), (1.0, 16, 4, 1.0), (0.3, 32, 8, 2.5), (50, 1, 1, 0.01), (8, 7, 3, 3.0)],
)
def test_from_mu_is_the_paper_calibration(mu, dim, bits, clip):
    K = 2**bits - 1
    mu_r = mu / math.sqrt(dim * K)
    expected_A = clip * math.sqrt(4 / mu_r**2 + 1)
    spec = PrivacySpec.from_mu(mu=mu, dim=dim, bits=bits, clip=clip)
    assert (spec.dim, spec.bits, spec.clip, spec.levels) == (dim, bits, clip, K)
    assert spec.scale == pytest.approx(expected_A, rel=1e-12)
    assert spec.q == pytest.approx(0.5 + clip / (2 * expected_A), rel=1e-12)
    assert spec.bits_per_token == dim * bits
    assert spec.draws_per_token == dim * K


@pytest.mark.parametrize(
    ("epsilon", "delta", "dim", "bits"),
    [
        (8.0, 1e-5, 128, 4),
        (0.1, 1e-5, 128, 4),
        (1e-3, 1e-5, 16, 1),
        (50.0, 1e-6, 32, 8),
        (0.5, 0.3, 1, 1),
        (1.0, 1e-12, 128, 8),
        (3.0, 1e-9, 7, 2),
    ],
)
def test_from_epsilon_round_trips_through_the_exact_accountant(epsilon, delta, dim, bits):
    spec = PrivacySpec.from_epsilon(epsilon=epsilon, delta=delta, dim=dim, bits=bits, clip=0.05)
    assert spec.epsilon(delta=delta) == pytest.approx(epsilon, rel=1e-9)


@pytest.mark.parametrize(("epsilon", "dim", "bits"), [(30.0, 1, 1), (37.0, 1, 1), (1000.0, 16, 1)])
def test_from_epsilon_past_float_resolution_refuses_with_a_privacy_error_or_meets_the_target(
    epsilon, dim, bits
):
    try:
        spec = PrivacySpec.from_epsilon(epsilon=epsilon, delta=1e-5, dim=dim, bits=bits, clip=1.0)
    except PrivacyParameterError:
        return
    assert spec.epsilon(delta=1e-5) <= epsilon * (1 + 1e-9)


def test_from_mu_with_a_vanishing_mu_gives_pure_noise_or_a_privacy_error():
    """μ_r² would underflow for μ ~ 1e-170: the scale must still come out finite, or refuse."""
    spec = PrivacySpec.from_mu(mu=1e-170, dim=128, bits=4, clip=0.05)
    assert spec.q == 0.5
    assert spec.epsilon(delta=1e-5) == 0.0
    with pytest.raises(PrivacyParameterError, match="scale"):
        PrivacySpec.from_mu(mu=1e-320, dim=128, bits=4, clip=0.05)


@pytest.mark.parametrize(("dim", "bits"), [(16, 4), (1, 1), (128, 8)])
def test_from_mu_refuses_a_mu_past_the_q_that_from_epsilon_refuses_too(dim, bits):
    """Past a draw's log-odds of 18, 1 − q loses its digits: neither target may get there."""
    draws = dim * (2**bits - 1)
    largest = 2 * math.sinh(9) * math.sqrt(draws)  # log-odds 2·asinh(μ_r/2) = 18
    spec = PrivacySpec.from_mu(mu=largest * (1 - 1e-9), dim=dim, bits=bits, clip=1.0)
    assert math.log(spec.q / (1 - spec.q)) == pytest.approx(18, rel=1e-6)
    for mu in (largest * (1 + 1e-9), 1e9):
        with pytest.raises(PrivacyParameterError, match="q within float resolution of 1"):
            PrivacySpec.from_mu(mu=mu, dim=dim, bits=bits, clip=1.0)
    past = spec.epsilon(delta=1e-5) * 1.01
    with pytest.raises(PrivacyParameterError, match="q within float resolution of 1"):
        PrivacySpec.from_epsilon(epsilon=past, delta=1e-5, dim=dim, bits=bits, clip=1.0)


def test_from_mu_and_the_paper_mu_figure_invert_each_other():
    for mu in (0.5, 4.0, 20.0, 300.0):
        spec = PrivacySpec.from_mu(mu=mu, dim=128, bits=4, clip=0.05)
        assert spec.mu() == pytest.approx(mu, rel=1e-12)
        assert spec.mu(tokens=9) == pytest.approx(3 * mu, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Randomness


def test_the_default_quantizer_draws_fresh_noise_on_every_call():
    spec = PrivacySpec(dim=64, bits=4, clip=1.0, scale=4.0)
    z = np.zeros((4, 64))
    quantizer = BinomialQuantizer(spec)
    first, second = quantizer.privatize(z), quantizer.privatize(z)
    # Two independent draws of 256 Binomial(15, 1/2) agree with probability (Σ pmf²)^256 < 1e-200.
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, BinomialQuantizer(spec).privatize(z))


def test_the_seeded_test_generator_is_reproducible_and_seed_dependent():
    spec = PrivacySpec(dim=64, bits=4, clip=1.0, scale=4.0)
    z = np.zeros((4, 64))

    def run(seed):
        return BinomialQuantizer(spec, rng=randomness.seeded_generator_for_tests(seed)).privatize(z)

    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_replay_the_parents_secure_stream():
    parent = randomness.secure_generator()
    assert randomness.secure_generator() is parent  # one generator per process
    parent.random(3)  # the state the child inherits is in use, not fresh
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its draws and the identity check, then leave at once
        status = 1
        try:
            os.close(read_end)
            child = randomness.secure_generator()
            payload = child.random(8).tobytes() + bytes([child is not parent])
            os.write(write_end, payload)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    child_draws = np.frombuffer(payload[:64], dtype=np.float64)
    assert payload[64] == 1, "the child kept the parent's generator object"
    # Without re-keying the child would produce exactly these numbers.
    parent_draws = randomness.secure_generator().random(8)
    assert not np.array_equal(child_draws, parent_draws)
