"""Every method the report compares, at the adapter's calibrated levels.

DEL's levels are the adapter's own (μ per target attack success rate, from `del-server
calibrate`). Each baseline mechanism is matched to the same targets the same way: bisection
on log μ until the stronger of the nearest-neighbour and likelihood attacks reaches the
target, on the tokens and with the noise seed the adapter was calibrated with. The most
private end of the final bracket is kept, as train.calibrate does.

Soft prompts: DEL's come with the adapter. The baselines that can use one get one trained
here with the same loop, length, batch and (by default) number of steps, so that "DEL with
soft prompt" is compared with baselines that had the same chance to recover utility.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..adapter import Adapter
from ..train.calibrate import MU_RANGE
from ..train.soft_prompt import train_soft_prompt
from .context import EvalContext
from .mechanisms import Binomial, GaussianQuantized, Mechanism, identity_adapter
from .methods import Method
from .privacy import cheap_attack_rates

SOFT_PROMPT_BATCH = 32  # the training pipeline's default batch


def del_methods(ctx: EvalContext) -> list[Method]:
    """DEL as served at each calibrated level, without and with the level's soft prompt."""
    adapter, methods = ctx.adapter, []
    for level in ctx.adapter.calibration:
        mechanism = Binomial.at(
            mu=level["mu"], dim=adapter.projection_dim, bits=level["bits"], clip=adapter.clip
        )
        plain = Method("del", adapter, mechanism, target_attack_rate=level["target_attack_rate"])
        served = adapter.soft_prompt_for(level["mu"])  # the one the server would prepend
        methods += [plain] + ([plain.with_soft_prompt(served[1])] if served else [])
    return methods


def match_mu(rate_at: Callable[[float], float], target: float, iterations: int) -> float:
    """The most private μ (bisection on log μ) whose attack rate stays below `target`."""
    lo, hi = math.log(MU_RANGE[0]), math.log(MU_RANGE[1])
    for _ in range(iterations):
        middle = (lo + hi) / 2
        if rate_at(math.exp(middle)) < target:
            lo = middle
        else:
            hi = middle
    return math.exp(lo)


def matched_baselines(ctx: EvalContext) -> list[Method]:
    """DEL without projection and the Gaussian mechanism, each matched to every level."""
    config, projected = ctx.config, ctx.adapter
    unprojected = identity_adapter(ctx.embeddings)
    builders: dict[str, tuple[Adapter, Callable[[float], Mechanism]]] = {
        "del_full": (
            unprojected,
            lambda mu: Binomial.at(
                mu=mu, dim=unprojected.projection_dim, bits=config.bits, clip=unprojected.clip
            ),
        ),
        "gaussian": (
            projected,
            lambda mu: GaussianQuantized(
                mu_token=mu, dim=projected.projection_dim, bits=config.bits, clip=projected.clip
            ),
        ),
    }
    tokens = ctx.calibration_tokens()
    methods = []
    jobs = [(family, level) for family in builders for level in ctx.adapter.calibration]
    for family, level in tqdm(jobs, desc="matching baselines", unit="level"):
        adapter, mechanism_at = builders[family]

        def rate_at(mu: float, adapter=adapter, mechanism_at=mechanism_at) -> float:
            return max(cheap_attack_rates(ctx, adapter, mechanism_at(mu), tokens, config.seed))

        target = level["target_attack_rate"]
        mu = match_mu(rate_at, target, config.calibration_iterations)
        methods.append(Method(family, adapter, mechanism_at(mu), target_attack_rate=target))
    return methods


def soft_prompt_steps(ctx: EvalContext) -> int:
    """The configured number of steps, else as many as the adapter's soft prompts had."""
    steps = ctx.config.soft_prompt_steps or ctx.adapter.metadata.get("soft_prompt_steps")
    if not steps:
        raise ValueError(
            "the adapter does not record its soft-prompt steps: pass --soft-prompt-steps"
        )
    return int(steps)


def with_trained_soft_prompt(ctx: EvalContext, method: Method) -> Method:
    """`method` plus a soft prompt trained for it exactly as the pipeline trains DEL's."""
    length = next(iter(ctx.adapter.soft_prompts.values())).shape[0]

    def prompt_fn(ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        # Fresh noise every step, drawn from the loop's seeded generator.
        seed = int(torch.randint(2**62, (1,), generator=generator))
        return method.prompt(ctx.lm, ids, np.random.default_rng(seed))

    soft, _ = train_soft_prompt(
        prompt_fn,
        ctx.lm,
        ctx.split.train,
        ctx.loaded.tokenizer,
        desc=f"soft prompt for {method.key}",
        length=length,
        steps=soft_prompt_steps(ctx),
        batch=SOFT_PROMPT_BATCH,
        seed=ctx.config.seed,
    )
    return method.with_soft_prompt(soft)


def all_methods(ctx: EvalContext) -> list[Method]:
    """References, DEL and the matched baselines, each without and (where it can) with a soft
    prompt."""
    no_prompt = Method("no_prompt")
    baselines = matched_baselines(ctx)
    trainable = [no_prompt, *baselines]
    trained = [
        with_trained_soft_prompt(ctx, m)
        for m in tqdm(trainable, desc="baseline soft prompts", unit="prompt")
    ]
    return [
        Method("clean"),
        Method("projected", ctx.adapter),
        no_prompt,
        trained[0],
        *del_methods(ctx),
        *[m for pair in zip(baselines, trained[1:], strict=True) for m in pair],
    ]
