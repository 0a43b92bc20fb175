"""Stage 1: the projection. PCA of the embedding table, then W_p and W_d fine-tuned with the
LLM frozen on the continuation's loss (optionally with the mechanism's noise in the loop).

The clip is re-chosen after training by the same rule PCA used (a quantile of |Z| over the
vocabulary), since training moves the distribution of Z.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from del_client.mechanism import PrivacySpec

from ..adapter import DEFAULT_CLIP_QUANTILE, Adapter, pca_adapter
from .data import Windows
from .loop import optimize
from .objective import FrozenLM, private_prompt


def clip_for(
    adapter: Adapter, table: torch.Tensor, quantile: float = DEFAULT_CLIP_QUANTILE
) -> float:
    with torch.no_grad():
        return float(torch.quantile(adapter.project(table).abs().flatten().float(), quantile))


def train_projection(
    lm: FrozenLM,
    train: Windows,
    *,
    dim: int,
    steps: int,
    batch: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    noise: PrivacySpec | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
) -> tuple[Adapter, list[float]]:
    """-> (adapter with trained W_p, W_d and a re-chosen clip, per-step losses)."""
    start = pca_adapter(lm.table, dim=dim)
    params = {"down": start.down.clone(), "up": start.up.clone()}
    working = Adapter(params["down"], params["up"], start.mean, start.clip)

    def loss_fn(generator: torch.Generator) -> torch.Tensor:
        prompts, continuations = train.batch(batch, generator)
        prompt = private_prompt(lm, working, prompts, noise, generator)
        return lm.continuation_loss(prompt, continuations)

    losses = []
    if steps:
        losses = optimize(
            params,
            loss_fn,
            steps=steps,
            lr=lr,
            seed=seed,
            desc=f"projection k={dim}",
            checkpoint=checkpoint,
            resume=resume,
        )
    trained = replace(start, down=params["down"].detach().clone(), up=params["up"].detach().clone())
    metadata = {
        **start.metadata,
        "projection": "pca + fine-tuned" if steps else "pca",
        "projection_steps": steps,
        "projection_noise_mu": noise.mu() if noise else None,
    }
    return replace(trained, clip=clip_for(trained, lm.table), metadata=metadata), losses
