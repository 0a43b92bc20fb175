"""What every stage optimises or measures: the continuation's loss after a private prompt.

Input layout, exactly as the server builds it at inference (generation.PromptBuilder):

    [soft prompt (m, d)] + [clean BOS (1, d)] + [de-projected prompt (Tp, d)] + [clean continuation]

and the loss is the mean next-token NLL of the continuation tokens only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from del_client.mechanism import PrivacySpec

from ..adapter import Adapter
from .noise import noisy


class FrozenLM:
    """The provider's LLM with every weight frozen; gradients reach only what is passed in."""

    def __init__(self, model: PreTrainedModel, bos_id: int | None) -> None:
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.bos_id = bos_id
        self.table = self.model.get_input_embeddings().weight  # (V, d)

    @property
    def device(self) -> torch.device:
        return self.table.device

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids.to(self.device)]

    def prefix(
        self,
        prompt: torch.Tensor | None,  # (B, Tp, d) or None: no prompt at all
        batch: int,
        soft_prompt: torch.Tensor | None = None,  # (m, d)
    ) -> torch.Tensor:
        """(B, m + 1 + Tp, d): [soft prompt] + [clean BOS] + prompt, the server's layout; the
        evaluation generates continuations after exactly this prefix."""
        parts = [self.table.new_zeros(batch, 0, self.table.shape[1])]  # nothing at all is valid
        if soft_prompt is not None:
            parts.append(soft_prompt.expand(batch, -1, -1))
        if self.bos_id is not None:
            parts.append(self.table[self.bos_id].expand(batch, 1, -1))
        if prompt is not None:
            parts.append(prompt)
        return torch.cat([p.to(self.table.dtype) for p in parts], dim=1)

    def continuation_loss(
        self,
        prompt: torch.Tensor | None,  # (B, Tp, d) or None: no prompt at all
        continuation: torch.Tensor,  # (B, Tc) ids
        soft_prompt: torch.Tensor | None = None,  # (m, d)
    ) -> torch.Tensor:
        """Mean NLL (nats/token) of `continuation` after the prefix."""
        logits, targets = self._continuation_logits(prompt, continuation, soft_prompt)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def continuation_nlls(
        self,
        prompt: torch.Tensor | None,
        continuation: torch.Tensor,
        soft_prompt: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B,) each continuation's NLL (nats, summed over its tokens) after the prefix."""
        logits, targets = self._continuation_logits(prompt, continuation, soft_prompt)
        return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").sum(dim=-1)

    def _continuation_logits(
        self,
        prompt: torch.Tensor | None,
        continuation: torch.Tensor,
        soft_prompt: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Tc, V) float32 logits predicting each continuation token, (B, Tc) its ids."""
        targets = continuation.to(self.device)
        prefix = self.prefix(prompt, continuation.shape[0], soft_prompt)
        inputs = torch.cat([prefix, self.embed(targets).to(prefix.dtype)], dim=1)
        # Logits for the last Tc + 1 positions; the final one predicts past the window.
        logits = self.model(inputs_embeds=inputs, logits_to_keep=targets.shape[1] + 1).logits
        return logits[:, :-1].float(), targets


def private_prompt(
    lm: FrozenLM,
    adapter: Adapter,
    prompt_ids: torch.Tensor,  # (B, Tp)
    spec: PrivacySpec | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """(B, Tp, d): project, clip, privatize (unless spec is None), de-project."""
    z = adapter.project(lm.embed(prompt_ids))  # (B, Tp, k)
    x = z.clamp(-adapter.clip, adapter.clip) if spec is None else noisy(z, spec, generator)
    return adapter.deproject(x)
