"""The sequence attack with one more token of context: a trigram prior, decoded exactly over
the bigram posterior's most likely candidates.

    P(tokens) = P(v_1) · P(v_2 | v_1) · Π_{t ≥ 3} P(v_t | v_{t-2}, v_{t-1})

The trigram of public text is shrunk towards the bigram (a Dirichlet prior of weight κ
centred on it), so a context public text never shows falls back to the bigram:

    P(c | a, b) = (n(a, b, c) + κ · P_bigram(c | b)) / (n(a, b) + κ)

Forward-backward runs over pairs of consecutive candidates (M² states, M³ work a position),
the M candidates of a position being the most probable under the bigram posterior
(sequence.posterior_marginals): exact over them. Where the symbols say much (the 20 % level of
stories260K) the extra token of context recovers more than the bigram and the LLM particle
attacks; where they say little, the pruning and the sparse counts leave it under the bigram,
which the suite runs beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .sequence import BigramPrior, Lattice, posterior_marginals

DEFAULT_TRIGRAM_KEEP = 64  # candidates per position (M³ transitions each); 32 loses recovery
DEFAULT_KAPPA = 1.0  # the bigram's weight, in counts, in every trigram context


@dataclass(frozen=True, eq=False)
class TrigramPrior:
    """Triple and context counts of public text, kept sparse and sorted by key, over `bigram`
    (fitted on the same text)."""

    bigram: BigramPrior
    triple_keys: torch.Tensor  # (N,) sorted (a · V + b) · V + c of the triples seen
    triple_counts: torch.Tensor  # (N,)
    context_keys: torch.Tensor  # (K,) sorted a · V + b of the pairs seen before a third token
    context_counts: torch.Tensor  # (K,)
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
        contexts = ids[:-2] * vocab + ids[1:-1]
        triples, triple_counts = torch.unique(contexts * vocab + ids[2:], return_counts=True)
        context_keys, context_counts = torch.unique(contexts, return_counts=True)
        return cls(
            bigram, triples, triple_counts.double(), context_keys, context_counts.double(), kappa
        )

    def log_transition(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """log P(c | a, b), elementwise over the broadcast shape of the three id tensors."""
        vocab = self.bigram.vocab
        a, b, c = torch.broadcast_tensors(a, b, c)
        context = a * vocab + b
        triples = _count(self.triple_keys, self.triple_counts, context * vocab + c)
        contexts = _count(self.context_keys, self.context_counts, context)
        bigram = self.bigram.transition(b, c).double().exp()
        return ((triples + self.kappa * bigram) / (contexts + self.kappa)).log().float()


def _count(keys: torch.Tensor, counts: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """How often each of `wanted` was seen (0 for a key not among the sorted `keys`)."""
    found = torch.searchsorted(keys, wanted).clamp(max=len(keys) - 1)
    return torch.where(keys[found] == wanted, counts[found], 0.0)


@torch.no_grad()
def trigram_marginals(
    lattice: Lattice, trigram: TrigramPrior, *, keep: int = DEFAULT_TRIGRAM_KEEP
) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, T, M) the candidates kept, (P, T, M) log P(candidate at t | every symbol) under the
    trigram prior, exact over those candidates."""
    top = posterior_marginals(lattice).topk(min(keep, lattice.candidates.shape[-1]), dim=-1)
    candidates = lattice.candidates.gather(-1, top.indices)
    emission = lattice.emission.gather(-1, top.indices)
    if lattice.length < 3:  # no trigram context anywhere: the bigram's posterior is the answer
        return candidates, top.values
    first, second = candidates[:, 0], candidates[:, 1]
    bigram = trigram.bigram
    # alpha[t] (P, M, M): log P(symbols up to t, candidate i at t - 1, candidate j at t)
    alpha = [(bigram.log_start[first] + emission[:, 0])[:, :, None]]
    alpha[0] = alpha[0] + bigram.transition(first[:, :, None], second[:, None, :])
    alpha[0] = alpha[0] + emission[:, 1, None, :]
    steps = []  # (P, M, M, M) log P(candidate at t | candidates at t - 2, t - 1) for t ≥ 2
    for t in range(2, lattice.length):
        steps.append(
            trigram.log_transition(
                candidates[:, t - 2, :, None, None],
                candidates[:, t - 1, None, :, None],
                candidates[:, t, None, None, :],
            )
        )
        came = (alpha[-1][:, :, :, None] + steps[-1]).logsumexp(dim=1)
        alpha.append(came + emission[:, t, None, :])
    # beta[t] (P, M, M): log P(symbols after t | candidates at t - 1 and t), backwards
    beta = [torch.zeros_like(alpha[-1])]
    for t in range(lattice.length - 1, 1, -1):
        after = steps[t - 2] + (emission[:, t, None, :] + beta[0])[:, None, :, :]
        beta.insert(0, after.logsumexp(dim=-1))
    pairs = [a + b for a, b in zip(alpha, beta, strict=True)]  # positions (t - 1, t), t ≥ 1
    joint = torch.stack([pairs[0].logsumexp(dim=2), *(p.logsumexp(dim=1) for p in pairs)], dim=1)
    return candidates, joint - joint.logsumexp(dim=-1, keepdim=True)


def trigram_marginal_guesses(
    lattice: Lattice, trigram: TrigramPrior, *, keep: int = DEFAULT_TRIGRAM_KEEP
) -> np.ndarray:
    """(P, T) each position's most probable token under the trigram prior."""
    candidates, marginals = trigram_marginals(lattice, trigram, keep=keep)
    best = marginals.argmax(dim=-1, keepdim=True)
    return candidates.gather(-1, best).squeeze(-1).numpy()
