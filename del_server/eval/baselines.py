"""Every method the report compares, at the adapter's calibrated levels.

DEL's levels are the adapter's own (μ per target attack success rate, from `del-server
calibrate`). Each baseline mechanism is matched to the same targets by the same rule and code
(train.calibrate with the baseline's mechanism): the largest μ at which the strongest attack's
95 % upper bound stays under the target, on the prompts and with the noise seed the adapter
was calibrated with, verified with every attack.

Soft prompts: DEL's come with the adapter. The baselines that can use one get one trained
here with the same loop, length, batch and (by default) number of steps, so that "DEL with
soft prompt" is compared with baselines that had the same chance to recover utility.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..adapter import DEFAULT_CLIP_QUANTILE, Adapter
from ..attacks.mechanisms import Binomial, GaussianQuantized, Mechanism
from ..calibration import CalibratedLevel
from ..front_end import initial_parameters
from ..train.calibrate import calibrate
from ..train.soft_prompt import levels_training, train_soft_prompt
from .context import EvalContext
from .methods import Method
from .reading import reader_methods
from .units import checkpointed

MechanismAt = Callable[[float], Mechanism]
SOFT_PROMPT_BATCH = 32  # the training pipeline's default batch
SOFT_PROMPT, PATH = "soft_prompt", "path."  # a trained soft prompt's tensors, as checkpointed


def del_methods(ctx: EvalContext) -> list[Method]:
    """DEL as served at each calibrated level, without and with the level's soft prompt."""
    adapter, methods = ctx.adapter, []
    for level in ctx.adapter.calibration:
        plain = Method(
            "del",
            adapter,
            ctx.level_mechanism(level),
            target_attack_rate=level.target_attack_rate,
            front_end=ctx.front_end,
            front_end_parameters=adapter.front_ends.get(level.mu),
        )
        served = adapter.soft_prompt_for(level.mu)  # the one the server would prepend
        methods += [plain] + ([plain.with_soft_prompt(served[1])] if served else [])
    return methods


def identity_adapter(
    embeddings: torch.Tensor, *, clip_quantile: float = DEFAULT_CLIP_QUANTILE
) -> Adapter:
    """DEL without projection (k = d): the centred embedding itself is quantized, with the
    clip chosen by the same rule as the projected adapter's, so only the projection differs."""
    table = embeddings.detach().float()
    mean = table.mean(dim=0)
    clip = float(torch.quantile((table - mean).abs().flatten(), clip_quantile))
    eye = torch.eye(table.shape[1])
    return Adapter(
        down=eye,
        up=eye.clone(),
        mean=mean,
        clip=clip,
        metadata={"projection": "identity", "clip_rule": f"quantile {clip_quantile} of |E − mean|"},
    )


def _baseline_mechanisms(ctx: EvalContext) -> dict[str, tuple[Adapter, MechanismAt]]:
    """family -> (its adapter, μ -> its mechanism): DEL without projection and the Gaussian
    mechanism on DEL's projection."""
    bits, projected = ctx.config.bits, ctx.adapter
    unprojected = identity_adapter(ctx.embeddings)
    return {
        "del_full": (
            unprojected,
            lambda mu: Binomial.at(
                mu=mu, dim=unprojected.projection_dim, bits=bits, clip=unprojected.clip
            ),
        ),
        "gaussian": (
            projected,
            lambda mu: GaussianQuantized(
                mu_token=mu, dim=projected.projection_dim, bits=bits, clip=projected.clip
            ),
        ),
    }


def _calibrated(ctx: EvalContext, unit: tuple[str, float]) -> dict:
    """The baseline family's level for a target, as a record (the slowest unit)."""
    family, target = unit
    adapter, mechanism_at = _baseline_mechanisms(ctx)[family]
    config = ctx.config
    (level,) = calibrate(
        adapter,
        ctx.attacker,
        ctx.calibration_prompts(),
        measured_on=f"{Path(config.data).name}, the adapter's calibration prompts",
        targets=(target,),
        bits=config.bits,
        seed=config.seed,
        iterations=config.calibration_iterations,
        mechanism_at=mechanism_at,
    )
    return level.to_dict()


def matched_baselines(ctx: EvalContext) -> list[tuple[Method, CalibratedLevel]]:
    """Each baseline at every DEL level's target, calibrated by DEL's own rule (train.calibrate:
    the strongest attack's 95 % upper bound under the target) on the same prompts;
    `config.jobs` at a time (eval.units)."""
    targets = tuple(level.target_attack_rate for level in ctx.adapter.calibration)
    families = _baseline_mechanisms(ctx)
    units = {
        f"baseline-levels/{family}@{target:g}": (family, target)
        for family in families
        for target in targets
    }
    records = checkpointed(ctx, _calibrated, units, desc="baseline levels")
    matched = []
    for key, (family, _) in units.items():
        adapter, mechanism_at = families[family]
        level = CalibratedLevel.from_dict(records[key], ctx.checkpoints.directory / key)
        # The Gaussian mechanism shares DEL's projection, so it is read through the same
        # front-end (its likelihood is exact too); DEL without projection through W_d.
        method = Method(
            family,
            adapter,
            mechanism_at(level.mu),
            target_attack_rate=level.target_attack_rate,
            front_end=ctx.front_end if adapter is ctx.adapter else None,
        )
        matched.append((method, level))
    return matched


def soft_prompt_steps(ctx: EvalContext) -> int:
    """The configured number of steps, else as many as the adapter's soft prompts had."""
    return levels_training(ctx.adapter, ctx.config.soft_prompt_steps)["steps"]


def with_trained_soft_prompt(ctx: EvalContext, method: Method) -> Method:
    """`method` plus a soft prompt trained for it exactly as the pipeline trains DEL's (and,
    read through a posterior front-end, that front-end's parameters with it)."""

    def trained() -> dict[str, torch.Tensor]:
        parameters = initial_parameters(ctx.embeddings) if method.front_end is not None else None
        training = replace(method, front_end_parameters=parameters)

        def prompt_fn(ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
            # Fresh noise every step, drawn from the loop's seeded generator.
            seed = int(torch.randint(2**62, (1,), generator=generator))
            return training.prompt(ctx.lm, ids, np.random.default_rng(seed))

        soft, _ = train_soft_prompt(
            prompt_fn,
            ctx.lm,
            ctx.split.train,
            ctx.loaded.tokenizer,
            desc=f"soft prompt for {method.key}",
            **levels_training(ctx.adapter, ctx.config.soft_prompt_steps),
            batch=SOFT_PROMPT_BATCH,
            seed=ctx.config.seed,
            path_parameters=parameters,
        )
        return {SOFT_PROMPT: soft, **{PATH + name: t for name, t in (parameters or {}).items()}}

    tensors = ctx.checkpoints.tensors(f"soft-prompts/{method.key}", trained)
    parameters = {name[len(PATH) :]: t for name, t in tensors.items() if name.startswith(PATH)}
    return replace(
        method, soft_prompt=tensors[SOFT_PROMPT], front_end_parameters=parameters or None
    )


def all_methods(ctx: EvalContext, baselines: list[Method]) -> list[Method]:
    """References, DEL and the matched `baselines`, each without and (where it can) with a
    soft prompt; nothing sent and DEL read by the adapter's particle reader, if it has one."""
    no_prompt = Method("no_prompt")
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
        *reader_methods(ctx),
        *[m for pair in zip(baselines, trained[1:], strict=True) for m in pair],
    ]
