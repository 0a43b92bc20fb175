"""The provider's own LLM as the prior over prompts, decoded by a particle smoother: the
strongest attack we know, and the Bayes posterior a server could use for the user.

The beam search (beam.py) keeps the single best hypotheses; token recovery is maximised by
each token's posterior marginal instead, and with an LLM prior no lattice gives it exactly.
A twisted sequential Monte Carlo sampler approximates it:

    target at step t   P_LM(v_1..v_t | prefix) · Π_s P(symbols_s | v_s) · β_t(v_t)

where β_t is the bigram lattice's backward message (what the symbols still to come say about
v_t), so particles are proposed and resampled with the future in view. Each step proposes
v_t from the locally optimal distribution ∝ P_LM(v | v_<t) · P(symbols_t | v) · β_t(v) and
weights the particle by its normaliser over β_{t-1}(v_{t-1}); the weights are exact
importance weights, resampling (systematic) happens when the effective sample size falls
under half. Two guesses come out of one run:

    filter    at each step, Σ_i w_i · proposal_i(v_t): every candidate scored, no sampling
              noise (Rao-Blackwellised), with the bigram standing in for the future
    smoother  the weighted final paths: the LLM's own view of the future, but earlier
              positions rest on fewer distinct ancestors (path degeneracy)

The filter is the stronger where the symbols say little (low μ), the smoother where they say
more. The LLM reads the prompt after a prefix trained on public text (`text_prefix`): a
prompt starts mid-story, where the LLM after BOS alone expects a beginning (without the
prefix it is a weaker prior than the bigram).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from ..backends.transformers import Prefilled, TransformersBackend
from ..train.defaults import DEFAULT_PARTICLES, DEFAULT_PREFIX_STEPS
from ..train.loop import optimize
from ..train.objective import FrozenLM
from .sequence import Lattice

PREFIX_LENGTH = 16
PREFIX_WINDOW = 32  # tokens of public text per training example of the prefix
PREFIX_BATCH = 32
PREFIX_LR = 1e-2
# Rows (prompts × particles) one pass of the attack steps together: the KV cache grows with
# them (about 0.1 MB a row for a 32-token prompt on the default model), so thousands of
# particles run a few prompts at a time.
MAX_ATTACK_ROWS = 32_768
# Continuations `mixture_nll` reads through the LLM at once (through transformers' forward
# their logits, 32 tokens over a 512-token vocabulary, take 256 MB).
MIXTURE_ROWS = 4_096

KeysValues = tuple[torch.Tensor, torch.Tensor]  # a layer's (rows, kv_heads, tokens, head_dim)


class SamplingAbandonedError(Exception):
    """The caller gave up on the sample (its `abandon` event was set): no result."""


@dataclass(frozen=True)
class ParticleGuesses:
    filter: np.ndarray  # (P, T) each position's argmax of the filtering marginal
    smoother: np.ndarray  # (P, T) each position's argmax over the weighted final paths


def text_prefix(
    model: PreTrainedModel,
    bos_id: int | None,
    public_ids: np.ndarray,
    *,
    length: int = PREFIX_LENGTH,
    steps: int = DEFAULT_PREFIX_STEPS,
    seed: int = 0,
) -> torch.Tensor:
    """(length, d) vectors after which the frozen LLM predicts public text cut at random
    offsets: its prior for a prompt that starts anywhere in a document. Trained from the
    embeddings of the public text's first tokens."""
    lm = FrozenLM(model, bos_id)
    stream = torch.from_numpy(np.asarray(public_ids, dtype=np.int64))
    if len(stream) <= PREFIX_WINDOW + length:
        raise ValueError("too little public text to train the attacker's prefix")
    params = {"prefix": lm.embed(stream[:length]).detach().float().clone()}

    def loss_fn(generator: torch.Generator) -> torch.Tensor:
        starts = torch.randint(len(stream) - PREFIX_WINDOW, (PREFIX_BATCH,), generator=generator)
        windows = stream[starts[:, None] + torch.arange(PREFIX_WINDOW)]
        return lm.continuation_loss(None, windows, params["prefix"])

    optimize(params, loss_fn, steps=steps, lr=PREFIX_LR, seed=seed, desc="attacker's prefix")
    return params["prefix"].detach()


@dataclass
class Particles:
    """A particle approximation of each prompt's posterior under the LLM, and (`predictive`)
    the LLM's state along every particle: what both the attack and a server's predictive
    read. The state (each layer's keys and values) holds one row per distinct history, not
    per particle (`rows`), and stops one token short of each path: nothing the sampler needs
    comes after the last token, and a continuation's likelihood (`mixture_nll`) feeds that
    token with the continuation."""

    paths: torch.Tensor  # (P, n, T) token ids
    log_weights: torch.Tensor  # (P, n) normalised
    filtered: torch.Tensor  # (P, T) each position's argmax of the filtering marginal
    # The LLM after prefix, BOS and each distinct path but its last token (`predictive`).
    states: list[KeysValues] | None
    rows: torch.Tensor  # (P, n) each particle's row of the states


class _CacheSteps:
    """The LLM stepped through transformers' forward and DynamicCache: any causal LM."""

    def __init__(self, model: PreTrainedModel, start: torch.Tensor) -> None:
        self.model, self.device = model, start.device
        out = model(inputs_embeds=start[None], cache=DynamicCache())
        self.cache = out.cache
        self.first = out.logits[:, -1].float().log_softmax(dim=-1).cpu()

    def extend(self, parents: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        self.cache.reorder_cache(parents.to(self.device))
        out = self.model(
            input_ids=ids.view(-1, 1).to(self.device), cache=self.cache, use_cache=True
        )
        return out.logits[:, -1].float().log_softmax(dim=-1).cpu()

    def states(self) -> list[KeysValues]:
        return [(layer.keys, layer.values) for layer in self.cache.layers]


class _BatchSteps:
    """The same through the serving backend's padded batch (`LlamaPath`: the same
    mathematics in far fewer Python steps, buffers written in place, and only the rows that
    moved copied), where it applies."""

    def __init__(self, backend: TransformersBackend, start: torch.Tensor) -> None:
        logits, state = backend.prefill_many([start])
        self.batch = backend.new_batch()
        self.batch.add(state)
        self.first = logits.float().log_softmax(dim=-1).cpu()

    def extend(self, parents: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        self.batch.keep(parents.tolist())
        return self.batch.decode(ids.tolist()).float().log_softmax(dim=-1).cpu()

    def states(self) -> list[KeysValues]:
        return self.batch.states()


@torch.no_grad()
def sample_posterior(
    model: PreTrainedModel,
    bos_id: int | None,
    prefix: torch.Tensor,  # (m, d) from text_prefix
    lattice: Lattice,
    *,
    particles: int = DEFAULT_PARTICLES,
    seed: int = 0,
    predictive: bool = False,
    abandon: threading.Event | None = None,
) -> Particles:
    """Every prompt of the lattice at once, all particles in one batched pass per position
    over a shared KV cache. The LLM's state depends on a particle's history alone, and
    resampling leaves many particles (of any prompt) on the same history: the cache holds
    one row per distinct history, each step feeds only the distinct (history, token) pairs
    drawn, and resampling moves no cache at all: exactly the same mathematics as a row per
    particle, at a fraction of the rows (stories260K at 512 particles: about a quarter).
    Llama models step through the serving backend's faster path. `predictive`: keep the
    LLM's state for `mixture_nll`. `abandon`, once set, stops the sampler at its next position
    (SamplingAbandonedError): a server's read whose client has gone."""
    if particles < 1:
        raise ValueError(f"the particle sampler needs at least one particle, got {particles}")
    prompts, length, keep = lattice.candidates.shape
    if length < 1:
        raise ValueError("the particle sampler needs prompts of at least one token")
    n = particles
    lookahead = lattice.backward()  # (P, T, M)
    generator = torch.Generator().manual_seed(seed)
    lm = FrozenLM(model, bos_id)
    start = lm.prefix(None, 1, prefix.to(lm.device))[0]  # (m + 1, d): prefix and BOS
    backend = TransformersBackend(model)
    steps = _CacheSteps(model, start) if backend.fast is None else _BatchSteps(backend, start)
    next_log_p = steps.first  # (R, V): after each distinct history, R of them
    row = torch.zeros(prompts, n, dtype=torch.long)  # each particle's history's row
    log_w = torch.zeros(prompts, n)
    previous = torch.zeros(prompts, n)  # β_{t-1} of each particle's last token
    paths = torch.zeros(prompts, n, 0, dtype=torch.long)
    filtered = torch.zeros(prompts, length, dtype=torch.long)
    rows = torch.arange(prompts)[:, None]
    for t in range(length):
        if abandon is not None and abandon.is_set():
            raise SamplingAbandonedError(f"abandoned at position {t} of {length}")
        candidates = lattice.candidates[:, t]  # (P, M)
        prior = next_log_p[row[..., None], candidates[:, None, :]]  # (P, n, M)
        proposal = prior + (lattice.emission[:, t] + lookahead[:, t])[:, None, :]  # (P, n, M)
        log_w = log_w + proposal.logsumexp(dim=-1) - previous
        weights = (log_w - log_w.logsumexp(dim=-1, keepdim=True)).exp()
        marginal = torch.einsum("pn,pnm->pm", weights, proposal.softmax(dim=-1))
        filtered[:, t] = candidates.gather(-1, marginal.argmax(dim=-1, keepdim=True)).squeeze(-1)
        ancestors, resampled = _resampled(weights, generator)
        if resampled.any():  # else the identity
            log_w = torch.where(resampled, 0.0, log_w)  # resampled particles weigh the same
            proposal, paths = proposal[rows, ancestors], paths[rows, ancestors]
            row = row[rows, ancestors]
        pick = _draw(proposal.view(prompts * n, keep).softmax(-1), generator).view(prompts, n)
        chosen = candidates.gather(-1, pick)  # (P, n) token ids
        paths = torch.cat([paths, chosen[..., None]], dim=-1)
        previous = lookahead[:, t].gather(-1, pick)  # zero at the last position: no twist left
        if t + 1 < length:
            vocab = next_log_p.shape[-1]
            histories, which = torch.unique(row * vocab + chosen, return_inverse=True)
            slots = _slots(histories // vocab)
            row = slots[which]
            parents, ids = torch.empty_like(histories), torch.empty_like(histories)
            parents[slots], ids[slots] = histories // vocab, histories % vocab
            next_log_p = steps.extend(parents, ids)
    return Particles(
        paths=paths,
        log_weights=log_w - log_w.logsumexp(dim=-1, keepdim=True),
        filtered=filtered,
        states=steps.states() if predictive else None,
        rows=row,
    )


def particle_guesses(
    model: PreTrainedModel,
    bos_id: int | None,
    prefix: torch.Tensor,
    lattice: Lattice,
    *,
    particles: int = DEFAULT_PARTICLES,
    seed: int = 0,
) -> ParticleGuesses:
    """Both guesses of the attack for every prompt of the lattice, at most MAX_ATTACK_ROWS
    rows at a time (group g sampled with seed + g)."""
    group = max(1, MAX_ATTACK_ROWS // particles)
    filtered, smoothed = [], []
    for g, start in enumerate(range(0, lattice.candidates.shape[0], group)):
        found = sample_posterior(
            model,
            bos_id,
            prefix,
            lattice.prompts(slice(start, start + group)),
            particles=particles,
            seed=seed + g,
        )
        filtered.append(found.filtered.numpy())
        smoothed.append(_weighted_mode(found.paths, found.log_weights.exp()).numpy())
    return ParticleGuesses(np.concatenate(filtered), np.concatenate(smoothed))


@torch.no_grad()
def mixture_nll(
    model: PreTrainedModel, particles: Particles, continuations: torch.Tensor
) -> torch.Tensor:
    """(P,) −log Σ_i w_i · P_LM(continuation | prefix, BOS, path_i) in nats: a continuation's
    loss under the posterior predictive, what a server that decodes the prompt as the attacker
    does (for the user) would predict. Particles of a prompt on the same path read its
    continuation once; MIXTURE_ROWS such reads go through the LLM at a time."""
    if particles.states is None:
        raise ValueError("these particles were sampled without their states: predictive=True")
    prompts = len(particles.log_weights)
    vocab = model.get_input_embeddings().num_embeddings
    cached = int(particles.rows.max()) + 1
    owner = torch.arange(prompts)[:, None]
    # A read: (prompt, row of the states, last token), the last token not in them yet.
    key = (owner * cached + particles.rows) * vocab + particles.paths[..., -1]
    reads, which = torch.unique(key, return_inverse=True)
    backend = TransformersBackend(model)
    log_likelihood = torch.cat(
        [
            _continuation_log_likelihood(
                backend,
                particles.states,
                part // vocab % cached,
                part % vocab,
                continuations[part // (vocab * cached)],
            )
            for part in reads.split(MIXTURE_ROWS)
        ]
    )
    per_path = log_likelihood[which]  # (P, n)
    return -(particles.log_weights + per_path).logsumexp(dim=-1)


def _continuation_log_likelihood(
    backend: TransformersBackend,
    states: list[KeysValues],
    rows: torch.Tensor,
    last: torch.Tensor,
    targets: torch.Tensor,
) -> torch.Tensor:
    """(R,) log P_LM(targets | the states' row, last token) of each read: Llama models
    teacher-forced through the serving backend's padded batch, one token a step (about 1.4×
    as fast here as transformers' forward over the whole continuation), others through that
    forward."""
    device = backend.device
    picked = rows.to(device)
    keys, values = [k[picked] for k, _ in states], [v[picked] for _, v in states]
    inputs = torch.cat([last[:, None], targets[:, :-1]], dim=1).to(device)
    targets = targets.to(device)
    if backend.fast is None:
        cache = DynamicCache(ddp_cache_data=list(zip(keys, values, strict=True)))
        logits = backend.model(input_ids=inputs, cache=cache, use_cache=True).logits.float()
        chosen = logits.gather(-1, targets[..., None]).squeeze(-1)
        return (chosen - logits.logsumexp(dim=-1)).sum(dim=-1).cpu()
    reads, width = len(rows), keys[0].shape[2]
    batch = backend.new_batch()
    mask = torch.ones(reads, width, dtype=torch.bool, device=device)
    batch.add(Prefilled(keys, values, mask, torch.full((reads,), width, device=device)))
    total = torch.zeros(reads, device=device)
    for step in range(inputs.shape[1]):
        logits = batch.decode(inputs[:, step].tolist()).float()
        chosen = logits.gather(-1, targets[:, step, None]).squeeze(-1)
        total += chosen - logits.logsumexp(dim=-1)
    return total.cpu()


def _slots(parents: torch.Tensor) -> torch.Tensor:
    """(R,) the row each new history takes in the LLM's state, from its parent's row (sorted):
    a parent's first child takes the parent's own row where it can, the others the rows left
    over, so that a step copies only the histories that branched."""
    first = torch.ones_like(parents, dtype=torch.bool)
    first[1:] = parents[1:] != parents[:-1]
    stays = first & (parents < len(parents))
    slots = torch.empty_like(parents)
    slots[stays] = parents[stays]
    taken = torch.zeros(len(parents), dtype=torch.bool)
    taken[parents[stays]] = True
    slots[~stays] = (~taken).nonzero().squeeze(1)
    return slots


def _draw(probabilities: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(R, M) rows of probabilities -> (R,) one index drawn from each, by inverting the
    cumulative sum at a uniform (torch.multinomial draws the same, 14× slower at M = 512)."""
    cumulative = probabilities.cumsum(dim=-1)
    uniform = torch.rand(len(probabilities), 1, generator=generator)
    drawn = torch.searchsorted(cumulative, uniform * cumulative[:, -1:], right=True)
    return drawn.squeeze(-1).clamp(max=probabilities.shape[-1] - 1)


def _resampled(
    weights: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, n) ancestor of each new particle, (P, 1) whether the prompt was resampled:
    systematic resampling where the effective sample size is under n / 2, else the identity."""
    prompts, n = weights.shape
    offsets = (torch.rand(prompts, 1, generator=generator) + torch.arange(n)) / n
    drawn = torch.searchsorted(weights.cumsum(dim=-1), offsets).clamp(max=n - 1)
    degenerate = 1 / weights.square().sum(dim=-1, keepdim=True) < n / 2
    return torch.where(degenerate, drawn, torch.arange(n).expand(prompts, n)), degenerate


def _weighted_mode(paths: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(P, n, T) paths, (P, n) weights -> (P, T) each position's token of most weight."""
    prompts, n, length = paths.shape
    best = torch.empty(prompts, length, dtype=torch.long)
    for p in range(prompts):
        tokens, index = paths[p].T.unique(return_inverse=True)  # index (T, n)
        mass = torch.zeros(length, len(tokens)).scatter_add_(
            -1, index, weights[p].expand(length, n).contiguous()
        )
        best[p] = tokens[mass.argmax(dim=-1)]
    return best
