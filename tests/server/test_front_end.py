"""The posterior front-end: the server reads a private prompt as the strongest attacker does,
for the user. Its posterior must be the exact one of the hidden Markov model (checked against
enumerating every prompt), its trained gate must move between the posterior mean and the
"unknown" vector, and an adapter that carries it must round-trip and serve."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats

from del_client import Client, ClientConfig
from del_client.mechanism import PrivacySpec
from del_client.proto import inference_pb2
from del_server.adapter import Adapter
from del_server.attacks.mechanisms import Binomial
from del_server.attacks.sequence import BigramPrior
from del_server.backends.transformers import TransformersBackend
from del_server.front_end import PosteriorFrontEnd, initial_parameters
from del_server.generation import PrivatePrompt, PromptBuilder
from del_server.settings import DEFAULT_ADAPTER, Settings

VOCAB, DIM, LENGTH = 5, 3, 4


@pytest.fixture(scope="module")
def tiny():
    """A 5-token language, a 3-coordinate table and one privatized 4-token prompt."""
    rng = np.random.default_rng(7)
    prior = BigramPrior.fit(rng.integers(0, VOCAB, 300), VOCAB)
    table = rng.normal(0, 0.6, (VOCAB, DIM)).astype(np.float32)
    mechanism = Binomial(PrivacySpec.from_mu(mu=4.0, dim=DIM, bits=2, clip=1.0))
    prompt = rng.integers(0, VOCAB, LENGTH)
    symbols = mechanism.privatize(table[prompt], rng)[None]
    front = PosteriorFrontEnd(
        torch.randn(VOCAB, 6, generator=torch.Generator().manual_seed(0)), table, prior
    )
    return front, mechanism, symbols


def enumerated_posterior(front, mechanism, symbols) -> np.ndarray:
    """(T, V) P(token at t | symbols) by summing the joint over all V^T prompts."""
    spec = mechanism.spec
    p = 0.5 + np.clip(front.client_table.astype(np.float64), -spec.clip, spec.clip) / (
        2 * spec.scale
    )
    emission = stats.binom.logpmf(symbols[0][:, None, :], spec.levels, p[None]).sum(-1)  # (T, V)
    start = front.prior.log_start.double().numpy()
    transition = front.prior.dense.double().numpy()
    marginals = np.zeros((LENGTH, VOCAB))
    for prompt in itertools.product(range(VOCAB), repeat=LENGTH):
        log_joint = start[prompt[0]] + sum(emission[t, v] for t, v in enumerate(prompt))
        log_joint += sum(transition[a, b] for a, b in itertools.pairwise(prompt))
        for t, v in enumerate(prompt):
            marginals[t, v] += np.exp(log_joint)
    return marginals / marginals.sum(axis=1, keepdims=True)


def test_the_posterior_is_the_hidden_markov_models_exactly(tiny):
    front, mechanism, symbols = tiny
    found = front.log_posterior(symbols, mechanism)[0].exp().double().numpy()
    np.testing.assert_allclose(found, enumerated_posterior(front, mechanism, symbols), atol=1e-5)


def test_without_parameters_each_token_is_its_posterior_mean_embedding(tiny):
    front, mechanism, symbols = tiny
    posterior = torch.from_numpy(enumerated_posterior(front, mechanism, symbols)).float()
    torch.testing.assert_close(
        front.inputs(symbols, mechanism, None)[0], posterior @ front.embeddings, atol=1e-5, rtol=0
    )


def test_the_gate_moves_between_the_posterior_mean_and_the_unknown_vector(tiny):
    front, mechanism, symbols = tiny
    mean = front.inputs(symbols, mechanism, None)
    parameters = initial_parameters(front.embeddings)
    opened = front.inputs(symbols, mechanism, {**parameters, "gate": torch.tensor([50.0, 0.0])})
    closed = front.inputs(symbols, mechanism, {**parameters, "gate": torch.tensor([-50.0, 0.0])})
    torch.testing.assert_close(opened, mean)
    torch.testing.assert_close(closed, parameters["unknown"].expand_as(closed))


def test_training_reaches_every_parameter(tiny):
    front, mechanism, symbols = tiny
    parameters = {k: v.requires_grad_() for k, v in initial_parameters(front.embeddings).items()}
    front.inputs(symbols, mechanism, parameters).square().sum().backward()
    for name, value in parameters.items():
        assert torch.isfinite(value.grad).all(), name
        assert value.grad.abs().sum() > 0, name


def posterior_adapter(embeddings: torch.Tensor, public: np.ndarray) -> Adapter:
    """The committed adapter with a prior and untrained front-end parameters per soft prompt,
    without its particle reader (so the front-end reads every prompt)."""
    base = Adapter.load(DEFAULT_ADAPTER)
    prior = BigramPrior.fit(public, embeddings.shape[0])
    start = {mu: initial_parameters(embeddings) for mu in base.soft_prompts}
    return replace(base, prior=prior, front_ends=start, reader=None)


@pytest.fixture(scope="module")
def loaded(stories260k):
    from del_server.models import load_model

    return load_model(str(stories260k))


@pytest.fixture(scope="module")
def public(loaded, shared_dir) -> np.ndarray:
    text = (shared_dir / "data/tinystories/tinystories_val_head_dev.txt").read_text()[:200_000]
    return np.array(loaded.tokenizer.encode(text, add_special_tokens=False).ids)


def test_an_adapter_keeps_its_prior_and_front_ends_exactly(loaded, public, tmp_path):
    adapter = posterior_adapter(loaded.embeddings, public)
    again = Adapter.load(adapter.save(tmp_path))
    assert again.front_end == "posterior"
    assert replace(adapter, prior=None, front_ends={}, reader=None).front_end == "linear"
    for name in ("log_start", "pair_keys", "pair_counts", "row_totals"):
        assert torch.equal(getattr(again.prior, name), getattr(adapter.prior, name)), name
    assert again.prior.pair_keys.dtype == torch.int64
    assert again.front_ends.keys() == adapter.front_ends.keys()
    for mu, parameters in adapter.front_ends.items():
        for name, value in parameters.items():
            torch.testing.assert_close(again.front_ends[mu][name], value)


def test_front_end_parameters_need_a_prior_and_their_shapes(loaded, public):
    adapter = posterior_adapter(loaded.embeddings, public)
    with pytest.raises(ValueError, match="without a prior"):
        replace(adapter, prior=None)
    mu = next(iter(adapter.front_ends))
    wrong = {**adapter.front_ends[mu], "unknown": torch.zeros(3)}
    with pytest.raises(ValueError, match="front-end parameters"):
        replace(adapter, front_ends={mu: wrong})


def test_the_prompt_builder_feeds_the_llm_the_front_ends_inputs(loaded, public):
    adapter = posterior_adapter(loaded.embeddings, public)
    front = PosteriorFrontEnd.of(adapter, loaded.embeddings)
    mu = max(adapter.soft_prompts)
    spec = PrivacySpec.from_mu(mu=mu, dim=adapter.projection_dim, bits=4, clip=adapter.clip)
    symbols = np.random.default_rng(1).integers(0, 16, (5, adapter.projection_dim), np.uint8)
    builder = PromptBuilder(TransformersBackend(loaded.model), adapter, loaded.bos_id, front)
    inputs, used, reading = builder.build(PrivatePrompt(symbols, spec, mu=mu))
    expected = front.inputs(symbols[None], Binomial(spec), adapter.front_ends[mu])[0]
    assert (used, reading) == (mu, inference_pb2.PROMPT_READING_FRONT_END)
    torch.testing.assert_close(inputs[-5:], expected.detach())


def test_a_server_with_a_posterior_adapter_generates(loaded, public, serve, stories260k, tmp_path):
    out = posterior_adapter(loaded.embeddings, public).save(tmp_path / "adapter")
    settings = Settings(model=str(stories260k), adapter=str(out), port=0, metrics_port=-1)
    with serve(settings) as loopback:
        config = ClientConfig(target=loopback.target, bundle_cache_dir=tmp_path)
        with Client(config) as client:
            model = client.manifest().model
            level = model.privacy_levels[-1]
            result = client.generate(
                "Once upon a time", level=level.target_attack_rate, max_new_tokens=6
            ).collect()
    assert len(result.token_ids) == 6
    assert result.soft_prompt_mu == pytest.approx(level.mu)
    assert result.reading == model.prompt_reading == "front end"
    assert model.reader_particles == 0
    assert level.ignore_probability == 0
