"""What classification training minimises: the label's cross-entropy through the served path.

The prompt tokens go through the client's table and a mechanism's noise (fresh at every step),
then through exactly what the server runs (classification.EncoderClassifier: de-projection,
clean template, soft prompt, frozen encoder, pooling, head). A stage trains whichever of
these tensors it hands the optimiser.

Noise, z (…, k) -> x̂:
    binomial_noise   DEL's quantizer in torch, gradients straight through (noise.noisy): what
                     trains the projection itself
    mechanism_noise  any attacks.mechanisms.Mechanism (DEL's, the Gaussian baseline's), drawn
                     by its own privatize/decode: for heads and soft prompts, whose training
                     needs no gradient through the noise
    clip_only        no noise: the projected-prompt reference
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from del_client.mechanism import PrivacySpec

from ...adapter import Adapter, Head
from ...attacks.mechanisms import Mechanism
from ...classification import EncoderClassifier, EncoderInput
from ..noise import noisy

Noise = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def binomial_noise(spec: PrivacySpec) -> Noise:
    return lambda z, generator: noisy(z, spec, generator)


def mechanism_noise(mechanism: Mechanism) -> Noise:
    def draw(z: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        symbols = mechanism.privatize(z.detach().numpy(), rng)
        return torch.from_numpy(mechanism.decode(symbols)).to(z.dtype)

    return draw


def clip_only(clip: float) -> Noise:
    return lambda z, generator: z.clamp(-clip, clip)


class NoisyPath:
    """The frozen encoder and its template: batches of token ids -> label logits."""

    def __init__(self, model, *, cls_id: int, sep_id: int) -> None:
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.table = model.get_input_embeddings().weight.detach()  # (V, d)
        self.cls_id, self.sep_id = cls_id, sep_id

    def logits(
        self,
        adapter: Adapter,
        ids: list[torch.Tensor],
        head: Head,
        *,
        noise: Noise,
        generator: torch.Generator,
        soft_prompt: torch.Tensor | None = None,
        encoder: bool = True,
    ) -> torch.Tensor:
        """(B, L): each sentence's tokens projected, privatized, de-projected, classified
        (without `encoder`: from the symbols' moments alone, no encoder pass)."""
        sizes = [len(s) for s in ids]
        x_hat = noise(adapter.project(self.table[torch.cat(ids)]), generator)
        inputs = [
            EncoderInput(body, soft_prompt, head, x)
            for body, x in zip(
                adapter.deproject(x_hat).split(sizes), x_hat.split(sizes), strict=True
            )
        ]
        return self._classifier(adapter).logits(inputs, encoder=encoder)

    def raw_logits(self, adapter: Adapter, ids: list[torch.Tensor], head: Head):
        """(B, L) on the clean embeddings: the raw mechanism (no privacy)."""
        inputs = [EncoderInput(self.table[s], None, head) for s in ids]
        return self._classifier(adapter).logits(inputs)

    def _classifier(self, adapter: Adapter) -> EncoderClassifier:
        return EncoderClassifier(self.model, adapter, cls_id=self.cls_id, sep_id=self.sep_id)
