"""What a privacy setting means, in one report: the CLI, the SDK and the tests share it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from . import accountant
from .mechanism import PrivacySpec


@dataclass(frozen=True)
class PrivacyReport:
    """Exact ε (and the paper's μ beside it) for one token and for a prompt of `tokens`."""

    dim: int
    bits: int
    clip: float
    A: float
    q: float
    levels: int
    bits_per_token: int
    tokens: int
    delta: float
    epsilon_token: float
    epsilon_prompt: float
    mu_token: float
    mu_prompt: float
    epsilon_token_gdp_approx: float  # the paper's central-limit figure, for comparison

    def to_dict(self) -> dict:
        return asdict(self)


def privacy_report(spec: PrivacySpec, *, tokens: int, delta: float) -> PrivacyReport:
    mu_token = spec.mu()
    return PrivacyReport(
        dim=spec.dim,
        bits=spec.bits,
        clip=spec.clip,
        A=spec.scale,
        q=spec.q,
        levels=spec.levels,
        bits_per_token=spec.bits_per_token,
        tokens=tokens,
        delta=delta,
        epsilon_token=spec.epsilon(delta=delta),
        epsilon_prompt=spec.epsilon(delta=delta, tokens=tokens),
        mu_token=mu_token,
        mu_prompt=spec.mu(tokens=tokens),
        epsilon_token_gdp_approx=accountant.gdp_epsilon(delta, mu=mu_token),
    )
