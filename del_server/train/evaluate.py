"""Held-out losses that say whether a level is worth anything.

For one privacy level, on validation windows, the continuation's mean NLL (nats/token):
    clean               the prompt's own embeddings, no projection, no noise
    projected           through the projection and clip, no noise (what the projection costs)
    noisy + soft prompt what DEL serves at this level
    noisy               the same noise, no soft prompt
    no prompt           the continuation from BOS alone: perfect privacy, zero communication
    nothing sent        the same with a soft prompt trained for that case
    particle reader     what a server with a reader serves at this level (train/reader.py)
Noisy figures are the mean and standard deviation over several noise seeds. A level whose
soft-prompted loss is not below the nothing-sent loss is worse than sending nothing: its
utility record (calibration.MeasuredUtility) says so, and the manifest and the client tell users.
"""

from __future__ import annotations

import statistics

import torch

from ..adapter import Adapter
from ..calibration import MeasuredUtility
from .data import Windows
from .objective import FrozenLM, private_prompt
from .soft_prompt import PromptFn

EVAL_BATCH = 64
UTILITY_METRIC = "held-out continuation loss (nats/token)"


@torch.no_grad()
def mean_loss(lm: FrozenLM, windows: Windows, prompt_fn, soft: torch.Tensor | None) -> float:
    """Token-weighted mean over all windows; prompt_fn(prompt_ids) -> (B, Tp, d) or None."""
    total, count = 0.0, 0
    for start in range(0, len(windows), EVAL_BATCH):
        prompts = windows.prompts[start : start + EVAL_BATCH]
        continuations = windows.continuations[start : start + EVAL_BATCH]
        loss = lm.continuation_loss(prompt_fn(prompts), continuations, soft)
        total += loss.item() * continuations.numel()
        count += continuations.numel()
    return total / count


def _spread(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "seeds": len(values),
    }


def reference_losses(
    lm: FrozenLM, adapter: Adapter, windows: Windows, nothing_sent: torch.Tensor
) -> dict:
    """Losses that do not depend on the privacy level: clean, projected without noise, none,
    and none with `nothing_sent`, the soft prompt trained for that case."""
    projected = lambda ids: private_prompt(lm, adapter, ids, None, None)  # noqa: E731
    return {
        "clean": mean_loss(lm, windows, lm.embed, None),
        "projected_no_noise": mean_loss(lm, windows, projected, None),
        "no_prompt": mean_loss(lm, windows, lambda _: None, None),
        "nothing_sent_soft_prompt": mean_loss(lm, windows, lambda _: None, nothing_sent),
    }


def level_losses(
    lm: FrozenLM,
    path: PromptFn,
    windows: Windows,
    soft: torch.Tensor | None,
    seeds: tuple[int, ...] = (0, 1, 2),
) -> dict:
    """Noisy losses with and without the soft prompt, over `seeds`, for a level's prompt
    path as served (soft_prompt.level_prompt: its noise and front-end)."""
    with_soft, without = [], []
    for seed in seeds:
        for target, prompt in ((with_soft, soft), (without, None)):
            generator = torch.Generator().manual_seed(seed)
            noisy = lambda ids, g=generator: path(ids, g)  # noqa: E731
            target.append(mean_loss(lm, windows, noisy, prompt))
    return {"noisy_soft_prompt": _spread(with_soft), "noisy": _spread(without)}


def loss_utility(
    served: float, nothing_sent: float, measured_on: str, margin: float = 0.0
) -> MeasuredUtility:
    """A level's utility record for the held-out continuation loss."""
    return MeasuredUtility(
        metric=UTILITY_METRIC,
        value=served,
        nothing_sent=nothing_sent,
        higher_is_better=False,
        measured_on=measured_on,
        margin=margin,
    )
