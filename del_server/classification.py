"""The classification path: private prompts in, label probabilities out, one encoder forward.

Each prompt's decoded symbols x̂ (T, k) are de-projected (the adapter), its level's soft prompt
goes after a clean [CLS], and a clean [SEP] closes it: the template tokens are public, so the
server adds them without noise. The frozen encoder reads the batch (right-padded, masked) and
its last hidden states are mean-pooled over each row's real positions. The level's head reads
the features

    [pooled encoder output (d), mean of x̂ over the tokens (k), mean of x̂² (k)]

The moments are the evidence the symbols carry in aggregate: with a few coordinates per token
(what keeps a token's identity hidden) a sentence's label is mostly in them, and the encoder
adds what word order says. A raw prompt has no x̂: its moments are zero. Training
(train/classification/) runs these same functions with gradients, so what is served is what
was trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedModel

from .adapter import Adapter, Head


@dataclass(frozen=True, eq=False)
class EncoderInput:
    """One prompt as the encoder will read it (without its template)."""

    body: torch.Tensor  # (T, d) de-projected (private) or raw embeddings
    soft_prompt: torch.Tensor | None  # (m, d)
    head: Head
    x_hat: torch.Tensor | None = None  # (T, k) decoded symbols; None for a raw prompt


class EncoderClassifier:
    """A frozen encoder with its template and an adapter: batches of prompts -> logits."""

    def __init__(self, model: PreTrainedModel, adapter: Adapter, *, cls_id: int, sep_id: int):
        self.model = model
        self.adapter = adapter
        embeddings = model.get_input_embeddings().weight
        self._cls = embeddings[cls_id].detach()
        self._sep = embeddings[sep_id].detach()

    def logits(self, inputs: list[EncoderInput], *, encoder: bool = True) -> torch.Tensor:
        """(B, L) label logits; differentiable in bodies, soft prompts and heads. Without
        `encoder` the pooled part of the features is zero (the projection's training stage,
        which needs no encoder pass)."""
        features = self.features(inputs, encoder=encoder)
        return torch.stack([item.head(features[i]) for i, item in enumerate(inputs)])

    def features(self, inputs: list[EncoderInput], *, encoder: bool = True) -> torch.Tensor:
        """(B, d + 2k): pooled encoder output, then the mean of x̂ and of x̂²."""
        k, d = self.adapter.projection_dim, self.adapter.hidden_size
        dtype = self._cls.dtype
        pooled = self._pooled(inputs) if encoder else torch.zeros(len(inputs), d, dtype=dtype)
        moments = torch.stack(
            [
                torch.cat([item.x_hat.mean(dim=0), item.x_hat.square().mean(dim=0)]).to(dtype)
                if item.x_hat is not None
                else torch.zeros(2 * k, dtype=dtype)
                for item in inputs
            ]
        )
        return torch.cat([pooled, moments], dim=1)

    def _pooled(self, inputs: list[EncoderInput]) -> torch.Tensor:
        rows = [self._row(item) for item in inputs]
        batch = pad_sequence(rows, batch_first=True)
        lengths = torch.tensor([row.shape[0] for row in rows])
        mask = (torch.arange(batch.shape[1]) < lengths.unsqueeze(1)).long()
        hidden = self.model(inputs_embeds=batch, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1)

    def _row(self, item: EncoderInput) -> torch.Tensor:
        dtype = self._cls.dtype
        parts = [self._cls.unsqueeze(0)]
        if item.soft_prompt is not None:
            parts.append(item.soft_prompt.to(dtype))
        parts += [item.body.to(dtype), self._sep.unsqueeze(0)]
        return torch.cat(parts)
