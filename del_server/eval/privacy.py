"""Token inversion at the server, for every method, against exact ε per token and per prompt.

Three attacks, all seeing only what a server sees (the symbols, every public parameter):
    nearest neighbour  de-project the decoded symbols, take the closest embedding by cosine
                       (the paper's attack)
    likelihood         the token whose vector makes the received symbols most probable under
                       the mechanism, with a uniform prior over the vocabulary
    learned            an inversion network the attacker trains on (symbols -> token) pairs it
                       generates itself from public in-domain text with the public mechanism;
                       it learns the token frequencies as well, which the likelihood attack
                       ignores, so it can beat it when the symbols say little
Beside them, the prior-only guess (always the most frequent public token): what any attacker
gets from knowing the domain alone, with no message at all.

The generic nearest-neighbour and likelihood attacks here agree with del_server.train.attacks
on DEL's mechanism (a test checks it); they exist because the Gaussian baseline needs them too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..adapter import Adapter
from ..train.attacks import learned_attack
from .context import EvalContext
from .mechanisms import Mechanism
from .methods import Method

_CHUNK = 2048  # attacked tokens scored at once: bounds the (chunk, V) score matrix
IMPOSSIBLE = -1e4  # log-probability floor: e^-10000 is zero for any attack


def nearest_neighbour_guesses(
    adapter: Adapter, embeddings: torch.Tensor, received: np.ndarray
) -> np.ndarray:
    """(n, k) decoded symbols -> (n,) ids of the embeddings closest in cosine after
    de-projection."""
    vocabulary = F.normalize(embeddings.float(), dim=-1)
    guesses = []
    with torch.no_grad():
        for start in range(0, len(received), _CHUNK):
            h = torch.from_numpy(received[start : start + _CHUNK])
            h = adapter.deproject(h)
            guesses.append((F.normalize(h.float(), dim=-1) @ vocabulary.T).argmax(dim=-1))
    return torch.cat(guesses).numpy()


def exact_lookup_guesses(embeddings: torch.Tensor, received: np.ndarray) -> np.ndarray:
    """(n, d) raw embeddings -> (n,) ids of the closest rows in Euclidean distance: what a
    server does with the raw mechanism. Computed directly in float64: the byte-fallback rows
    of a small model differ by ~1e-4, below what cosine or the matmul form of the distance
    resolves."""
    with torch.no_grad():
        distances = torch.cdist(
            torch.from_numpy(received).double(),
            embeddings.double(),
            compute_mode="donot_use_mm_for_euclid_dist",
        )
    return distances.argmin(dim=-1).numpy()


def likelihood_guesses(log_likelihood: np.ndarray, symbols: np.ndarray) -> np.ndarray:
    """(V, k, alphabet) table, (n, k) symbols -> (n,) ids maximising Σ_i log P(s_i | v).

    The sum is a product of the one-hot symbols with the flattened table; an impossible
    symbol (log P = −inf) is floored at IMPOSSIBLE so that 0·(−inf) cannot turn into NaN.
    """
    vocab, _, alphabet = log_likelihood.shape
    table = torch.from_numpy(np.maximum(log_likelihood, IMPOSSIBLE)).reshape(vocab, -1)
    guesses = []
    for start in range(0, len(symbols), _CHUNK):
        chunk = torch.from_numpy(symbols[start : start + _CHUNK]).long()
        one_hot = F.one_hot(chunk, alphabet).flatten(1).to(table.dtype)  # (chunk, k·alphabet)
        guesses.append((one_hot @ table.T).argmax(dim=-1))  # (chunk,)
    return torch.cat(guesses).numpy()


def cheap_attack_rates(
    ctx: EvalContext, adapter: Adapter, mechanism: Mechanism, tokens: np.ndarray, seed: int
) -> tuple[float, float]:
    """(nearest neighbour, likelihood) success rates on `tokens`: the two attacks the
    training pipeline calibrates against, cheap enough to run inside a bisection."""
    table = ctx.table(adapter)
    symbols = mechanism.privatize(table[tokens], np.random.default_rng(seed))
    nearest = nearest_neighbour_guesses(adapter, ctx.embeddings, mechanism.decode(symbols))
    likeliest = likelihood_guesses(mechanism.log_likelihood(table), symbols)
    return float(np.mean(nearest == tokens)), float(np.mean(likeliest == tokens))


@dataclass(frozen=True)
class AttackRow:
    method: str  # Method.key
    family: str
    target_attack_rate: float | None
    mu_token: float | None
    epsilon_token: float | None  # exact, at the report's δ
    epsilon_prompt: float | None  # exact, every token of a prompt_tokens-long prompt replaced
    nearest_neighbour: float | None  # None for no prompt: nothing to search from
    likelihood: float | None
    learned: float | None
    strongest: float
    tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def attack_private_method(
    ctx: EvalContext, method: Method, *, prompt_tokens: int, learned: bool = True
) -> AttackRow:
    """All three attacks on one private method, on the held-out attack tokens."""
    config, mechanism, adapter = ctx.config, method.mechanism, method.adapter
    tokens = ctx.attack_tokens()
    # The measurement noise differs from the calibration's (seed) so no level is scored on
    # the draws it was tuned on.
    nearest, likelihood = cheap_attack_rates(ctx, adapter, mechanism, tokens, config.seed + 1)
    learned_rate = None
    if learned:
        learned_rate = learned_attack(
            mechanism.privatize,
            ctx.table(adapter),
            ctx.public_tokens(),
            tokens,
            alphabet=mechanism.alphabet,
            steps=config.inversion_steps,
            batch=config.inversion_batch,
            seed=config.seed,
        )
    rates = [r for r in (nearest, likelihood, learned_rate) if r is not None]
    return AttackRow(
        method=method.key,
        family=method.family,
        target_attack_rate=method.target_attack_rate,
        mu_token=mechanism.mu(),
        epsilon_token=mechanism.epsilon(delta=config.delta),
        epsilon_prompt=mechanism.epsilon(delta=config.delta, tokens=prompt_tokens),
        nearest_neighbour=nearest,
        likelihood=likelihood,
        learned=learned_rate,
        strongest=max(rates),
        tokens=int(tokens.size),
    )


def _reference_row(family: str, nearest: float | None, rate: float, tokens: int) -> AttackRow:
    return AttackRow(
        method=family,
        family=family,
        target_attack_rate=None,
        mu_token=None,
        epsilon_token=None,
        epsilon_prompt=None,
        nearest_neighbour=nearest,
        likelihood=None,
        learned=None,
        strongest=rate,
        tokens=tokens,
    )


def reference_rows(ctx: EvalContext) -> list[AttackRow]:
    """The two ends: raw embeddings (the server sees the vector itself) and no prompt (it sees
    nothing and can only guess the most frequent public token)."""
    tokens = ctx.attack_tokens()
    raw = float(
        np.mean(exact_lookup_guesses(ctx.embeddings, ctx.embeddings[tokens].numpy()) == tokens)
    )
    frequent = np.bincount(ctx.public_tokens(), minlength=ctx.vocab_size).argmax()
    prior = float(np.mean(tokens == frequent))
    return [
        _reference_row("clean", raw, raw, int(tokens.size)),
        _reference_row("no_prompt", None, prior, int(tokens.size)),
    ]


def privacy_stage(ctx: EvalContext, methods: list[Method], *, prompt_tokens: int) -> dict:
    """Attack rows for every private method without a soft prompt (the soft prompt is
    server-side post-processing: it changes nothing the attacker sees), plus the references."""
    private = [m for m in methods if m.mechanism is not None and m.soft_prompt is None]
    rows = reference_rows(ctx)
    for method in tqdm(private, desc="privacy: attacks", unit="method"):
        rows.append(attack_private_method(ctx, method, prompt_tokens=prompt_tokens))
    return {
        "tokens": int(ctx.attack_tokens().size),
        "token_set": "held-out continuation tokens (not the calibration tokens)",
        "noise_seed": ctx.config.seed + 1,
        "delta": ctx.config.delta,
        "prompt_tokens": prompt_tokens,
        "inversion_network": {
            "steps": ctx.config.inversion_steps,
            "batch": ctx.config.inversion_batch,
            "seed": ctx.config.seed,
            "training_pairs": "tokens drawn from the training split, privatized afresh each step",
        },
        "rows": [row.to_dict() for row in rows],
    }
