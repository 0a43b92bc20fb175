"""Stage 2: for each target attack success rate, the privacy level (μ) that reaches it.

Bisection on log μ over the stronger attack's rate (or a named one), with the same noise seed
at every μ so the measured rate moves monotonically. Runs on the deployed pipeline: the
client's table, the projected-space clip and del_client's quantizer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from del_client.mechanism import PrivacySpec

from ..adapter import Adapter
from .attacks import AttackRates, attack_rates, client_table

DEFAULT_TARGETS = (0.02, 0.10, 0.15)
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

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate(
    adapter: Adapter,
    embeddings: torch.Tensor,
    token_ids: np.ndarray,
    *,
    targets: tuple[float, ...] = DEFAULT_TARGETS,
    bits: int = 4,
    attack: str = "strongest",
    seed: int = 0,
    iterations: int = 24,
) -> list[CalibratedLevel]:
    if attack not in ("strongest", "nearest_neighbour", "likelihood"):
        raise ValueError(f"unknown attack {attack!r}")
    table = client_table(adapter, embeddings)

    def spec_at(mu: float) -> PrivacySpec:
        return PrivacySpec.from_mu(mu=mu, dim=adapter.projection_dim, bits=bits, clip=adapter.clip)

    def rates(mu: float) -> AttackRates:
        return attack_rates(adapter, embeddings, table, token_ids, spec_at(mu), seed)

    def rate(r: AttackRates) -> float:
        return r.strongest if attack == "strongest" else getattr(r, attack)

    levels = []
    for target in targets:
        lo, hi = math.log(MU_RANGE[0]), math.log(MU_RANGE[1])
        for _ in range(iterations):
            middle = (lo + hi) / 2
            if rate(rates(math.exp(middle))) < target:
                lo = middle
            else:
                hi = middle
        mu = math.exp(lo)  # the most private end of the bracket: rate just below the target
        measured = rates(mu)
        levels.append(
            CalibratedLevel(
                target_attack_rate=target,
                mu=mu,
                epsilon_token=spec_at(mu).epsilon(delta=REPORT_DELTA),
                delta=REPORT_DELTA,
                attack=attack,
                nearest_neighbour_rate=measured.nearest_neighbour,
                likelihood_rate=measured.likelihood,
                tokens=measured.tokens,
                bits=bits,
            )
        )
    return levels
