"""The learned inversion attack: a network the attacker trains on (symbols -> token) pairs it
generates itself with the public mechanism from public text, so it also learns which tokens
are frequent (a per-token prior the likelihood attack ignores). It looks at one token at a
time; sequence.py and beam.py add the context.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..train.loop import optimize


class InversionNetwork(torch.nn.Module):
    """The attacker's learned inverse of a mechanism: symbols (n, k) -> token logits (n, V).

    The symbols enter one-hot. A linear path can represent the likelihood attack plus a log
    prior exactly (for a mechanism that treats coordinates independently, log P(v | symbols)
    is linear in the one-hot symbols); a small MLP beside it takes whatever that rule misses.
    """

    def __init__(self, *, dim: int, alphabet: int, vocab: int, hidden: int = 256) -> None:
        super().__init__()
        self.alphabet = alphabet
        self.linear = torch.nn.Linear(dim * alphabet, vocab)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(dim * alphabet, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, vocab)
        )

    def forward(self, symbols: torch.Tensor) -> torch.Tensor:
        x = F.one_hot(symbols.long(), self.alphabet).flatten(1).float()  # (n, k·alphabet)
        return self.linear(x) + self.mlp(x)


# (count, rng) -> (symbols (count, k) uint8, their token ids (count,)), drawn by the attacker
PairFn = Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def train_inversion_network(
    pairs: PairFn,
    *,
    dim: int,
    alphabet: int,
    vocab: int,
    steps: int = 1000,
    batch: int = 512,
    lr: float = 3e-3,
    seed: int = 0,
) -> InversionNetwork:
    """Train on fresh pairs every step: the attacker can generate as many as it likes."""
    with torch.random.fork_rng(devices=[]):  # reproducible initial weights
        torch.manual_seed(seed)
        network = InversionNetwork(dim=dim, alphabet=alphabet, vocab=vocab)
    rng = np.random.default_rng(seed)

    def loss_fn(_: torch.Generator) -> torch.Tensor:
        symbols, ids = pairs(batch, rng)
        return F.cross_entropy(network(torch.from_numpy(symbols)), torch.from_numpy(ids).long())

    optimize(
        dict(network.named_parameters()),
        loss_fn,
        steps=steps,
        lr=lr,
        seed=seed,
        desc="inversion network",
    )
    return network.eval()


# (vectors (n, k), rng) -> symbols (n, k): a mechanism as the attacker can run it
PrivatizeFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def train_learned_attacker(
    privatize: PrivatizeFn,
    table: np.ndarray,  # (V, k) client table
    public_ids: np.ndarray,  # tokens of public text: the attacker's training prior
    *,
    alphabet: int,
    steps: int,
    batch: int,
    seed: int,
) -> InversionNetwork:
    """An inversion network trained on pairs the attacker makes from `public_ids`."""

    def pairs(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        ids = rng.choice(public_ids, size=count)
        return privatize(table[ids], rng), ids

    return train_inversion_network(
        pairs,
        dim=table.shape[1],
        alphabet=alphabet,
        vocab=table.shape[0],
        steps=steps,
        batch=batch,
        seed=seed,
    )


@torch.no_grad()
def learned_guesses(network: InversionNetwork, symbols: np.ndarray) -> np.ndarray:
    """(..., k) symbols -> (...) the network's most likely token ids."""
    flat = torch.from_numpy(np.ascontiguousarray(symbols).reshape(-1, symbols.shape[-1]))
    return network(flat).argmax(dim=-1).numpy().reshape(symbols.shape[:-1])
