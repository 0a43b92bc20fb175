"""A method = how the user's prompt reaches the LLM: projection, mechanism, soft prompt.

    clean       the prompt's own embeddings: the reference, and exactly what the raw
                (no privacy) mechanism delivers, so raw embeddings share its utility
    projected   projection and clip without noise: what the projection alone costs
    no_prompt   nothing is sent: perfect privacy, zero communication; the continuation
                comes from BOS alone (with or without a soft prompt trained for that case)
    del         DEL: projection to k, binomial quantizer, the level's soft prompt; or, as an
                adapter with a particle reader serves it, the prompt read by the reader
    del_full    the same quantizer without projection (k = d)
    gaussian    Gaussian noise on the projected embedding, then quantized

A soft prompt and the reader are the server's post-processing: they change nothing that is
sent or that an attacker sees, so a method with either shares its plain twin's attack rows
and bits. The prompt path is the client's code (table lookup, del_client's quantizer)
followed by the server's front-end (decode and de-project, or the posterior front-end of an
adapter that has one, with the parameters trained for that method); only the noise generator
is a seeded one, for measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..adapter import Adapter, ParticleReading
from ..attacks.mechanisms import Mechanism
from ..front_end import PosteriorFrontEnd
from ..train.objective import FrozenLM

FAMILY_LABELS = {
    "clean": "clean / raw embeddings (no privacy)",
    "projected": "projected, no noise (no privacy)",
    "no_prompt": "no prompt",
    "del": "DEL",
    "del_full": "DEL without projection (k = d)",
    "gaussian": "Gaussian + quantization",
}
PRIVATE_FAMILIES = ("del", "del_full", "gaussian")


@dataclass(frozen=True, eq=False)
class Method:
    family: str
    adapter: Adapter | None = None  # None: the prompt's own embeddings (or no prompt)
    mechanism: Mechanism | None = None  # None: no noise
    soft_prompt: torch.Tensor | None = None  # (m, d)
    target_attack_rate: float | None = None  # the calibrated level it is matched to
    front_end: PosteriorFrontEnd | None = None  # None: W_d·x̂
    front_end_parameters: dict[str, torch.Tensor] | None = None  # None: the plain posterior mean
    reader: ParticleReading | None = None  # the prompt read by the particle reader (reading.py)

    @property
    def key(self) -> str:
        level = "" if self.target_attack_rate is None else f"@{self.target_attack_rate:g}"
        return f"{self.family}{self._variant[0]}{level}"

    @property
    def label(self) -> str:
        return FAMILY_LABELS[self.family] + self._variant[1]

    @property
    def _variant(self) -> tuple[str, str]:
        """(key suffix, label suffix) of what the server adds."""
        if self.reader is not None:
            return "+reader", " + particle reader"
        if self.soft_prompt is not None:
            return "+soft", " + soft prompt"
        return "", ""

    @property
    def server_side(self) -> bool:
        """Post-processed by the server (a soft prompt, the reader): sent and seen as its twin
        without them."""
        return self.soft_prompt is not None or self.reader is not None

    def with_soft_prompt(self, soft_prompt: torch.Tensor | None) -> Method:
        return replace(self, soft_prompt=soft_prompt)

    def describe(self) -> dict:
        mechanism = self.mechanism
        return {
            "key": self.key,
            "family": self.family,
            "label": self.label,
            "soft_prompt": self.soft_prompt is not None,
            "reader": self.reader is not None,
            "target_attack_rate": self.target_attack_rate,
            "projection_dim": self.adapter.projection_dim if self.adapter else None,
            "mechanism": mechanism.name if mechanism else None,
            "mu_token": mechanism.mu() if mechanism else None,
        }

    def prompt(
        self, lm: FrozenLM, ids: torch.Tensor, rng: np.random.Generator | None
    ) -> torch.Tensor | None:
        """(B, Tp) prompt ids -> (B, Tp, d) what the LLM sees in place of them, or None."""
        if self.family == "no_prompt":
            return None
        embedded = lm.embed(ids).detach()
        if self.adapter is None:
            return embedded
        with torch.no_grad():
            z = self.adapter.project(embedded.float())  # (B, Tp, k)
        if self.mechanism is None:
            x_hat = z.clamp(-self.adapter.clip, self.adapter.clip)
        else:
            flat = np.ascontiguousarray(z.reshape(-1, z.shape[-1]).cpu().numpy(), np.float32)
            symbols = self.mechanism.privatize(flat, rng)  # (B·Tp, k)
            if self.front_end is not None:
                symbols = symbols.reshape(*z.shape)
                return self.front_end.inputs(symbols, self.mechanism, self.front_end_parameters).to(
                    lm.device
                )
            x_hat = torch.from_numpy(self.mechanism.decode(symbols)).view(z.shape)
        with torch.no_grad():
            return self.adapter.deproject(x_hat.to(lm.device))
