"""calibrate's search for each target's μ, against a stand-in attacker whose recovery rate is
a known function of μ (the real attacks are exercised in test_attacks.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from del_server.attacks.recovery import Recovery
from del_server.errors import InputError
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


def test_one_cap_per_target_caps_each_level_alone():
    """A μ the audit found to hold for one level caps that level; the next keeps its own."""
    low, high = levels(Attacker(ceiling=0.02), targets=(0.075, 0.10), max_mu=(10.0, 64.0))
    assert (low.mu, high.mu) == (10.0, 64.0)


def test_caps_that_do_not_pair_with_the_targets_are_refused():
    with pytest.raises(InputError, match="--max-mu gives 3 caps for 2 targets"):
        levels(Attacker(ceiling=0.02), targets=(0.075, 0.10), max_mu=(8.0, 10.0, 64.0))


def test_a_reachable_target_gets_the_largest_mu_under_it():
    (level,) = levels(Attacker(ceiling=1.0), targets=(0.10,))
    assert level.mu < 10.0  # the rate μ/100 reaches 0.10 at μ = 10
    assert level.mu == pytest.approx(10.0, rel=0.01)  # 12 halvings of log μ: within 0.3 %
    assert level.strongest.high < 0.10


class SlowAttacker(Attacker):
    """A cheap attack (μ/100), one slow attack that is stronger (μ/80) and one that is weaker
    (μ/200); every measurement is logged as (μ, attacks)."""

    attacks = ("likelihood", "lm_beam", "lm_smoother")
    scale: ClassVar[dict[str, int]] = {"likelihood": 100, "lm_beam": 200, "lm_smoother": 80}

    def __init__(self) -> None:
        super().__init__(ceiling=1.0)
        self.log: list[tuple[float, tuple[str, ...]]] = []

    def attack(self, adapter, mechanism, prompts, *, seed, attacks=None):
        attacks = tuple(a for a in attacks or self.attacks if a in self.scale)  # ours alone
        self.log.append((mechanism.mu, attacks))
        return {name: recovered(mechanism.mu / self.scale[name]) for name in attacks}


def test_a_slow_attack_that_reaches_the_target_steps_mu_down_and_is_not_rerun_where_it_holds():
    attacker = SlowAttacker()
    (level,) = levels(attacker, targets=(0.10,))
    # Bisection on the cheap attack finds μ ≈ 10; the slow smoother reaches 0.125 there, so μ
    # steps down by 5 % until μ/80 < 0.10: five steps.
    assert level.mu == pytest.approx(10.0 * 0.95**5, rel=0.01)
    assert level.strongest_attack == "lm_smoother"
    assert list(level.attacks) == list(SlowAttacker.attacks)
    at_level = [attacks for mu, attacks in attacker.log if mu == level.mu]
    # Measured once with the attacks that failed (and the cheap one), then with the rest alone.
    assert at_level == [("likelihood", "lm_smoother"), ("lm_beam",)]
