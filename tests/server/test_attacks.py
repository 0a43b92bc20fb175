"""The attacks a privacy level must withstand: exact where they claim to be, and stronger with
context than without, on the real model and real held-out text."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from del_server.adapter import pca_adapter
from del_server.attacks import particle
from del_server.attacks.mechanisms import Binomial
from del_server.attacks.particle import _draw, mixture_nll, particle_guesses, sample_posterior
from del_server.attacks.recovery import clustered_interval, content_mask, recovery
from del_server.attacks.sequence import (
    BigramPrior,
    Lattice,
    marginal_guesses,
    posterior_marginals,
    viterbi_guesses,
)
from del_server.attacks.suite import ATTACKS, Attacker, AttackOptions
from del_server.attacks.trigram import TrigramPrior, trigram_marginal_guesses, trigram_marginals
from del_server.backends.transformers import TransformersBackend
from del_server.train.calibrate import calibrate
from del_server.train.data import load_split
from del_server.train.objective import FrozenLM

TINYSTORIES = "data/tinystories/tinystories_val_head_dev.txt"


def _tiny_hmm(seed: int, vocab: int = 4, length: int = 4) -> tuple[BigramPrior, torch.Tensor]:
    rng = np.random.default_rng(seed)
    prior = BigramPrior.fit(rng.integers(0, vocab, 60), vocab, smoothing=0.5)
    log_likelihood = torch.from_numpy(rng.normal(0, 2, (2, length, vocab))).float()
    return prior, log_likelihood


def _joint(prior: BigramPrior, log_likelihood: torch.Tensor, path: tuple[int, ...]) -> float:
    score = float(prior.log_start[path[0]])
    for t, v in enumerate(path):
        score += float(log_likelihood[t, v])
        if t:
            score += float(prior.dense[path[t - 1], v])
    return score


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forward_backward_and_viterbi_equal_brute_force_enumeration(seed):
    prior, log_likelihood = _tiny_hmm(seed)
    prompts, length, vocab = log_likelihood.shape
    lattice = Lattice.build(log_likelihood, prior)
    marginals = posterior_marginals(lattice).exp().numpy()
    viterbi = viterbi_guesses(lattice)
    for p in range(prompts):
        paths = list(itertools.product(range(vocab), repeat=length))
        joint = np.array([_joint(prior, log_likelihood[p], path) for path in paths])
        weights = np.exp(joint - joint.max())
        weights /= weights.sum()
        expected = np.zeros((length, vocab))
        for path, weight in zip(paths, weights, strict=True):
            expected[np.arange(length), path] += weight
        np.testing.assert_allclose(marginals[p], expected, atol=1e-5)
        assert tuple(viterbi[p]) == paths[int(joint.argmax())]
    assert (marginal_guesses(lattice) == marginals.argmax(-1)).all()


def test_pruning_tokens_the_symbols_rule_out_changes_nothing():
    prior, log_likelihood = _tiny_hmm(3, vocab=6, length=5)
    log_likelihood[:, :, 0] = -1e4  # token 0 is impossible everywhere: pruning drops it
    full, pruned = Lattice.build(log_likelihood, prior), Lattice.build(log_likelihood, prior, 5)
    assert pruned.pruned
    assert not full.pruned
    np.testing.assert_array_equal(viterbi_guesses(full), viterbi_guesses(pruned))
    np.testing.assert_array_equal(marginal_guesses(full), marginal_guesses(pruned))


def _tiny_trigram(seed: int, vocab: int, kappa: float) -> TrigramPrior:
    public = np.random.default_rng(seed).integers(0, vocab, 80)
    return TrigramPrior.fit(public, BigramPrior.fit(public, vocab, smoothing=0.5), kappa=kappa)


@pytest.mark.parametrize(("seed", "keep"), [(0, 4), (1, 4), (2, 3), (3, 2)])
def test_trigram_forward_backward_equals_brute_force_enumeration_over_the_kept_candidates(
    seed, keep
):
    _, log_likelihood = _tiny_hmm(seed, vocab=4, length=5)
    trigram = _tiny_trigram(seed, vocab=4, kappa=0.5)
    prompts, length, vocab = log_likelihood.shape
    lattice = Lattice.build(log_likelihood, trigram.bigram)
    candidates, marginals = trigram_marginals(lattice, trigram, keep=keep)
    ids = torch.arange(vocab)
    log_p = trigram.log_transition(ids[:, None, None], ids[None, :, None], ids[None, None, :])
    for p in range(prompts):
        paths = list(itertools.product(*candidates[p].tolist()))  # every path the pruning keeps
        joint = np.array(
            [
                _joint(trigram.bigram, log_likelihood[p], path[:2])
                + sum(
                    float(log_likelihood[p, t, path[t]] + log_p[path[t - 2 : t + 1]])
                    for t in range(2, length)
                )
                for path in paths
            ]
        )
        weights = np.exp(joint - joint.max())
        weights /= weights.sum()
        expected = np.zeros((length, vocab))
        for path, weight in zip(paths, weights, strict=True):
            expected[np.arange(length), path] += weight
        found = np.zeros((length, vocab))
        np.put_along_axis(found, candidates[p].numpy(), marginals[p].exp().numpy(), axis=-1)
        np.testing.assert_allclose(found, expected, atol=1e-6)


def test_a_trigram_that_trusts_only_its_bigram_decodes_as_the_bigram():
    _, log_likelihood = _tiny_hmm(4, vocab=6, length=6)
    trigram = _tiny_trigram(4, vocab=6, kappa=1e9)
    lattice = Lattice.build(log_likelihood, trigram.bigram)
    _, marginals = trigram_marginals(lattice, trigram, keep=6)
    np.testing.assert_allclose(
        marginals.exp().sort(dim=-1).values,
        posterior_marginals(lattice).exp().sort(dim=-1).values,
        atol=1e-5,
    )
    np.testing.assert_array_equal(
        trigram_marginal_guesses(lattice, trigram, keep=6), marginal_guesses(lattice)
    )


def test_recovery_counts_tokens_prompts_and_clusters_the_interval_by_prompt():
    truth = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [5, 6, 7, 8]])
    guesses = np.array([[1, 2, 3, 4], [1, 2, 0, 0], [0, 0, 0, 8]])
    result = recovery(guesses, truth, content=truth > 2)
    assert result.rate == pytest.approx(7 / 12)
    assert result.exact_prompts == pytest.approx(1 / 3)
    assert result.half_prompts == pytest.approx(2 / 3)
    assert result.content_rate == pytest.approx(3 / 8)  # 3, 4 of the first prompt; 8
    # The clustered standard error of a mean of equal-size clusters is the per-prompt rates'.
    per_prompt = np.array([1.0, 0.5, 0.25])
    se = per_prompt.std(ddof=1) / np.sqrt(3)
    rate, low, high = clustered_interval(np.array([4, 2, 1]), np.array([4, 4, 4]))
    assert (low, high) == pytest.approx(
        (max(0, rate - 1.96 * se), min(1, rate + 1.96 * se)), abs=1e-3
    )


def test_content_tokens_are_those_outside_the_most_frequent_public_tokens():
    public = np.repeat(np.arange(60), np.arange(60, 0, -1))  # token 0 the most frequent
    mask = content_mask(np.array([0, 49, 50, 59]), public, vocab=60)
    assert mask.tolist() == [False, False, True, True]


def test_the_particle_draw_follows_its_probabilities_and_never_draws_an_impossible_one():
    probabilities = torch.tensor([[0.0, 0.5, 0.0, 0.2, 0.3, 0.0]]).expand(20_000, -1)
    drawn = _draw(probabilities, torch.Generator().manual_seed(0))
    counts = torch.bincount(drawn, minlength=6)
    assert counts[[0, 2, 5]].sum() == 0
    expected = probabilities[0, [1, 3, 4]] * len(drawn)
    assert stats.chisquare(counts[[1, 3, 4]].numpy(), expected.numpy()).pvalue > 1e-3


@pytest.fixture(scope="module")
def held_out(shared_dir, stories260k):
    from del_server.models import load_model

    loaded = load_model(str(stories260k))
    split = load_split(shared_dir / TINYSTORIES, loaded.tokenizer)
    train = split.train
    public = torch.cat([train.prompts, train.continuations], dim=1).reshape(-1).numpy()
    embeddings = loaded.model.get_input_embeddings().weight.detach().float()
    attacker = Attacker(
        embeddings,
        loaded.model,
        loaded.bos_id,
        public,
        AttackOptions(
            beam_width=16,
            learned_steps=60,
            learned_batch=256,
            particles=32,
            prefix_steps=60,
            trigram_keep=16,
        ),
    )
    adapter = pca_adapter(embeddings, dim=16)
    return attacker, adapter, split.validation


def test_context_beats_per_token_likelihood_beyond_sampling_noise(held_out):
    attacker, adapter, validation = held_out
    prompts = validation.prompts[:64].numpy()
    mechanism = Binomial.at(mu=24.0, dim=16, bits=4, clip=adapter.clip)
    results = attacker.attack(adapter, mechanism, prompts, seed=0)
    assert set(results) == set(ATTACKS)
    likelihood = results["likelihood"]
    for name in ("bigram_marginal", "trigram_marginal", "lm_beam", "lm_filter", "lm_smoother"):
        assert results[name].low > likelihood.high, (name, results[name], likelihood)


@torch.no_grad()
def test_the_particle_filter_of_one_token_is_the_exact_posterior_under_the_model(held_out):
    attacker, _, _ = held_out
    generator = torch.Generator().manual_seed(0)
    log_likelihood = 3 * torch.randn(6, 1, attacker.vocab, generator=generator)
    lattice = Lattice.build(log_likelihood, attacker.prior)
    prefix = attacker.prefix
    found = particle_guesses(attacker.model, attacker.bos_id, prefix, lattice, particles=4)
    bos = attacker.embeddings[[attacker.bos_id]]
    logits = attacker.model(inputs_embeds=torch.cat([prefix, bos])[None]).logits[0, -1]
    exact = (logits.log_softmax(-1) + log_likelihood[:, 0]).argmax(-1)
    assert found.filter[:, 0].tolist() == exact.tolist()  # the smoother's 4 particles sample it


def _random_lattice(attacker, prompts: int, length: int, seed: int) -> Lattice:
    generator = torch.Generator().manual_seed(seed)
    log_likelihood = 2 * torch.randn(prompts, length, attacker.vocab, generator=generator)
    return Lattice.build(log_likelihood, attacker.prior)


def _sampled(attacker, lattice: Lattice, **options) -> particle.Particles:
    return sample_posterior(attacker.model, attacker.bos_id, attacker.prefix, lattice, **options)


def _without_the_llama_path(monkeypatch) -> None:
    """The sampler as it runs any other causal LM: transformers' forward and cache."""
    monkeypatch.setattr(
        particle, "TransformersBackend", lambda model: TransformersBackend(model, fast=False)
    )


@torch.no_grad()
def test_the_llama_path_samples_the_particles_transformers_forward_samples(held_out, monkeypatch):
    # Llama models step through the serving backend, any other causal LM through
    # transformers' forward and cache: with the same seed both draw the same particles
    # (logits agree to float rounding).
    attacker, _, _ = held_out
    lattice = _random_lattice(attacker, 3, 7, seed=1)
    fast = _sampled(attacker, lattice, particles=16, seed=3)
    _without_the_llama_path(monkeypatch)
    generic = _sampled(attacker, lattice, particles=16, seed=3)
    assert torch.equal(fast.paths, generic.paths)
    assert torch.equal(fast.filtered, generic.filtered)
    torch.testing.assert_close(fast.log_weights, generic.log_weights, rtol=1e-4, atol=1e-4)
    assert fast.states is None  # not asked to keep them
    with pytest.raises(ValueError, match="predictive=True"):
        mixture_nll(attacker.model, fast, torch.zeros(3, 2, dtype=torch.long))


@torch.no_grad()
def test_particles_share_a_state_row_exactly_when_their_histories_are_the_same(held_out):
    # Resampling leaves many particles on one history: the LLM's state holds it once.
    attacker, _, _ = held_out
    lattice = _random_lattice(attacker, 3, 6, seed=4)
    found = _sampled(attacker, lattice, particles=32, seed=5, predictive=True)
    histories = found.paths[..., :-1].reshape(-1, 5)
    rows = found.rows.reshape(-1)
    same_history = (histories[:, None] == histories[None]).all(dim=-1)
    assert torch.equal(same_history, rows[:, None] == rows[None])
    assert found.states[0][0].shape[0] < len(rows)  # fewer rows than particles


@torch.no_grad()
@pytest.mark.parametrize("fast", [True, False], ids=["llama path", "transformers forward"])
def test_the_mixture_is_the_weighted_likelihood_of_each_particles_whole_sequence(
    held_out, monkeypatch, fast
):
    # The posterior predictive, computed the long way: every particle's prefix, BOS, path and
    # continuation through the LLM from scratch; Llama models read the continuations through
    # the serving backend, any other causal LM through transformers' forward.
    if not fast:
        _without_the_llama_path(monkeypatch)
    attacker, _, validation = held_out
    continuations = validation.continuations[:3, :4]
    lattice = _random_lattice(attacker, 3, 5, seed=6)
    found = _sampled(attacker, lattice, particles=8, seed=7, predictive=True)
    assert len(found.paths.flatten(0, 1).unique(dim=0)) > 3  # the particles differ
    lm = FrozenLM(attacker.model, attacker.bos_id)
    per_path = torch.stack(
        [
            -torch.stack(
                [
                    lm.continuation_loss(lm.embed(path[None]), continuations[[p]], attacker.prefix)
                    * continuations.shape[1]
                    for path in found.paths[p]
                ]
            )
            for p in range(3)
        ]
    )
    expected = -(found.log_weights + per_path).logsumexp(dim=-1)
    torch.testing.assert_close(
        mixture_nll(attacker.model, found, continuations), expected, rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("seed", range(5))
def test_a_new_history_takes_its_parents_row_where_it_can_and_every_row_is_taken_once(seed):
    generator = torch.Generator().manual_seed(seed)
    parents = (
        torch.randint(
            0, 12, (int(torch.randint(1, 20, (1,), generator=generator)),), generator=generator
        )
        .sort()
        .values
    )
    slots = particle._slots(parents)
    assert sorted(slots.tolist()) == list(range(len(parents)))
    for parent in parents.unique().tolist():
        if parent < len(parents):
            assert parent in slots[parents == parent].tolist()  # one child copies nothing


@torch.no_grad()
def test_many_particles_run_a_few_prompts_at_a_time_each_group_as_it_would_alone(
    held_out, monkeypatch
):
    # Thousands of particles would hold a KV cache row for each (prompt, particle): the attack
    # splits the prompts so that no pass holds more than MAX_ATTACK_ROWS rows, group g with
    # seed + g, and each group's guesses are those the sampler gives that group alone.
    attacker, _, _ = held_out
    generator = torch.Generator().manual_seed(2)
    lattice = Lattice.build(
        2 * torch.randn(5, 6, attacker.vocab, generator=generator), attacker.prior
    )
    monkeypatch.setattr(particle, "MAX_ATTACK_ROWS", 2 * 16)  # two prompts of 16 particles
    found = particle_guesses(
        attacker.model, attacker.bos_id, attacker.prefix, lattice, particles=16, seed=7
    )
    assert found.filter.shape == found.smoother.shape == (5, 6)
    for group, rows in enumerate((slice(0, 2), slice(2, 4), slice(4, 5))):
        alone = sample_posterior(
            attacker.model,
            attacker.bos_id,
            attacker.prefix,
            lattice.prompts(rows),
            particles=16,
            seed=7 + group,
        )
        assert found.filter[rows].tolist() == alone.filtered.tolist()


def test_blind_guessing_recovers_only_the_most_predictable_tokens(held_out):
    attacker, _, validation = held_out
    blind = attacker.prior_alone(validation.prompts[:32].numpy())
    assert 0 < max(r.rate for r in blind.values()) < 0.1


def test_a_calibrated_level_holds_on_prompts_it_was_not_calibrated_on(held_out):
    attacker, adapter, validation = held_out
    levels = calibrate(
        adapter,
        attacker,
        validation.prompts[:48].numpy(),
        measured_on="test",
        targets=(0.15,),
        seed=0,
        iterations=8,
    )
    level = levels[0]
    assert level.strongest.high < 0.15
    assert level.epsilon_token == pytest.approx(
        Binomial.at(mu=level.mu, dim=16, bits=4, clip=adapter.clip).epsilon(delta=1e-5)
    )
    fresh = validation.prompts[48:112].numpy()
    mechanism = Binomial.at(mu=level.mu, dim=16, bits=4, clip=adapter.clip)
    measured = attacker.attack(adapter, mechanism, fresh, seed=7)
    worst = max(r.rate for r in measured.values())
    # Under the target on fresh prompts and noise, within these 64 prompts' sampling error.
    assert worst < 0.15 + 0.03, measured


def test_a_target_below_what_blind_guessing_gets_is_refused(held_out):
    attacker, adapter, validation = held_out
    with pytest.raises(ValueError, match="out of reach"):
        calibrate(
            adapter,
            attacker,
            validation.prompts[:24].numpy(),
            measured_on="test",
            targets=(0.005,),
            iterations=4,
        )


@torch.no_grad()
def test_the_mixture_of_a_prompt_the_symbols_pin_down_is_the_clean_prompts_loss(held_out):
    attacker, _, validation = held_out
    prompts, continuations = validation.prompts[:3, :6], validation.continuations[:3, :5]
    certain = torch.full((*prompts.shape, attacker.vocab), -1e4).scatter_(
        -1, prompts[..., None], 0.0
    )
    lattice = Lattice.build(certain, attacker.prior)
    particles = sample_posterior(
        attacker.model, attacker.bos_id, attacker.prefix, lattice, particles=4, predictive=True
    )
    assert (particles.paths == prompts[:, None, :]).all()
    lm = FrozenLM(attacker.model, attacker.bos_id)
    clean = [
        lm.continuation_loss(lm.embed(prompts[[p]]), continuations[[p]], attacker.prefix)
        for p in range(3)
    ]
    expected = torch.stack(clean) * continuations.shape[1]
    torch.testing.assert_close(
        mixture_nll(attacker.model, particles, continuations), expected, rtol=1e-4, atol=1e-4
    )
