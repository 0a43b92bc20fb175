"""Stage 2: for each target attack success rate, the largest μ (the least noise, so the best
utility) at which even the strongest attack we know stays under the target.

A level holds when the upper end of the 95 % interval (clustered by prompt) of the strongest
attack's token recovery is below the target, on held-out prompts with reproducible noise:

1. bisection on log μ over the attacks cheap enough for it (BISECTION_ATTACKS: Viterbi, which
   the forward-backward marginals dominate; the trigram, a minute for 250 prompts, and the
   slow ones are left to the verification),
   with the same noise seed at every μ so the measured rate moves monotonically;
2. verification at the bisection's μ with every attack, the learned inversion network and the
   LLM's beam search and particle smoother included; while one still reaches the target, μ
   steps down by STEP_DOWN, measured with the attacks that reached it (and the cheap ones)
   until they hold, and then verified with the attacks not yet measured at that μ.

A target that even μ = MU_RANGE[0] (symbols that carry next to nothing) cannot meet is refused:
the attacker reaches it from its knowledge of the language alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from tqdm import tqdm

from del_client.manifest import percent
from del_client.parameters import DEFAULT_BITS, DEFAULT_DELTA

from ..adapter import Adapter
from ..attacks.mechanisms import Binomial, Mechanism
from ..attacks.recovery import Recovery
from ..attacks.suite import Attacker, strongest
from ..calibration import CalibratedLevel
from ..errors import InputError
from .defaults import DEFAULT_TARGETS, MU_RANGE

BISECTION_ATTACKS = ("nearest_neighbour", "likelihood", "bigram_marginal")
ITERATIONS = 12  # halvings of the log-μ range: a bracket under 0.3 % wide
STEP_DOWN = 0.95
MAX_STEPS_DOWN = 40
REPORT_DELTA = DEFAULT_DELTA


def mu_caps(max_mu: float | Sequence[float], targets: Sequence[float]) -> tuple[float, ...]:
    """Each target's largest μ: one cap for every level, or one per target (a μ that
    `del-server audit --mu` found to hold for that level against a stronger attacker)."""
    caps = (max_mu,) if isinstance(max_mu, int | float) else tuple(max_mu)
    if len(caps) == 1:
        return caps * len(targets)
    if len(caps) != len(targets):
        raise InputError(
            f"--max-mu gives {len(caps)} caps for {len(targets)} targets: give one for every "
            "level, or one per target in --targets' order"
        )
    return caps


def level_holds(results: dict[str, Recovery], target: float) -> bool:
    """The strongest attack's 95 % upper bound is under the target."""
    return max(r.high for r in results.values()) < target


def calibrate(
    adapter: Adapter,
    attacker: Attacker,
    prompts: np.ndarray,  # (P, T) held-out prompt token ids
    *,
    measured_on: str,
    targets: tuple[float, ...] = DEFAULT_TARGETS,
    bits: int = DEFAULT_BITS,
    seed: int = 0,
    iterations: int = ITERATIONS,
    mechanism_at: Callable[[float], Mechanism] | None = None,
    max_mu: float | Sequence[float] = MU_RANGE[1],
) -> list[CalibratedLevel]:
    """One level per target. `mechanism_at(μ)` is DEL's quantizer for `adapter` by default;
    the evaluation passes its baselines' mechanisms to match them to the same targets.
    No level goes past its cap (`mu_caps`): a target that holds there gets it (with few
    coordinates and bits per token the attacks saturate, and more μ only buys a larger ε)."""

    def mechanism(mu: float) -> Mechanism:
        if mechanism_at is not None:
            return mechanism_at(mu)
        return Binomial.at(mu=mu, dim=adapter.projection_dim, bits=bits, clip=adapter.clip)

    def measured(mu: float, attacks: tuple[str, ...]) -> dict[str, Recovery]:
        return attacker.attack(adapter, mechanism(mu), prompts, seed=seed, attacks=attacks)

    blind = attacker.prior_alone(prompts)
    levels = []
    for target, cap in zip(targets, mu_caps(max_mu, targets), strict=True):
        lo, hi = math.log(MU_RANGE[0]), math.log(cap)
        saturated = level_holds(measured(cap, BISECTION_ATTACKS), target)
        if saturated:
            lo = hi  # the attacks saturate below the target: no bisection to do
        for _ in tqdm(
            range(iterations if lo < hi else 0), desc=f"calibrating {percent(target)}", leave=False
        ):
            middle = (lo + hi) / 2
            if level_holds(measured(math.exp(middle), BISECTION_ATTACKS), target):
                lo = middle
            else:
                hi = middle
        # The most private end of the bracket; the cap itself when saturated, not
        # exp(log(cap)), which is a few ULPs off it.
        mu = cap if saturated else math.exp(lo)
        attacks = attacker.attacks
        for _ in tqdm(range(MAX_STEPS_DOWN), desc=f"verifying {percent(target)}", leave=False):
            results = measured(mu, attacks)
            unmeasured = tuple(a for a in attacker.attacks if a not in results)
            if unmeasured and level_holds(results, target):
                # The failing ones hold: verify with the rest (an attack's result at a μ is
                # its own, whatever runs beside it, so those measured here are not rerun).
                results |= measured(mu, unmeasured)
                results = {name: results[name] for name in attacker.attacks}
            if level_holds(results, target) or mu <= MU_RANGE[0]:
                break
            # Step down with the attacks that reached the target (and the cheap ones) only:
            # the slow ones that held at a larger μ hold here too; all verify at the end.
            failing = {name for name, r in results.items() if r.high >= target}
            attacks = tuple(a for a in attacker.attacks if a in failing | set(BISECTION_ATTACKS))
            mu = max(MU_RANGE[0], mu * STEP_DOWN)
        if not level_holds(results, target):
            name, worst = strongest(results)
            raise InputError(
                f"a target of {target:.1%} is out of reach: at μ = {mu:g}, where the symbols "
                f"carry next to nothing, the {name} attack still recovers {worst.rate:.1%} of "
                f"tokens (95 % up to {worst.high:.2%}) from what it knows of the language "
                f"alone (blind guessing: {max(r.rate for r in blind.values()):.1%}); only "
                "targets above that can be met"
            )
        levels.append(
            CalibratedLevel(
                target_attack_rate=target,
                mu=mu,
                epsilon_token=mechanism(mu).epsilon(delta=REPORT_DELTA),
                delta=REPORT_DELTA,
                bits=bits,
                attacks=dict(results),
                strongest_attack=strongest(results)[0],
                prior_alone_rate=max(r.rate for r in blind.values()),
                measured_on=measured_on,
                tokens=int(prompts.size),
                prompts=len(prompts),
            )
        )
    return levels
