"""What classification training minimises: the label's cross-entropy through the served path.

The prompt tokens go through the client's table and the mechanism's noise (fresh at every
step, gradients straight through: noise.noisy), then through exactly what the server runs
(classification.EncoderClassifier: de-projection, clean template, soft prompt, frozen
encoder, pooling, head). A stage trains whichever of these tensors it hands the optimiser.
"""

from __future__ import annotations

import torch

from del_client.mechanism import PrivacySpec

from ...adapter import Adapter, LinearHead
from ...classification import EncoderClassifier, EncoderInput
from ..noise import noisy


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
        head: LinearHead,
        *,
        spec: PrivacySpec | None,
        generator: torch.Generator | None,
        soft_prompt: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, L): each sentence's tokens projected, privatized at `spec` (None: only
        clipped, no noise), de-projected and classified."""
        z = adapter.project(self.table[torch.cat(ids)])
        x_hat = z.clamp(-adapter.clip, adapter.clip) if spec is None else noisy(z, spec, generator)
        bodies = adapter.deproject(x_hat).split([len(s) for s in ids])
        return self._classify(adapter, [EncoderInput(b, soft_prompt, head) for b in bodies])

    def raw_logits(self, adapter: Adapter, ids: list[torch.Tensor], head: LinearHead):
        """(B, L) on the clean embeddings: the raw mechanism (no privacy)."""
        return self._classify(adapter, [EncoderInput(self.table[s], None, head) for s in ids])

    def _classify(self, adapter: Adapter, inputs: list[EncoderInput]) -> torch.Tensor:
        classifier = EncoderClassifier(self.model, adapter, cls_id=self.cls_id, sep_id=self.sep_id)
        return classifier.logits(inputs)
