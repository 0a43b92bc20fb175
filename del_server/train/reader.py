"""The particle reader's held-out loss, and the one number per level it is fitted with.

At a level the reader serves (particle_reader.py), with probability λ, the continuation after
its prefix alone (the prompt ignored), else after a particle of the prompt's posterior drawn
by weight; the served predictive of a continuation c is

    λ · P(c | prefix) + (1 − λ) · Σ_i w_i · P(c | prefix, path_i)

The particles alone are over-confident where the symbols say little: 128 stories the symbols
barely constrain, most of which the continuation does not follow (stories260K at the 5 %
level: 1.730 nats/token against 1.689 for the prefix alone); the blend never costs more than
−log λ per window over the prefix alone and keeps what the particles know. λ is fitted per
level on held-out windows disjoint from those the loss is reported on.

The same blend with no symbols at all (particles from the LLM's prior) needs nothing sent, so
it belongs to the nothing-sent reference a level must beat: on stories260K it is itself
0.012 nats/token better than the soft prompt alone (TRAINING.md of the committed adapter).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from ..attacks.mechanisms import Mechanism
from ..attacks.particle import Particles, mixture_nll, sample_posterior
from ..attacks.sequence import Lattice
from ..errors import InputError
from ..front_end import PosteriorFrontEnd
from ..processes import bar_line, map_in_processes
from .data import Windows
from .evaluate import EVAL_BATCH
from .objective import FrozenLM

WEIGHTS = tuple(i / 20 for i in range(21))  # the grid λ is fitted on
SELECTION_WINDOWS = 128  # held-out windows λ is fitted on, after the reported ones
MIXTURE_CHUNK = 16  # windows whose particles go through the LLM at once


def selection_windows(held_out: Windows, reported: int, *, remedy: str) -> Windows:
    """The held-out windows after the `reported` ones, which a reader's λ is fitted on.

    Text that leaves none is refused with the caller's `remedy`; callers ask before anything
    trains, not at the end."""
    selection = held_out.part(reported, SELECTION_WINDOWS)
    if not len(selection):
        raise InputError(
            f"the held-out text holds {len(held_out)} windows: the loss is reported on the first "
            f"{reported}, which leaves none to fit the particle reader's λ on; {remedy}"
        )
    return selection


def per_token(nlls: torch.Tensor, windows: Windows) -> float:
    """Per-window sequence NLLs -> mean nats per continuation token."""
    return nlls.sum().item() / windows.continuations.numel()


@torch.no_grad()
def prefix_nlls(lm: FrozenLM, windows: Windows, prefix: torch.Tensor) -> torch.Tensor:
    """(N,) each continuation's NLL (nats) after [prefix, BOS] and nothing else."""
    batches = range(0, len(windows), EVAL_BATCH)
    return torch.cat(
        [
            lm.continuation_nlls(None, windows.continuations[i : i + EVAL_BATCH], prefix).cpu()
            for i in batches
        ]
    )


@torch.no_grad()
def posterior_samples(
    lm: FrozenLM,
    posterior: PosteriorFrontEnd,
    mechanism: Mechanism | None,
    windows: Windows,
    prefix: torch.Tensor,
    *,
    particles: int,
    seed: int,
) -> Iterator[tuple[int, Particles]]:
    """(first window, its chunk's particles) of each chunk of windows: the reader's particles
    after `prefix` for one noise draw per window (seeded); `mechanism` None: no symbols, the
    particles come from the LLM's prior alone."""
    rng = np.random.default_rng(seed)
    for start in tqdm(
        range(0, len(windows), MIXTURE_CHUNK), desc="particles", leave=False, position=bar_line()
    ):
        prompts = windows.prompts[start : start + MIXTURE_CHUNK]
        if mechanism is None:
            blind = torch.zeros(*prompts.shape, posterior.prior.vocab)
            lattice = Lattice.build(blind, posterior.prior, keep=posterior.keep)
        else:
            table = posterior.client_table
            symbols = mechanism.privatize(table[prompts.reshape(-1).numpy()], rng)
            lattice = posterior.lattice(symbols.reshape(*prompts.shape, -1), mechanism)
        yield (
            start,
            sample_posterior(
                lm.model,
                lm.bos_id,
                prefix,
                lattice,
                particles=particles,
                seed=seed + start,
                predictive=True,
            ),
        )


def mixture_nlls(
    lm: FrozenLM,
    posterior: PosteriorFrontEnd,
    mechanism: Mechanism | None,
    windows: Windows,
    prefix: torch.Tensor,
    *,
    particles: int,
    seed: int,
) -> torch.Tensor:
    """(N,) each continuation's NLL under the posterior predictive of `particles` particles
    after `prefix` (posterior_samples)."""
    samples = posterior_samples(
        lm, posterior, mechanism, windows, prefix, particles=particles, seed=seed
    )
    return torch.cat(
        [
            mixture_nll(lm.model, found, windows.continuations[start : start + MIXTURE_CHUNK])
            for start, found in samples
        ]
    )


def paired_margin(served: torch.Tensor, reference: torch.Tensor, windows: Windows) -> float:
    """Half-width (nats/token) of the 95 % normal interval of the mean per-token difference
    between two per-window NLLs of the same windows."""
    per_token_difference = (served - reference) / windows.continuations.shape[1]
    return 1.96 * per_token_difference.std().item() / math.sqrt(len(per_token_difference))


def blend(alone: torch.Tensor, mixture: torch.Tensor, weight: float) -> torch.Tensor:
    """(N,) NLLs of λ·P(c | prefix) + (1 − λ)·mixture, from the two components' NLLs."""
    parts = [(math.log(weight), alone)] if weight > 0 else []
    parts += [(math.log1p(-weight), mixture)] if weight < 1 else []
    return -torch.stack([log_w - nll for log_w, nll in parts]).logsumexp(dim=0)


def fit_weight(alone: torch.Tensor, mixture: torch.Tensor) -> float:
    """The λ of the grid with the least total NLL."""
    return min(WEIGHTS, key=lambda weight: blend(alone, mixture, weight).sum().item())


@dataclass(frozen=True)
class ReaderMeasurement:
    ignore_prompt: float  # λ, fitted on the selection windows
    loss: float  # the served blend's, on the reported windows
    mixture: float  # the particles' alone (λ = 0)
    prefix_alone: float  # the prefix's alone (λ = 1)
    served: torch.Tensor  # (N,) the served blend's NLL of each reported window

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("ignore_prompt", "loss", "mixture", "prefix_alone")}


@dataclass
class ReaderBench:
    """Fits and measures the reader at any mechanism on two disjoint sets of windows."""

    lm: FrozenLM
    posterior: PosteriorFrontEnd
    prefix: torch.Tensor
    particles: int
    seed: int
    selection: Windows  # λ is fitted here
    reported: Windows  # the loss is measured here
    _alone: tuple[torch.Tensor, torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not len(self.selection):  # callers take it from selection_windows, which refuses
            raise ValueError("no selection windows to fit λ on")
        self._alone = tuple(prefix_nlls(self.lm, w, self.prefix) for w in self.windows)

    @property
    def windows(self) -> tuple[Windows, Windows]:
        return self.selection, self.reported

    @property
    def prefix_alone(self) -> torch.Tensor:
        """(N,) each reported window's NLL after the prefix alone."""
        return self._alone[1]

    def measure_each(
        self, mechanisms: Sequence[Mechanism | None], *, jobs: int = 1
    ) -> list[ReaderMeasurement]:
        """measure() of each mechanism, `jobs` at a time, each in a process of one torch
        thread (the same seeds as one after another here; the particles can differ in the
        last bits, as they do between thread counts)."""
        measured = map_in_processes(self.measure, mechanisms, jobs=jobs, threads=1, desc="reader")
        return list(measured)

    def measure(self, mechanism: Mechanism | None) -> ReaderMeasurement:
        """λ fitted on the selection windows, losses on the reported ones."""
        mixtures = [
            mixture_nlls(
                self.lm,
                self.posterior,
                mechanism,
                windows,
                self.prefix,
                particles=self.particles,
                seed=self.seed + offset,
            )
            for offset, windows in enumerate(self.windows)
        ]
        weight = fit_weight(self._alone[0], mixtures[0])
        served = blend(self._alone[1], mixtures[1], weight)
        return ReaderMeasurement(
            ignore_prompt=weight,
            loss=per_token(served, self.reported),
            mixture=per_token(mixtures[1], self.reported),
            prefix_alone=per_token(self._alone[1], self.reported),
            served=served,
        )
