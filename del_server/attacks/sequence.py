"""Context-aware attacks with a bigram prior: the received symbols of a whole prompt, decoded
as a hidden Markov model whose hidden states are the prompt tokens.

    P(tokens, symbols) = P(v_1) · Π_t P(v_t | v_{t-1}) · Π_t P(symbols_t | v_t)

The emission term is the mechanism's exact likelihood (tokenwise.log_likelihood_matrix); the
transition term is a bigram model of public in-domain text (the provider's training split,
or whatever text the attacker has). Forward-backward gives each token's posterior marginal
(its argmax maximises the expected number of recovered tokens); Viterbi the single most
likely prompt. Both are exact over the candidates kept per position: every token for a small
vocabulary, the `keep` most likely under likelihood × unigram prior for a large one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

DEFAULT_KEEP = 512
# A dense transition table up to this size (a 30k vocabulary: 3.7 GB) is built once and gathered
# from, the fastest a lattice can ask; beyond it (a 128k vocabulary) pairs are looked up sparse.
DENSE_BYTES = 4 << 30
BLOCKS_KEPT = 512  # transition blocks a prior remembers (512 x 512 float32: 1 MB each)  # candidates per position: the whole vocabulary of the default model


@dataclass(frozen=True, eq=False)
class BigramPrior:
    """log P(v) for a prompt's first token and log P(v | previous token), add-α smoothed.

    The pair counts are kept sparse (the pairs public text holds, sorted by key
    previous·V + next): fitting never builds V × V intermediates (int64 and float64 counts of
    a 30k vocabulary would take 15 GB); `transition(before, after)` gives exactly the entries
    a lattice asks for, from a dense float32 table where one fits in DENSE_BYTES.
    """

    log_start: torch.Tensor  # (V,) the unigram: a prompt may start anywhere in the text
    pair_keys: torch.Tensor  # (N,) sorted previous * V + next of the pairs seen
    pair_counts: torch.Tensor  # (N,) how often each was seen
    row_totals: torch.Tensor  # (V,) pairs seen after each previous token
    smoothing: float

    @classmethod
    def fit(cls, token_ids: np.ndarray, vocab: int, *, smoothing: float = 0.1) -> BigramPrior:
        """Counts over one stream of public token ids (consecutive ids are neighbours)."""
        ids = torch.from_numpy(np.asarray(token_ids, dtype=np.int64))
        if ids.numel() < 2:
            raise ValueError("a bigram prior needs at least two tokens of public text")
        unigram = torch.bincount(ids, minlength=vocab).double() + smoothing
        keys, counts = torch.unique(ids[:-1] * vocab + ids[1:], sorted=True, return_counts=True)
        return cls(
            log_start=(unigram / unigram.sum()).log().float(),
            pair_keys=keys,
            pair_counts=counts.double(),
            row_totals=torch.bincount(ids[:-1], minlength=vocab).double(),
            smoothing=smoothing,
        )

    @property
    def vocab(self) -> int:
        return self.log_start.shape[0]

    def transition(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """log P(after | before), elementwise over the broadcast shape of the two id tensors:
        gathered from the dense table when it fits DENSE_BYTES, else looked up in the pairs."""
        if self.vocab**2 * 4 <= DENSE_BYTES:
            return self.dense[before, after]
        before, after = torch.broadcast_tensors(before, after)
        keys = before * self.vocab + after
        found = torch.searchsorted(self.pair_keys, keys).clamp(max=len(self.pair_keys) - 1)
        counts = torch.where(self.pair_keys[found] == keys, self.pair_counts[found], 0.0)
        return ((counts + self.smoothing) / self._totals[before]).log().float()

    @cached_property
    def dense(self) -> torch.Tensor:
        """(V, V) every transition, float32, built once: the unseen pairs of a row first, then
        the pairs seen written over them."""
        vocab, totals = self.vocab, self._totals
        table = (self.smoothing / totals).log().float()[:, None].expand(vocab, vocab).contiguous()
        rows, columns = self.pair_keys // vocab, self.pair_keys % vocab
        seen = (self.pair_counts + self.smoothing) / totals[rows]
        table[rows, columns] = seen.log().float()
        return table

    @cached_property
    def dense_factors(self) -> tuple[_Factor, _Factor]:
        """The dense table and its transpose, each exponentiated once for _log_matmul
        (forward and backward steps over the whole vocabulary)."""
        return _Factor.of(self.dense), _Factor.of(self.dense.T)

    def block(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """(M, M) log P(after[j] | before[i]) for two candidate lists, kept for their next use.

        A position's candidates are a function of its symbols; with few coordinates and bits
        per token, positions share a handful of symbol patterns, so the same lists meet again
        and again (a lattice's gathers from a 30k table are most of an attack's time)."""
        key = (before.numpy().tobytes(), after.numpy().tobytes())
        found = self._blocks.get(key)
        if found is None:
            if len(self._blocks) >= BLOCKS_KEPT:
                self._blocks.clear()
            found = self._blocks[key] = self.transition(before[:, None], after[None, :])
        return found

    @cached_property
    def _blocks(self) -> dict[tuple[bytes, bytes], torch.Tensor]:
        return {}

    @cached_property
    def _totals(self) -> torch.Tensor:
        """(V,) each row's denominator: its pairs seen plus α for every possible next token."""
        return self.row_totals + self.smoothing * self.vocab


@dataclass(frozen=True)
class Lattice:
    """Each position's candidate tokens with their emission scores and the transitions
    between consecutive positions' candidates: the pruned HMM, (P prompts, T positions,
    M candidates)."""

    candidates: torch.Tensor  # (P, T, M) token ids
    emission: torch.Tensor  # (P, T, M) log P(symbols_t | candidate)
    start: torch.Tensor  # (P, M) log P(first token = candidate)
    prior: BigramPrior

    @classmethod
    def build(
        cls, log_likelihood: torch.Tensor, prior: BigramPrior, keep: int = DEFAULT_KEEP
    ) -> Lattice:
        """`log_likelihood` (P, T, V) from tokenwise.log_likelihood_matrix."""
        if keep >= prior.vocab:  # every token: no pruning, one transition matrix for all
            candidates = torch.arange(prior.vocab).expand(*log_likelihood.shape)
        else:
            _, candidates = (log_likelihood + prior.log_start).topk(keep, dim=-1)
        return cls(
            candidates=candidates,
            emission=log_likelihood.gather(-1, candidates),
            start=prior.log_start[candidates[:, 0]],
            prior=prior,
        )

    @property
    def pruned(self) -> bool:
        return self.candidates.shape[-1] < self.prior.vocab

    @property
    def length(self) -> int:
        return self.candidates.shape[1]

    def prompts(self, rows: slice) -> Lattice:
        """The lattice of some of its prompts."""
        return Lattice(self.candidates[rows], self.emission[rows], self.start[rows], self.prior)

    def transition(self, t: int) -> torch.Tensor:
        """(P or 1, M, M) log P(candidate j at t + 1 | candidate i at t)."""
        if not self.pruned:
            return self.prior.dense[None]
        before, after = self.candidates[:, t], self.candidates[:, t + 1]
        return torch.stack([self.prior.block(b, a) for b, a in zip(before, after, strict=True)])

    def backward(self) -> torch.Tensor:
        """(P, T, M) β_t = log P(symbols after t | candidate at t): the look-ahead of every
        partial hypothesis (zero at the last position)."""
        beta = torch.zeros_like(self.emission)
        for t in range(self.length - 2, -1, -1):
            after = self.emission[:, t + 1] + beta[:, t + 1]  # (P, M)
            if not self.pruned:  # one (P, M) x (M, M) product for every prompt at once
                beta[:, t] = self.prior.dense_factors[1].times(after)
            else:
                beta[:, t] = _log_matmul(self.transition(t), after[:, :, None]).squeeze(-1)
        return beta

    def forward(self) -> torch.Tensor:
        """(P, T, M) α_t = log P(symbols up to t, candidate at t)."""
        alpha = torch.empty_like(self.emission)
        alpha[:, 0] = self.start + self.emission[:, 0]
        for t in range(1, self.length):
            if not self.pruned:  # one (P, M) x (M, M) product for every prompt at once
                came = self.prior.dense_factors[0].times(alpha[:, t - 1])
            else:
                came = _log_matmul(alpha[:, t - 1][:, None, :], self.transition(t - 1)).squeeze(1)
            alpha[:, t] = came + self.emission[:, t]
        return alpha


@dataclass(frozen=True)
class _Factor:
    """A fixed right factor b of log(exp(a) @ exp(b)), exponentiated once: exp(b − b_max)
    in float64 and the column maxima b_max."""

    scaled: torch.Tensor  # (M, N) float64
    column_max: torch.Tensor  # (1, N) float64

    @classmethod
    def of(cls, b: torch.Tensor) -> _Factor:
        column_max = b.amax(dim=-2, keepdim=True).clamp_min(-1e30)
        return cls((b - column_max).double().exp(), column_max.double())

    def times(self, a: torch.Tensor) -> torch.Tensor:
        """(…, P, M) log values -> (…, P, N) log(exp(a) @ exp(b))."""
        a_max = a.amax(dim=-1, keepdim=True).clamp_min(-1e30)
        product = (a - a_max).double().exp() @ self.scaled
        return (product.log() + a_max.double() + self.column_max).float()


def _log_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(exp(a) @ exp(b)) for a batch of matrices, as a matrix product in float64 with each
    factor scaled by its largest entry (exact up to rounding, no (P, M, M, M) intermediate)."""
    return _Factor.of(b).times(a)


@torch.no_grad()
def posterior_marginals(lattice: Lattice) -> torch.Tensor:
    """(P, T, M) log P(candidate at t | every symbol of the prompt)."""
    joint = lattice.forward() + lattice.backward()
    return joint - torch.logsumexp(joint, dim=-1, keepdim=True)


@torch.no_grad()
def marginal_guesses(lattice: Lattice) -> np.ndarray:
    """(P, T) each position's most probable token given the whole prompt's symbols."""
    best = posterior_marginals(lattice).argmax(dim=-1, keepdim=True)
    return lattice.candidates.gather(-1, best).squeeze(-1).numpy()


@torch.no_grad()
def viterbi_guesses(lattice: Lattice) -> np.ndarray:
    """(P, T) the single most probable prompt."""
    score = lattice.start + lattice.emission[:, 0]  # (P, M)
    pointers = []
    for t in range(1, lattice.length):
        came = score[:, :, None] + lattice.transition(t - 1)  # (P, M from, M to)
        score, pointer = came.max(dim=1)
        score = score + lattice.emission[:, t]
        pointers.append(pointer)
    path = [score.argmax(dim=-1)]  # (P,) candidate index at the last position
    for pointer in reversed(pointers):
        path.append(pointer.gather(-1, path[-1][:, None]).squeeze(-1))
    index = torch.stack(path[::-1], dim=1)  # (P, T)
    return lattice.candidates.gather(-1, index[..., None]).squeeze(-1).numpy()
