"""The sequence attack with one more token of context: a trigram prior, decoded exactly over
the bigram posterior's most likely candidates.

    P(tokens) = P(v_1) · P(v_2 | v_1) · Π_{t ≥ 3} P(v_t | v_{t-2}, v_{t-1})

The trigram of public text is shrunk towards the bigram (a Dirichlet prior of weight κ
centred on it), so a context public text never shows falls back to the bigram:

    P(c | a, b) = n(a, b, c) / (n(a, b) + κ)  +  κ / (n(a, b) + κ) · P_bigram(c | b)

Forward-backward runs over pairs of consecutive candidates (M² states), the M candidates of a
position being the most probable under the bigram posterior (sequence.posterior_marginals):
exact over them. The two terms of the transition are summed apart, so a step costs O(M²) plus
the triples public text holds among the candidates, not the M³ of a dense transition: the
bigram term factorises over the oldest token, and the seen triples are enumerated from each
seen context's run of continuations in the sorted triple keys.

Where the symbols say much (the 20 % level of stories260K) the extra token of context recovers
more than the bigram and the LLM particle attacks; where they say little, the pruning and the
sparse counts leave it under the bigram, which the suite runs beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ..train.defaults import DEFAULT_TRIGRAM_KEEP
from .sequence import BigramPrior, Lattice, posterior_marginals

DEFAULT_KAPPA = 1.0  # the bigram's weight, in counts, in every trigram context


@dataclass(frozen=True, eq=False)
class TrigramPrior:
    """Triple counts of public text, kept sparse and sorted by key (a triple's continuations
    of one context are one run), over `bigram` (fitted on the same text)."""

    bigram: BigramPrior
    triple_keys: torch.Tensor  # (N,) sorted (a · V + b) · V + c of the triples seen
    triple_counts: torch.Tensor  # (N,) float64
    kappa: float

    @classmethod
    def fit(
        cls, token_ids: np.ndarray, bigram: BigramPrior, *, kappa: float = DEFAULT_KAPPA
    ) -> TrigramPrior:
        ids = torch.from_numpy(np.asarray(token_ids, dtype=np.int64))
        if ids.numel() < 3:
            raise ValueError("a trigram prior needs at least three tokens of public text")
        if kappa <= 0:
            raise ValueError(f"the bigram's weight κ must be positive, got {kappa}")
        vocab = bigram.vocab
        keys = (ids[:-2] * vocab + ids[1:-1]) * vocab + ids[2:]
        triples, counts = torch.unique(keys, sorted=True, return_counts=True)
        return cls(bigram, triples, counts.double(), kappa)

    def continuations(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The run [first, last) of `triple_keys` continuing each context key a · V + b."""
        vocab = self.bigram.vocab
        first = torch.searchsorted(self.triple_keys, context * vocab)
        return first, torch.searchsorted(self.triple_keys, (context + 1) * vocab)

    def context_counts(self, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """n(a, b): the triples in each run, counted with multiplicity."""
        return self._cumulative[last] - self._cumulative[first]

    def log_transition(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """log P(c | a, b), elementwise over the broadcast shape of the three id tensors."""
        vocab = self.bigram.vocab
        a, b, c = torch.broadcast_tensors(a, b, c)
        contexts = self.context_counts(*self.continuations(a * vocab + b))
        keys = (a * vocab + b) * vocab + c
        found = torch.searchsorted(self.triple_keys, keys).clamp(max=len(self.triple_keys) - 1)
        triples = torch.where(self.triple_keys[found] == keys, self.triple_counts[found], 0.0)
        bigram = self.bigram.transition(b, c).double().exp()
        return ((triples + self.kappa * bigram) / (contexts + self.kappa)).log().float()

    @cached_property
    def _cumulative(self) -> torch.Tensor:
        return torch.cat([self.triple_counts.new_zeros(1), self.triple_counts.cumsum(0)])


@dataclass(frozen=True)
class _Step:
    """One position's transition from pairs (i at t - 2, j at t - 1) to pairs (j, k at t),
    in a chunk of P prompts over M candidates a position: the two terms of P(c | a, b)."""

    shrink: torch.Tensor  # (P, M, M) over (i, j): 1 / (n(a_i, b_j) + κ)
    bigram: torch.Tensor  # (P, M, M) over (j, k): κ · P_bigram(c_k | b_j)
    pairs: torch.Tensor  # (S,) flat (prompt, i, j) of each seen triple among the candidates
    successors: torch.Tensor  # (S,) flat (prompt, j, k) of the same triples
    counts: torch.Tensor  # (S,) n(a_i, b_j, c_k)

    @classmethod
    def between(
        cls, trigram: TrigramPrior, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor
    ) -> _Step:
        """The step over candidates a, b, c (each (P, M)) at t - 2, t - 1, t."""
        prompts, m = a.shape
        vocab = trigram.bigram.vocab
        first, last = trigram.continuations(a[:, :, None] * vocab + b[:, None, :])
        # every seen triple continuing a candidate pair: its pair (flat) and its key's index
        runs = (last - first).flatten()
        pairs = torch.repeat_interleave(torch.arange(runs.numel()), runs)
        starts = runs.cumsum(0) - runs
        triples = first.flatten()[pairs] + torch.arange(len(pairs)) - starts[pairs]
        # where each one's third token stands among position t's candidates (-1: not kept)
        slot = torch.full((prompts, vocab), -1, dtype=torch.long)
        slot.scatter_(1, c, torch.arange(m).expand(prompts, m))
        k = slot[pairs // (m * m), trigram.triple_keys[triples] % vocab]
        kept = k >= 0
        pairs, triples, k = pairs[kept], triples[kept], k[kept]
        prompt, j = pairs // (m * m), pairs % m
        bigram = trigram.bigram.transition(b[:, :, None], c[:, None, :]).double().exp()
        return cls(
            shrink=1 / (trigram.context_counts(first, last) + trigram.kappa),
            bigram=trigram.kappa * bigram,
            pairs=pairs,
            successors=(prompt * m + j) * m + k,
            counts=trigram.triple_counts[triples],
        )

    def forward(self, alpha: torch.Tensor) -> torch.Tensor:
        """(P, M, M) Σ_i alpha[i, j] · P(c_k | a_i, b_j), over (j, k)."""
        weighted = alpha * self.shrink
        came = weighted.sum(dim=1)[:, :, None] * self.bigram
        seen = weighted.flatten()[self.pairs] * self.counts
        return came.flatten().index_add(0, self.successors, seen).view_as(came)

    def backward(self, after: torch.Tensor) -> torch.Tensor:
        """(P, M, M) Σ_k P(c_k | a_i, b_j) · after[j, k], over (i, j)."""
        unseen = (self.bigram * after).sum(dim=-1)[:, None, :].expand_as(self.shrink)
        seen = after.flatten()[self.successors] * self.counts
        return unseen.flatten().index_add(0, self.pairs, seen).view_as(unseen) * self.shrink


def _normalised(x: torch.Tensor) -> torch.Tensor:
    """Each prompt's (M, M) scaled to sum to one: forward-backward in probabilities without
    underflow (the scale cancels from every marginal)."""
    return x / x.sum(dim=(1, 2), keepdim=True)


@torch.no_grad()
def trigram_marginals(
    lattice: Lattice, trigram: TrigramPrior, *, keep: int = DEFAULT_TRIGRAM_KEEP
) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, T, M) the candidates kept, (P, T, M) log P(candidate at t | every symbol) under the
    trigram prior, exact over those candidates."""
    top = posterior_marginals(lattice).topk(min(keep, lattice.candidates.shape[-1]), dim=-1)
    candidates = lattice.candidates.gather(-1, top.indices)
    if lattice.length < 3:  # no trigram context anywhere: the bigram's posterior is the answer
        return candidates, top.values
    emission = lattice.emission.gather(-1, top.indices).double()
    emission = (emission - emission.amax(dim=-1, keepdim=True)).exp()  # (P, T, M), max 1
    first, second = candidates[:, 0], candidates[:, 1]
    bigram = trigram.bigram
    start = (
        bigram.log_start[first][:, :, None]
        + bigram.transition(first[:, :, None], second[:, None, :])
    ).double()
    # alpha[t - 1] (P, M, M) ∝ P(symbols up to t, candidate i at t - 1, candidate j at t)
    alpha = [
        _normalised(
            (start - start.amax()).exp() * emission[:, 0, :, None] * emission[:, 1, None, :]
        )
    ]
    steps = [
        _Step.between(trigram, *(candidates[:, t - s] for s in (2, 1, 0)))
        for t in range(2, lattice.length)
    ]
    for t, step in enumerate(steps, start=2):
        alpha.append(_normalised(step.forward(alpha[-1]) * emission[:, t, None, :]))
    # beta[t - 1] (P, M, M) ∝ P(symbols after t | candidates at t - 1 and t)
    beta = [torch.ones_like(alpha[-1])]
    for t in range(lattice.length - 1, 1, -1):
        beta.insert(0, _normalised(steps[t - 2].backward(emission[:, t, None, :] * beta[0])))
    pairs = [a * b for a, b in zip(alpha, beta, strict=True)]  # positions (t - 1, t), t ≥ 1
    joint = torch.stack([pairs[0].sum(dim=2), *(p.sum(dim=1) for p in pairs)], dim=1)
    return candidates, (joint / joint.sum(dim=-1, keepdim=True)).log().float()


def trigram_marginal_guesses(
    lattice: Lattice, trigram: TrigramPrior, *, keep: int = DEFAULT_TRIGRAM_KEEP
) -> np.ndarray:
    """(P, T) each position's most probable token under the trigram prior."""
    candidates, marginals = trigram_marginals(lattice, trigram, keep=keep)
    best = marginals.argmax(dim=-1, keepdim=True)
    return candidates.gather(-1, best).squeeze(-1).numpy()
