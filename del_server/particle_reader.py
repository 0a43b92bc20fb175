"""The third way to read a private prompt: decode it as the strongest attacker would, for the
user, and let the LLM continue what was decoded.

The server runs the particle sampler of attacks/particle.py on the request's symbols:
particles drawn from the prompt's posterior under the LLM itself (after the adapter's reader
prefix, the soft prompt trained with nothing sent), twisted by the bigram prior's look-ahead.
The engine then gets one particle, drawn by weight, as clean tokens after the same prefix.
Generating after a particle drawn by its weight is an exact draw from the posterior
predictive Σ_i w_i · P_LM(continuation | prefix, path_i): the mixture whose held-out loss
training records for each level (train/evaluate.py) and docs/eval/frontier/mixture plots.
Sampling settings apply to the chosen particle's continuation (at temperature 1 the served
distribution is that mixture exactly).

Everything here is post-processing of the symbols: no privacy cost. The cost is compute: one
batched forward pass of `particles` rows per prompt token, before the engine's prefill.
"""

from __future__ import annotations

import secrets
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

    @classmethod
    def of(
        cls, adapter: Adapter, model: PreTrainedModel, bos_id: int | None
    ) -> ParticleReader | None:
        """The adapter's reader for `model`; None when the adapter has none."""
        if adapter.reader is None:
            return None
        embeddings = model.get_input_embeddings().weight
        posterior = PosteriorFrontEnd.of(adapter, embeddings)
        prefix = adapter.reader.prefix.to(embeddings.device, embeddings.dtype)
        return cls(model, bos_id, prefix, posterior, adapter.reader.particles)

    def read(self, symbols: np.ndarray, mechanism: Mechanism) -> torch.Tensor:
        """(T, k) symbols -> (T,) token ids: one prompt drawn from its posterior."""
        lattice = self.posterior.lattice(symbols[None], mechanism)
        found = sample_posterior(
            self.model,
            self.bos_id,
            self.prefix,
            lattice,
            particles=self.particles,
            seed=secrets.randbits(63),
        )
        weights = found.log_weights[0].double().exp().numpy()
        chosen = np.random.default_rng(secrets.randbits(128)).choice(
            self.particles, p=weights / weights.sum()
        )
        return found.paths[0, chosen]
