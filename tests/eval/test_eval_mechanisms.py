"""The evaluation's mechanisms and statistics against independent references.

Every likelihood-based attack is only as good as the mechanism's likelihood table: each table
must be the exact law of its sampler, computed here another way (the binomial pmf from
factorials, the Gaussian bin mass from the normal CDF) and checked against draws.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from del_client.accountant import gdp_epsilon
from del_server.attacks.mechanisms import Binomial, GaussianQuantized
from del_server.attacks.tokenwise import exact_lookup_guesses
from del_server.eval.baselines import identity_adapter
from del_server.eval.utility import paired_difference, spread


@pytest.fixture(scope="module")
def embeddings(stories260k) -> torch.Tensor:
    from del_server.models import load_model

    return load_model(str(stories260k)).embeddings.detach().float()


def _frequencies_match(probabilities: np.ndarray, draws: np.ndarray) -> bool:
    """Empirical symbol frequencies within z·√(p(1−p)/n) of `probabilities`; z = 5 keeps the
    false-failure rate below 1e-5 over 16 symbols."""
    n = len(draws)
    frequencies = np.bincount(draws, minlength=len(probabilities)) / n
    tolerance = 5 * np.sqrt(probabilities * (1 - probabilities) / n) + 1e-9
    return bool(np.all(np.abs(frequencies - probabilities) <= tolerance))


def test_binomial_likelihood_table_is_the_binomial_pmf_of_the_clipped_value():
    mechanism = Binomial.at(mu=8.0, dim=3, bits=4, clip=0.5)
    spec, levels = mechanism.spec, mechanism.spec.levels
    values = np.array([[-0.9, 0.0, 0.31]])  # the first is beyond the clip
    table = np.exp(mechanism.log_likelihood(values))[0]  # (3, 16)
    for coordinate, x in enumerate(np.clip(values[0], -spec.clip, spec.clip)):
        p = 0.5 + x / (2 * spec.scale)
        pmf = [math.comb(levels, s) * p**s * (1 - p) ** (levels - s) for s in range(levels + 1)]
        np.testing.assert_allclose(table[coordinate], pmf, rtol=1e-10)


def test_binomial_likelihood_table_is_the_law_del_clients_quantizer_follows():
    mechanism = Binomial.at(mu=8.0, dim=1, bits=4, clip=0.5)
    x, n = 0.2, 200_000
    probabilities = np.exp(mechanism.log_likelihood(np.array([[x]])))[0, 0]
    draws = mechanism.privatize(np.full((n, 1), x, np.float32), np.random.default_rng(0))
    assert _frequencies_match(probabilities, draws[:, 0])


def test_gaussian_likelihood_table_is_the_normal_mass_of_each_rounding_bin():
    mechanism = GaussianQuantized(mu_token=6.0, dim=1, bits=4, clip=1.0)
    x = 0.4
    edges = np.concatenate(
        [[-np.inf], (mechanism.levels[1:] + mechanism.levels[:-1]) / 2, [np.inf]]
    )
    mass = np.diff(stats.norm.cdf(edges, loc=x, scale=mechanism.sigma))
    table = np.exp(mechanism.log_likelihood(np.array([[x]])))[0, 0]
    np.testing.assert_allclose(table, mass, rtol=1e-9, atol=1e-300)


def test_gaussian_likelihood_stays_finite_where_the_normal_cdf_difference_underflows():
    """Far from the value, Φ(b) − Φ(a) rounds to 0 in float64; the table must still rank
    such symbols (an attack compares them), so it works in the tail's own logarithm."""
    mechanism = GaussianQuantized(mu_token=400.0, dim=1, bits=4, clip=1.0)
    log_table = mechanism.log_likelihood(np.array([[-1.0]]))[0, 0]
    assert np.all(np.isfinite(log_table))
    assert np.all(np.diff(log_table[1:]) < 0)  # ever less likely away from the value
    assert np.exp(log_table).sum() == pytest.approx(1.0, abs=1e-9)


def test_gaussian_likelihood_table_is_the_law_its_sampler_follows():
    mechanism = GaussianQuantized(mu_token=6.0, dim=1, bits=4, clip=1.0)
    x, n = 0.4, 200_000
    probabilities = np.exp(mechanism.log_likelihood(np.array([[x]])))[0, 0]
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-9)
    draws = mechanism.privatize(np.full((n, 1), x, np.float32), np.random.default_rng(0))
    assert _frequencies_match(probabilities, draws[:, 0])


def test_gaussian_baseline_is_exactly_mu_gdp_and_composes_over_tokens():
    mechanism = GaussianQuantized(mu_token=3.0, dim=16, bits=4, clip=0.5)
    assert mechanism.sigma == pytest.approx(2 * 0.5 * 4 / 3.0)  # sensitivity 2c√k over μ
    assert mechanism.epsilon(delta=1e-5) == pytest.approx(gdp_epsilon(1e-5, mu=3.0))
    assert mechanism.epsilon(delta=1e-5, tokens=9) == pytest.approx(gdp_epsilon(1e-5, mu=9.0))


def test_a_server_given_raw_embeddings_reads_every_token(embeddings):
    tokens = np.arange(embeddings.shape[0])
    guesses = exact_lookup_guesses(embeddings, embeddings[tokens].numpy())
    assert np.mean(guesses == tokens) == 1.0


def test_identity_adapter_quantizes_the_centred_embeddings_themselves(embeddings):
    adapter = identity_adapter(embeddings)
    z = adapter.project(embeddings)
    assert adapter.projection_dim == embeddings.shape[1]
    torch.testing.assert_close(adapter.deproject(z), embeddings)
    assert float((z.abs() <= adapter.clip).float().mean()) == pytest.approx(0.98, abs=0.005)


def test_spread_gives_a_student_t_interval_over_seeds():
    summary = spread([1.0, 2.0, 3.0])
    assert summary["mean"] == 2.0
    assert summary["ci95"] == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)
    assert spread([5.0])["ci95"] == 0.0


def test_paired_difference_says_higher_only_when_the_interval_excludes_zero():
    base = np.linspace(0, 1, 50)
    assert paired_difference(base + 0.1, base)["verdict"] == "higher"
    assert paired_difference(base - 0.1, base)["verdict"] == "lower"
    noisy = base + np.random.default_rng(0).normal(0, 1, 50)
    assert paired_difference(noisy, base)["verdict"] == "indistinguishable"
