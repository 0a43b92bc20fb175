"""The evaluation's building blocks against independent references.

The generic attacks must agree with the training pipeline's on DEL's own mechanism, and the
Gaussian baseline's likelihood table must be the law its sampler actually follows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from del_client.accountant import gdp_epsilon
from del_server.adapter import pca_adapter
from del_server.eval.mechanisms import Binomial, GaussianQuantized, identity_adapter
from del_server.eval.privacy import (
    exact_lookup_guesses,
    likelihood_guesses,
    nearest_neighbour_guesses,
)
from del_server.eval.utility import paired_difference, spread
from del_server.train.attacks import attack_rates, client_table


@pytest.fixture(scope="module")
def embeddings(stories260k) -> torch.Tensor:
    from del_server.models import load_model

    return load_model(str(stories260k)).embeddings.detach().float()


def test_generic_attacks_agree_with_the_training_pipelines_on_dels_mechanism(embeddings):
    adapter = pca_adapter(embeddings, dim=16)
    table = client_table(adapter, embeddings)
    tokens = np.arange(embeddings.shape[0]).repeat(4)
    mechanism = Binomial.at(mu=12.0, dim=16, bits=4, clip=adapter.clip)
    reference = attack_rates(adapter, embeddings, table, tokens, mechanism.spec, seed=3)

    symbols = mechanism.privatize(table[tokens], np.random.default_rng(3))  # the same draws
    nearest = nearest_neighbour_guesses(adapter, embeddings, mechanism.decode(symbols))
    likeliest = likelihood_guesses(mechanism.log_likelihood(table), symbols)

    assert np.mean(nearest == tokens) == reference.nearest_neighbour
    assert np.mean(likeliest == tokens) == reference.likelihood


def test_a_server_given_raw_embeddings_reads_every_token(embeddings):
    tokens = np.arange(embeddings.shape[0])
    guesses = exact_lookup_guesses(embeddings, embeddings[tokens].numpy())
    assert np.mean(guesses == tokens) == 1.0


def test_gaussian_likelihood_table_is_the_law_its_sampler_follows():
    """Empirical symbol frequencies of n draws at one value lie within z·√(p(1−p)/n) of the
    table's probabilities; z = 5 keeps the false-failure rate below 1e-5 over 16 symbols."""
    mechanism = GaussianQuantized(mu_token=6.0, dim=1, bits=4, clip=1.0)
    x, n = 0.4, 200_000
    probabilities = np.exp(mechanism.log_likelihood(np.array([[x]])))[0, 0]  # (16,)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-9)
    draws = mechanism.privatize(np.full((n, 1), x, np.float32), np.random.default_rng(0))
    frequencies = np.bincount(draws[:, 0], minlength=16) / n
    tolerance = 5 * np.sqrt(probabilities * (1 - probabilities) / n) + 1e-9
    assert np.all(np.abs(frequencies - probabilities) <= tolerance)


def test_gaussian_baseline_is_exactly_mu_gdp_and_composes_over_tokens():
    mechanism = GaussianQuantized(mu_token=3.0, dim=16, bits=4, clip=0.5)
    assert mechanism.sigma == pytest.approx(2 * 0.5 * 4 / 3.0)  # sensitivity 2c√k over μ
    assert mechanism.epsilon(delta=1e-5) == pytest.approx(gdp_epsilon(1e-5, mu=3.0))
    assert mechanism.epsilon(delta=1e-5, tokens=9) == pytest.approx(gdp_epsilon(1e-5, mu=9.0))


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
