"""The classification path: private prompts in, label probabilities out, one encoder forward.

Each prompt's decoded symbols are de-projected (the adapter), its level's soft prompt goes
after a clean [CLS], and a clean [SEP] closes it: the template tokens are public, so the server
adds them without noise. The frozen encoder reads the batch (right-padded, masked), its last
hidden states are mean-pooled over each row's real positions, and the row's level's head
gives the logits. Training (train/classify.py) runs the same function with gradients, so what
is served is what was trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedModel

from .adapter import Adapter, LinearHead


@dataclass(frozen=True, eq=False)
class EncoderInput:
    """One prompt as the encoder will read it (without its template)."""

    body: torch.Tensor  # (T, d) de-projected (private) or raw embeddings
    soft_prompt: torch.Tensor | None  # (m, d)
    head: LinearHead


class EncoderClassifier:
    """A frozen encoder with its template and an adapter: batches of prompts -> logits."""

    def __init__(self, model: PreTrainedModel, adapter: Adapter, *, cls_id: int, sep_id: int):
        self.model = model
        self.adapter = adapter
        embeddings = model.get_input_embeddings().weight
        self._cls = embeddings[cls_id].detach()
        self._sep = embeddings[sep_id].detach()

    def logits(self, inputs: list[EncoderInput]) -> torch.Tensor:
        """(B, L) label logits; differentiable in bodies, soft prompts and heads."""
        rows = [self._row(item) for item in inputs]
        batch = pad_sequence(rows, batch_first=True)
        lengths = torch.tensor([row.shape[0] for row in rows])
        mask = (torch.arange(batch.shape[1]) < lengths.unsqueeze(1)).long()
        hidden = self.model(inputs_embeds=batch, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
        return torch.stack([item.head(pooled[i]) for i, item in enumerate(inputs)])

    def _row(self, item: EncoderInput) -> torch.Tensor:
        dtype = self._cls.dtype
        parts = [self._cls.unsqueeze(0)]
        if item.soft_prompt is not None:
            parts.append(item.soft_prompt.to(dtype))
        parts += [item.body.to(dtype), self._sep.unsqueeze(0)]
        return torch.cat(parts)
