"""The third way to read a private prompt: decode it as the strongest attacker would, for the
user, and let the LLM continue what was decoded.

The server runs the particle sampler of attacks/particle.py on the request's symbols:
particles drawn from the prompt's posterior under the LLM itself (after the adapter's reader
prefix, the soft prompt trained with nothing sent), twisted by the bigram prior's look-ahead.
The engine then gets one particle, drawn by weight, as clean tokens after the same prefix;
or, with the level's probability λ, the prefix alone (the prompt ignored, and no particles
run). Generating so is an exact draw from

    λ · P_LM(continuation | prefix) + (1 − λ) · Σ_i w_i · P_LM(continuation | prefix, path_i)

whose held-out loss training records for each level, λ fitted there (train/reader.py).
Sampling settings apply to the chosen continuation (at temperature 1 the served distribution
is that blend exactly).

Everything here is post-processing of the symbols: no privacy cost. The cost is compute: one
batched forward pass of `particles` rows per prompt token, before the engine's prefill.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel

from .adapter import Adapter
from .attacks.mechanisms import Mechanism
from .attacks.particle import sample_posterior
from .front_end import PosteriorFrontEnd


@dataclass(frozen=True, eq=False)
class ParticleReader:
    model: PreTrainedModel
    bos_id: int | None
    prefix: torch.Tensor  # (m, d) from the adapter's reader
    posterior: PosteriorFrontEnd  # its lattice: the mechanism's likelihood and the prior
    particles: int
    ignore_prompt: dict[float, float]  # level μ -> probability of the prefix alone

    @classmethod
    def of(
        cls,
        adapter: Adapter,
        model: PreTrainedModel,
        bos_id: int | None,
        posterior: PosteriorFrontEnd | None = None,
    ) -> ParticleReader | None:
        """The adapter's reader for `model`, sharing `posterior` (the server's front-end, with
        its tables) when given; None when the adapter has none."""
        if adapter.reader is None:
            return None
        embeddings = model.get_input_embeddings().weight
        posterior = posterior or PosteriorFrontEnd.of(adapter, embeddings)
        prefix = adapter.reader.prefix.to(embeddings.device, embeddings.dtype)
        reading = adapter.reader
        return cls(model, bos_id, prefix, posterior, reading.particles, reading.ignore_prompt)

    def read(
        self,
        symbols: np.ndarray,
        mechanism: Mechanism,
        level: float | None,
        abandon: threading.Event | None = None,
    ) -> torch.Tensor:
        """(T, k) symbols at `level` (its μ, None: no level) -> (T,) token ids, one prompt
        drawn from its posterior, or (0,): the prompt ignored. `abandon`, once set, stops the
        read at its next position (attacks.particle.SamplingAbandonedError)."""
        rng = np.random.default_rng(secrets.randbits(128))
        if rng.random() < self.ignore_prompt.get(level, 0.0):
            return torch.zeros(0, dtype=torch.long)
        lattice = self.posterior.lattice(symbols[None], mechanism)
        found = sample_posterior(
            self.model,
            self.bos_id,
            self.prefix,
            lattice,
            particles=self.particles,
            seed=secrets.randbits(63),
            abandon=abandon,
        )
        weights = found.log_weights[0].double().exp().numpy()
        return found.paths[0, rng.choice(self.particles, p=weights / weights.sum())]
