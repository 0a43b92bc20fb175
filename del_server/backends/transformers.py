"""Backend over a Hugging Face causal LM with its KV cache, one sequence per state.

transformers 5 names the cache `cache` (argument and output; `past_key_values` is deprecated).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache


class TransformersBackend:
    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.dtype = model.get_input_embeddings().weight.dtype
        self.hidden_size = model.config.hidden_size

    @torch.inference_mode()
    def embed(self, token_ids: list[int]) -> torch.Tensor:
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        return self.model.get_input_embeddings()(ids)

    @torch.inference_mode()
    def prefill(self, inputs_embeds: torch.Tensor) -> tuple[torch.Tensor, Cache]:
        embeds = inputs_embeds.to(device=self.device, dtype=self.dtype)[None]  # (1, T, d)
        out = self.model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1], out.cache

    @torch.inference_mode()
    def decode(self, token_id: int, state: Cache) -> tuple[torch.Tensor, Cache]:
        ids = torch.tensor([[token_id]], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, cache=state, use_cache=True)
        return out.logits[0, -1], out.cache
