"""The client's quantizer in torch, for training and evaluation on the provider's side.

Same law as del_client.mechanism (clip, N ~ Binomial(K, 1/2 + x/(2A)), x̂ = A(2N/K − 1)),
drawn with torch's seeded generator: these draws are training noise, not privacy noise, so a
reproducible statistical generator is the right tool here. The parameters come from
del_client's PrivacySpec, so the calibration and the derivation of A exist once.
"""

from __future__ import annotations

import torch

from del_client.mechanism import PrivacySpec


def symbols(z: torch.Tensor, spec: PrivacySpec, generator: torch.Generator) -> torch.Tensor:
    """(…, k) projected embeddings -> the symbols N (counts, float) the client would send,
    drawn on the generator's device (the CPU for the training loop's)."""
    p = (0.5 + z.detach().clamp(-spec.clip, spec.clip) / (2 * spec.scale)).to(generator.device)
    return torch.binomial(torch.full_like(p, float(spec.levels)), p, generator=generator)


def noisy(z: torch.Tensor, spec: PrivacySpec, generator: torch.Generator) -> torch.Tensor:
    """(…, k) projected embeddings -> decoded x̂ of the same shape.

    Gradients pass straight through the sampling (x̂ = x + (x̂ − x).detach()), which is the
    unbiased estimator's expectation, so noise-aware training can move the projection.
    """
    x = z.clamp(-spec.clip, spec.clip)
    counts = symbols(z, spec, generator).to(z.device)
    x_hat = spec.scale * (2 * counts / spec.levels - 1)
    return x + (x_hat - x).detach()
