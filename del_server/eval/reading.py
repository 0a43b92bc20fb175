"""The particle reader in the evaluation: DEL as an adapter with a reader serves it, and the same
reader with nothing sent (particles from the LLM's prior alone), which needs no prompt and so
belongs to the nothing-sent references a level must beat.

    loss       exact, per window, for one noise draw and one particle run (train/reader.py):
               −log(λ·P(c | prefix) + (1 − λ)·Σ_i w_i·P(c | prefix, path_i))
    coherence  of the greedy continuation after what the server hands the engine: one particle
               drawn by weight, or with probability λ the prefix alone (particle_reader.py)

λ is the adapter's, fitted per level in training; the blind reader's is fitted here, as
training does, on the held-out windows after the reported ones. The noise, particles and
draws come from streams of their own per seed, apart from those training measured with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..attacks.particle import mixture_nll
from ..train.data import Windows
from ..train.reader import (
    MIXTURE_CHUNK,
    blend,
    fit_weight,
    mixture_nlls,
    posterior_samples,
    prefix_nlls,
)
from .coherence import greedy_continuations
from .context import EvalContext, reader_selection
from .methods import Method

READER_STREAM = 2  # the seed's stream for the reader, beside the noise (0) and coherence (1)


@dataclass(frozen=True)
class Read:
    """One seed's reading of every window."""

    nlls: torch.Tensor  # (N,) each loss window's served NLL (nats, summed over its tokens)
    continuations: list[list[int]]  # greedy continuation ids of each coherence window


def reader_methods(ctx: EvalContext) -> list[Method]:
    """Nothing sent, then each level of DEL, read by the adapter's reader (none without one)."""
    reading = ctx.adapter.reader
    if reading is None or ctx.front_end is None:
        return []
    levels = [
        Method(
            "del",
            ctx.adapter,
            ctx.level_mechanism(level),
            target_attack_rate=level.target_attack_rate,
            front_end=ctx.front_end,
            reader=reading,
        )
        for level in ctx.adapter.calibration
    ]
    return [Method("no_prompt", reader=reading), *levels]


def ignore_prompt(ctx: EvalContext, method: Method) -> float:
    """The method's λ: its level's, as served; for the blind reader, fitted as training fits it."""
    reading = method.reader
    if method.mechanism is None:
        selection = reader_selection(ctx.split, ctx.config)
        mixture = mixture_nlls(
            ctx.lm,
            ctx.front_end,
            None,
            selection,
            reading.prefix,
            particles=reading.particles,
            seed=_stream(ctx.config.seed),
        )
        return fit_weight(prefix_nlls(ctx.lm, selection, reading.prefix), mixture)
    level = next(
        lv for lv in ctx.adapter.calibration if lv.target_attack_rate == method.target_attack_rate
    )
    return reading.ignore_prompt.get(level.mu, 0.0)


def read(
    ctx: EvalContext,
    method: Method,
    weight: float,
    loss_windows: Windows,
    coherence_windows: int,
    seed: int,
) -> Read:
    """Every loss window read once (the first `coherence_windows` of them also continued)."""
    reading, lm = method.reader, ctx.lm
    draws = np.random.default_rng([seed, READER_STREAM])
    mixtures, served_inputs = [], []
    samples = posterior_samples(
        lm,
        ctx.front_end,
        method.mechanism,
        loss_windows,
        reading.prefix,
        particles=reading.particles,
        seed=_stream(seed),
    )
    for start, found in samples:
        continuations = loss_windows.continuations[start : start + MIXTURE_CHUNK]
        mixtures.append(mixture_nll(lm.model, found, continuations))
        for row in range(min(len(continuations), coherence_windows - start)):
            weights = found.log_weights[row].double().exp().numpy()
            particle = draws.choice(len(weights), p=weights / weights.sum())
            ignored = draws.random() < weight
            served_inputs.append(None if ignored else found.paths[row, particle])
    alone = prefix_nlls(lm, loss_windows, reading.prefix)
    return Read(
        nlls=blend(alone, torch.cat(mixtures), weight),
        continuations=_continued(ctx, reading.prefix, served_inputs, loss_windows),
    )


def _continued(
    ctx: EvalContext, prefix: torch.Tensor, inputs: list[torch.Tensor | None], windows: Windows
) -> list[list[int]]:
    """Greedy continuations after [prefix, BOS] + each input's tokens (None: nothing more)."""
    lm, rows = ctx.lm, [None] * len(inputs)
    new_tokens = windows.continuations.shape[1]
    for wanted in (True, False):  # the read prompts (all as long), then the ignored ones
        index = [i for i, ids in enumerate(inputs) if (ids is not None) == wanted]
        if not index:
            continue
        prompt = lm.embed(torch.stack([inputs[i] for i in index])) if wanted else None
        with torch.no_grad():
            prefixes = lm.prefix(prompt, len(index), prefix)
        for i, ids in zip(
            index,
            greedy_continuations(lm, prefixes, new_tokens, ctx.loaded.eos_id),
            strict=True,
        ):
            rows[i] = ids
    return rows


def _stream(seed: int) -> int:
    """An integer seed of the reader's own stream for `seed`."""
    return int(np.random.SeedSequence([seed, READER_STREAM]).generate_state(1)[0])
