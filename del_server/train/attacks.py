"""Token inversion at the server: how often does it recover a private prompt token?

Both attacks see exactly what a server sees: the symbols the deployed client code
(del_client's BinomialQuantizer) sends for the client's table Z, and every public parameter.

- nearest neighbour (the paper's): de-project x̂ and take the vocabulary embedding with the
  highest cosine similarity;
- likelihood (knows the mechanism): score every vocabulary token v by the probability of the
  received symbols, Σ_i N_i·log p_i(v) + (K − N_i)·log(1 − p_i(v)), p_i(v) = 1/2 + clip(Z_v,i)/(2A),
  and take the most likely (a uniform prior: it uses no knowledge of the text);
- learned (InversionNetwork): a network the attacker trains on (symbols -> token) pairs it
  generates itself with the public mechanism from public text, so it also learns which
  tokens are frequent. The evaluation (del_server.eval) always runs it; calibration does on
  request (`--attack learned` or `all`), as it trains a network at every bisection step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from del_client.mechanism import BinomialQuantizer, PrivacySpec, dequantize

from ..adapter import Adapter
from .loop import optimize


@dataclass(frozen=True)
class AttackRates:
    nearest_neighbour: float
    likelihood: float
    tokens: int

    @property
    def strongest(self) -> float:
        return max(self.nearest_neighbour, self.likelihood)


def client_table(adapter: Adapter, embeddings: torch.Tensor) -> np.ndarray:
    """Z as the client bundle holds it: (V, k) float32."""
    with torch.no_grad():
        return adapter.project(embeddings.float()).numpy().astype(np.float32)


def attack_rates(
    adapter: Adapter,
    embeddings: torch.Tensor,  # (V, d)
    table: np.ndarray,  # (V, k) client table
    token_ids: np.ndarray,  # (n,) held-out tokens
    spec: PrivacySpec,
    seed: int,
) -> AttackRates:
    """Success rates of both attacks on `token_ids`, privatized with reproducible noise."""
    quantizer = BinomialQuantizer(spec, rng=np.random.default_rng(seed))  # evaluation noise
    symbols = quantizer.privatize(table[token_ids])  # (n, k)
    with torch.no_grad():
        h = adapter.deproject(torch.from_numpy(dequantize(symbols, spec)))  # (n, d)
        cosine = F.normalize(h.float(), dim=-1) @ F.normalize(embeddings.float(), dim=-1).T
        nearest = cosine.argmax(dim=-1).numpy()
    p = 0.5 + np.clip(table, -spec.clip, spec.clip).astype(np.float64) / (2 * spec.scale)
    counts = symbols.astype(np.float64)
    scores = counts @ np.log(p).T + (spec.levels - counts) @ np.log1p(-p).T  # (n, V)
    likeliest = scores.argmax(axis=1)
    return AttackRates(
        nearest_neighbour=float(np.mean(nearest == token_ids)),
        likelihood=float(np.mean(likeliest == token_ids)),
        tokens=int(token_ids.size),
    )


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


def learned_attack(
    privatize: PrivatizeFn,
    table: np.ndarray,  # (V, k) client table
    public_ids: np.ndarray,  # tokens of public text: the attacker's training prior
    token_ids: np.ndarray,  # (n,) held-out tokens to recover
    *,
    alphabet: int,
    steps: int,
    batch: int,
    seed: int,
) -> float:
    """Train an inversion network on pairs made from `public_ids`; its rate on `token_ids`."""

    def pairs(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        ids = rng.choice(public_ids, size=count)
        return privatize(table[ids], rng), ids

    network = train_inversion_network(
        pairs,
        dim=table.shape[1],
        alphabet=alphabet,
        vocab=table.shape[0],
        steps=steps,
        batch=batch,
        seed=seed,
    )
    symbols = privatize(table[token_ids], np.random.default_rng(seed + 1))
    return learned_attack_rate(network, symbols, token_ids)


@torch.no_grad()
def learned_attack_rate(
    network: InversionNetwork, symbols: np.ndarray, token_ids: np.ndarray
) -> float:
    """Share of `token_ids` the network recovers from their (n, k) symbols."""
    guesses = network(torch.from_numpy(symbols)).argmax(dim=-1).numpy()
    return float(np.mean(guesses == token_ids))
