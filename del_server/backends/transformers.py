"""Backend over a Hugging Face causal LM and its KV cache.

Running sequences share one left-padded KV cache (`PaddedBatch`): a round is a single forward
pass over all of them, with the padding masked out and each row at its own position. That is
exact only under conditions `_pads_exactly` checks; other models decode row by row
(`SequentialBatch`), which is always correct.

transformers 5 names the cache `cache` (argument and output; `past_key_values` is deprecated).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from .base import DecodeBatch


@dataclass
class Prefilled:
    """One prefilled sequence: its KV cache and its length (the position of its next token)."""

    cache: Cache
    length: int


class TransformersBackend:
    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.dtype = model.get_input_embeddings().weight.dtype
        self.hidden_size = model.config.hidden_size
        self.pads_batches = _pads_exactly(model)

    @torch.inference_mode()
    def embed(self, token_ids: list[int]) -> torch.Tensor:
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        return self.model.get_input_embeddings()(ids)

    @torch.inference_mode()
    def prefill(self, inputs_embeds: torch.Tensor) -> tuple[torch.Tensor, Prefilled]:
        embeds = inputs_embeds.to(device=self.device, dtype=self.dtype)[None]  # (1, T, d)
        out = self.model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1], Prefilled(out.cache, embeds.shape[1])

    def new_batch(self) -> DecodeBatch:
        return PaddedBatch(self.model) if self.pads_batches else SequentialBatch(self.model)


class PaddedBatch:
    """All rows in one KV cache, left-padded to the longest; one forward pass per round.

    `mask` (rows, width) marks real cache entries; a row's next position is its own length,
    not the padded width, so rotary/absolute positions are exactly those of a lone sequence.
    Columns that only padding uses are trimmed when rows leave.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        self._model = model
        self._device = next(model.parameters()).device
        self._clear()

    def _clear(self) -> None:
        self._cache: Cache | None = None
        self._mask = torch.zeros((0, 0), dtype=torch.long, device=self._device)
        self._positions = torch.zeros(0, dtype=torch.long, device=self._device)

    @property
    def size(self) -> int:
        return self._positions.shape[0]

    def add(self, state: Prefilled) -> None:
        """All or nothing: every new tensor is built before any replaces the batch's."""
        row_mask = torch.ones((1, state.length), dtype=torch.long, device=self._device)
        position = torch.tensor([state.length], device=self._device)
        if self._cache is None:
            self._cache, self._mask, self._positions = state.cache, row_mask, position
            return
        width = max(self._mask.shape[1], state.length)
        joined = [
            (
                torch.cat([_left_pad(mine.keys, width), _left_pad(theirs.keys, width)]),
                torch.cat([_left_pad(mine.values, width), _left_pad(theirs.values, width)]),
            )
            for mine, theirs in zip(self._cache.layers, state.cache.layers, strict=True)
        ]
        mask = torch.cat([_left_pad_mask(self._mask, width), _left_pad_mask(row_mask, width)])
        positions = torch.cat([self._positions, position])
        for layer, (keys, values) in zip(self._cache.layers, joined, strict=True):
            layer.keys, layer.values = keys, values
        self._mask, self._positions = mask, positions

    def keep(self, rows: Sequence[int]) -> None:
        if not rows:
            self._clear()
            return
        if list(rows) == list(range(self.size)):
            return
        index = torch.tensor(rows, dtype=torch.long, device=self._device)
        self._mask, self._positions = self._mask[index], self._positions[index]
        start = int(self._mask.any(dim=0).nonzero()[0])  # first column some row still uses
        self._mask = self._mask[:, start:]
        for layer in self._cache.layers:
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]

    @torch.inference_mode()
    def decode(self, token_ids: Sequence[int]) -> torch.Tensor:
        ids = torch.tensor(token_ids, dtype=torch.long, device=self._device)[:, None]
        self._mask = F.pad(self._mask, (0, 1), value=1)
        out = self._model(
            input_ids=ids,
            attention_mask=self._mask,
            position_ids=self._positions[:, None],
            cache=self._cache,
            use_cache=True,
        )
        self._cache = out.cache
        self._positions = self._positions + 1
        return out.logits[:, -1]


class SequentialBatch:
    """Rows decoded one forward pass each: for caches that cannot be padded into one."""

    def __init__(self, model: PreTrainedModel) -> None:
        self._model = model
        self._device = next(model.parameters()).device
        self._caches: list[Cache] = []

    @property
    def size(self) -> int:
        return len(self._caches)

    def add(self, state: Prefilled) -> None:
        self._caches.append(state.cache)

    def keep(self, rows: Sequence[int]) -> None:
        self._caches = [self._caches[row] for row in rows]

    @torch.inference_mode()
    def decode(self, token_ids: Sequence[int]) -> torch.Tensor:
        logits = []
        for row, token_id in enumerate(token_ids):
            ids = torch.tensor([[token_id]], dtype=torch.long, device=self._device)
            out = self._model(input_ids=ids, cache=self._caches[row], use_cache=True)
            self._caches[row] = out.cache
            logits.append(out.logits[0, -1])
        return torch.stack(logits)


# Attention implementations that build their mask from the 2-D padding mask (checked against
# row-by-row decoding for eager and sdpa; flash attention unpads with it).
_MASKED_ATTENTION = {"eager", "sdpa", "flash_attention_2", "flash_attention_3"}


def _pads_exactly(model: PreTrainedModel) -> bool:
    """Whether one left-padded cache decodes every row exactly as it would decode alone.

    It needs full-attention cache layers (sliding-window or hybrid layers keep a different
    length per layer), an attention that honours the padding mask, and position-independent
    RoPE scaling (dynamic and longrope rescale by the largest position in the whole batch).
    """
    config = model.config
    layers = DynamicCache(config=config).layers
    rope = getattr(config, "rope_parameters", None) or {}
    per_layer_type = [v for v in rope.values() if isinstance(v, dict)]  # e.g. Gemma 3
    rope_types = {p.get("rope_type", "default") for p in per_layer_type or [rope]}
    return (
        all(type(layer) is DynamicLayer for layer in layers)
        and config._attn_implementation in _MASKED_ATTENTION
        and not rope_types & {"dynamic", "longrope"}
    )


def _left_pad(states: torch.Tensor, width: int) -> torch.Tensor:
    """(rows, heads, length, head_dim) -> (rows, heads, width, head_dim), zeros in front."""
    return F.pad(states, (0, 0, width - states.shape[-2], 0))


def _left_pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(mask, (width - mask.shape[-1], 0))
