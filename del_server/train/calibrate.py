"""Stage 2: for each target attack success rate, the privacy level (μ) that reaches it.

Bisection on log μ over an attack's rate, with the same noise seed at every μ so the measured
rate moves monotonically. Runs on the deployed pipeline: the client's table, the
projected-space clip and del_client's quantizer.

Attacks: "strongest" (default) takes the stronger of nearest neighbour and likelihood, which
are cheap; "learned" trains the attacker's inversion network (prior included) at every step,
and "all" takes the strongest of the three. The learned attack recovers several times the
cheap attacks' rate at the same μ (docs/eval), so "all" is the conservative choice.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from del_client.mechanism import BinomialQuantizer, PrivacySpec
from del_client.session import ATTACKS_IN_WORDS

from ..adapter import Adapter
from .attacks import AttackRates, attack_rates, client_table, learned_attack

DEFAULT_TARGETS = (0.02, 0.10, 0.15)
ATTACKS = tuple(ATTACKS_IN_WORDS)  # the names the manifest carries (PrivacyLevel.attack)
# Bisection steps when each trains a network: 12 halvings of the log-μ range leave a bracket
# under 0.3 % wide, well inside the noise of a measured attack rate.
LEARNED_ITERATIONS = 12
MU_RANGE = (0.05, 5000.0)
REPORT_DELTA = 1e-5


@dataclass(frozen=True)
class CalibratedLevel:
    target_attack_rate: float
    mu: float
    epsilon_token: float  # exact, at REPORT_DELTA
    delta: float
    attack: str  # which attack the level was calibrated against
    nearest_neighbour_rate: float
    likelihood_rate: float
    tokens: int
    bits: int
    learned_rate: float | None = None  # measured when calibrated against "learned" or "all"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LearnedAttack:
    """How the attacker's inversion network is trained: on public text, `steps` batches."""

    public_ids: np.ndarray  # tokens of public (training-split) text
    steps: int = 400
    batch: int = 512


def calibrate(
    adapter: Adapter,
    embeddings: torch.Tensor,
    token_ids: np.ndarray,
    *,
    targets: tuple[float, ...] = DEFAULT_TARGETS,
    bits: int = 4,
    attack: str = "strongest",
    learned: LearnedAttack | None = None,
    seed: int = 0,
    iterations: int = 24,
) -> list[CalibratedLevel]:
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; one of {', '.join(ATTACKS)}")
    if attack in ("learned", "all") and learned is None:
        raise ValueError(f"attack {attack!r} needs the attacker's public text (learned=...)")
    table = client_table(adapter, embeddings)

    def spec_at(mu: float) -> PrivacySpec:
        return PrivacySpec.from_mu(mu=mu, dim=adapter.projection_dim, bits=bits, clip=adapter.clip)

    def learned_rate(mu: float) -> float:
        def privatize(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            return BinomialQuantizer(spec_at(mu), rng=rng).privatize(x)  # the attacker's noise

        return learned_attack(
            privatize,
            table,
            learned.public_ids,
            token_ids,
            alphabet=spec_at(mu).levels + 1,
            steps=learned.steps,
            batch=learned.batch,
            seed=seed,
        )

    def rates(mu: float) -> tuple[AttackRates, float | None]:
        cheap = attack_rates(adapter, embeddings, table, token_ids, spec_at(mu), seed)
        return cheap, (learned_rate(mu) if attack in ("learned", "all") else None)

    def rate(measured: tuple[AttackRates, float | None]) -> float:
        cheap, learned_success = measured
        return {
            "strongest": cheap.strongest,
            "nearest_neighbour": cheap.nearest_neighbour,
            "likelihood": cheap.likelihood,
            "learned": learned_success,
            "all": max(cheap.strongest, learned_success or 0.0),
        }[attack]

    levels = []
    for target in targets:
        lo, hi = math.log(MU_RANGE[0]), math.log(MU_RANGE[1])
        for _ in tqdm(range(iterations), desc=f"calibrating {target:.0%} ({attack})", leave=False):
            middle = (lo + hi) / 2
            if rate(rates(math.exp(middle))) < target:
                lo = middle
            else:
                hi = middle
        mu = math.exp(lo)  # the most private end of the bracket: rate just below the target
        cheap, learned_success = rates(mu)
        if rate((cheap, learned_success)) >= target:  # lo never moved: out of reach
            raise ValueError(
                f"a target of {target:.1%} is out of reach for the {attack} attack: at "
                f"μ = {mu:g}, where the symbols carry next to nothing, it still recovers "
                f"{rate((cheap, learned_success)):.1%} of tokens from what it knows of the text "
                "alone; choose targets above that"
            )
        levels.append(
            CalibratedLevel(
                target_attack_rate=target,
                mu=mu,
                epsilon_token=spec_at(mu).epsilon(delta=REPORT_DELTA),
                delta=REPORT_DELTA,
                attack=attack,
                nearest_neighbour_rate=cheap.nearest_neighbour,
                likelihood_rate=cheap.likelihood,
                tokens=cheap.tokens,
                bits=bits,
                learned_rate=learned_success,
            )
        )
    return levels
