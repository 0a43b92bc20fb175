"""calibrate's search for each target's μ, against a stand-in attacker whose recovery rate is
a known function of μ (the real attacks are exercised in test_attacks.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from del_server.attacks.recovery import Recovery
from del_server.train.calibrate import MU_RANGE, calibrate

PROMPTS = np.zeros((10, 4), dtype=np.int64)


@dataclass(frozen=True)
class Noise:
    """The mechanism calibrate builds for a μ: all the stand-in attacker looks at."""

    mu: float

    def epsilon(self, *, delta: float) -> float:
        return self.mu  # any increasing function: the test only reads it back


def recovered(rate: float) -> Recovery:
    return Recovery(rate, rate / 2, rate, rate, 0.0, 0.0, 40, 20, 10)


class Attacker:
    """Recovers min(ceiling, μ / 100) of the tokens, with that as its 95 % upper bound."""

    attacks = ("likelihood",)

    def __init__(self, ceiling: float) -> None:
        self.ceiling = ceiling

    def attack(self, adapter, mechanism, prompts, *, seed, attacks=None):
        return {"likelihood": recovered(min(self.ceiling, mechanism.mu / 100))}

    def prior_alone(self, prompts):
        return {"unigram": recovered(0.01)}


def levels(attacker: Attacker, targets: tuple[float, ...], max_mu: float = MU_RANGE[1]):
    return calibrate(
        None,
        attacker,
        PROMPTS,
        measured_on="stand-in",
        targets=targets,
        mechanism_at=Noise,
        max_mu=max_mu,
    )


def test_a_target_the_attacks_never_reach_gets_exactly_max_mu():
    (level,) = levels(Attacker(ceiling=0.02), targets=(0.05,), max_mu=64.0)
    assert level.mu == 64.0  # not exp(log(64)) = 63.99999999999998
    assert level.epsilon_token == 64.0


def test_a_reachable_target_gets_the_largest_mu_under_it():
    (level,) = levels(Attacker(ceiling=1.0), targets=(0.10,))
    assert level.mu < 10.0  # the rate μ/100 reaches 0.10 at μ = 10
    assert level.mu == pytest.approx(10.0, rel=0.01)  # 12 halvings of log μ: within 0.3 %
    assert level.strongest.high < 0.10
