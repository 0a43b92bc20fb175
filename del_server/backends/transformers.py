"""Backend over a Hugging Face causal LM and its KV cache.

Running sequences share one left-padded KV cache (`PaddedBatch`): a round is a single forward
pass over all of them, with the padding masked out and each row at its own position. That is
exact only under conditions `_pads_exactly` checks; other models decode row by row
(`SequentialBatch`), which is always correct. Requests that join in the same round are
prefilled together the same way: left-padded to the longest prompt, one forward pass. Llama
models run those passes through `llama.LlamaPath` (the same mathematics in far fewer Python
steps), the others through transformers' forward.

transformers 5 names the cache `cache` (argument and output; `past_key_values` is deprecated).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache, DynamicLayer

from .base import DecodeBatch
from .llama import LlamaPath


@dataclass
class Prefilled:
    """Prefilled sequences: their keys and values per layer (rows, kv_heads, width, head_dim),
    left-padded to the longest, and which entries are real. `mask` (rows, width) is True on
    real entries; `lengths` (rows,) are the real lengths, i.e. each row's next position.
    `cache` is transformers' own cache of a row prefilled alone by transformers (kept for
    the caches a padded batch cannot hold)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    lengths: torch.Tensor
    cache: Cache | None = None

    @classmethod
    def of_cache(cls, cache: Cache, mask: torch.Tensor, lengths: torch.Tensor) -> Prefilled:
        keys = [layer.keys for layer in cache.layers]
        return cls(keys, [layer.values for layer in cache.layers], mask, lengths, cache)

    @property
    def rows(self) -> int:
        return self.mask.shape[0]


class TransformersBackend:
    """`fast`: run Llama models' passes through `LlamaPath` (where it applies)."""

    def __init__(self, model: PreTrainedModel, *, fast: bool = True) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.dtype = model.get_input_embeddings().weight.dtype
        self.hidden_size = model.config.hidden_size
        self.pads_batches = _pads_exactly(model)
        use_fast = fast and self.pads_batches and LlamaPath.supports(model)
        self.fast: LlamaPath | None = LlamaPath(model) if use_fast else None

    @torch.inference_mode()
    def embed(self, token_ids: list[int]) -> torch.Tensor:
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        return self.model.get_input_embeddings()(ids)

    def prefill(self, inputs_embeds: torch.Tensor) -> tuple[torch.Tensor, Prefilled]:
        """One sequence: (T, d) -> (next-token logits (V,), its state)."""
        logits, state = self.prefill_many([inputs_embeds])
        return logits[0], state

    @torch.inference_mode()
    def prefill_many(
        self, inputs: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, Prefilled | list[Prefilled]]:
        """Several sequences: [(T_i, d)] -> (next-token logits (n, V), state for `add`).

        One forward pass, left-padded to the longest with the padding masked out and every row
        at its own positions (exact where a padded batch is); one pass each otherwise.
        """
        if self.fast is not None:
            logits, keys, values, mask, lengths = self.fast.prefill(inputs)
            return logits, Prefilled(keys, values, mask, lengths)
        if len(inputs) == 1:
            embeds = inputs[0].to(device=self.device, dtype=self.dtype)[None]  # (1, T, d)
            out = self.model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
            length = embeds.shape[1]
            mask = torch.ones((1, length), dtype=torch.bool, device=self.device)
            lengths = torch.tensor([length], device=self.device)
            return out.logits[:, -1], Prefilled.of_cache(out.cache, mask, lengths)
        if not self.pads_batches:
            alone = [self.prefill_many([x]) for x in inputs]
            return torch.cat([logits for logits, _ in alone]), [state for _, state in alone]
        lengths = [x.shape[0] for x in inputs]
        width = max(lengths)
        embeds = torch.zeros(
            (len(inputs), width, self.hidden_size), dtype=self.dtype, device=self.device
        )
        mask = torch.zeros((len(inputs), width), dtype=torch.bool, device=self.device)
        for row, (x, length) in enumerate(zip(inputs, lengths, strict=True)):
            embeds[row, width - length :] = x.to(device=self.device, dtype=self.dtype)
            mask[row, width - length :] = True
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )
        state = Prefilled.of_cache(out.cache, mask, torch.tensor(lengths, device=self.device))
        return out.logits[:, -1], state

    def new_batch(self) -> DecodeBatch:
        if self.pads_batches:
            return PaddedBatch(self.model, self.fast)
        return SequentialBatch(self.model)


class _SlotLayer(CacheLayerMixin):
    """One layer of a `PaddedBatch`: keys and values in buffers allocated ahead, written in
    place (a decode step writes one column; nothing is concatenated)."""

    def __init__(self, batch: PaddedBatch, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        # A proxy, not a reference: a cycle would keep every batch's buffers until the cyclic
        # collector ran (a calibration's particle runs piled up gigabytes before it did).
        self._batch = weakref.proxy(batch)
        self.key_buffer, self.value_buffer = keys, values  # (rows, heads, columns, head_dim)
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self._batch
        rows, start, end = batch.size, batch._start, batch._end
        stop = end + key_states.shape[-2]
        self.key_buffer[:rows, :, end:stop] = key_states
        self.value_buffer[:rows, :, end:stop] = value_states
        return self.key_buffer[:rows, :, start:stop], self.value_buffer[:rows, :, start:stop]

    def get_seq_length(self) -> int:
        return self._batch._end - self._batch._start

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1


class PaddedBatch:
    """All rows in one KV cache; one forward pass per round.

    The cache lives in buffers allocated ahead (`_SlotLayer`), rows by columns, used from
    column `_start` to `_end`; each round writes column `_end` of every row in place. A row
    that joins is copied in once, ending at `_end` (columns before it are padding); a row that
    leaves is overwritten by the last row (its padding goes when no row uses a column any
    more). Buffers grow by doubling, and only then is the cache copied as a whole.

    `_mask` (rows, columns) marks real entries; a row's next position is its own length, not
    the padded width, so rotary/absolute positions are exactly those of a lone sequence.
    """

    MIN_ROWS = 4
    MIN_COLUMNS = 64

    def __init__(self, model: PreTrainedModel, fast: LlamaPath | None = None) -> None:
        self._model = model
        self._fast = fast
        self._device = next(model.parameters()).device
        self._dtype = model.get_input_embeddings().weight.dtype
        self._attention = model.config._attn_implementation
        self._cache: Cache | None = None
        self._layers: list[_SlotLayer] = []
        self._size = 0
        self._start = self._end = 0  # the columns in use
        self._mask = torch.zeros((0, 0), dtype=torch.bool, device=self._device)
        self._positions = torch.zeros(0, dtype=torch.long, device=self._device)

    @property
    def size(self) -> int:
        return self._size

    @property
    def allocated_bytes(self) -> int:
        """Bytes of the KV buffers, used or not."""
        return sum(layer.key_buffer.nbytes + layer.value_buffer.nbytes for layer in self._layers)

    @property
    def used_bytes(self) -> int:
        """Bytes of the KV cache the rows use, padding included."""
        cells = self._mask.shape[0] * self._mask.shape[1]
        used = self._size * (self._end - self._start)
        return self.allocated_bytes * used // cells if cells else 0

    @torch.inference_mode()
    def add(self, state: Prefilled) -> None:
        """Append the rows of `state`. All or nothing: the batch is unchanged when it fails."""
        rows, width = state.mask.shape
        self._reserve(self._size + rows, width, state)
        first, end = self._size, self._end
        begin = end - width
        padded = not bool(state.mask.all())
        cells = state.mask[:, None, :, None]
        for mine, keys, values in zip(self._layers, state.keys, state.values, strict=True):
            for buffer, states in ((mine.key_buffer, keys), (mine.value_buffer, values)):
                target = buffer[first : first + rows, :, begin:end]
                target.copy_(states)
                if padded:  # whatever the padding computed, it must stay finite: zero it
                    target.masked_fill_(~cells, 0)
        self._mask[first : first + rows] = False
        self._mask[first : first + rows, begin:end] = state.mask
        self._positions[first : first + rows] = state.lengths
        self._start = min(self._start, begin) if first else begin
        self._size = first + rows

    @torch.inference_mode()
    def keep(self, rows: Sequence[int]) -> None:
        """Also where a row is kept more than once, as copies: the batch may grow."""
        rows = list(rows)
        if not rows:
            self._size = 0
            self._start = self._end = 0
            return
        self._reserve(len(rows), 0)
        moved = [(new, old) for new, old in enumerate(rows) if new != old]
        if moved:
            to = torch.tensor([new for new, _ in moved], device=self._device)
            source = torch.tensor([old for _, old in moved], device=self._device)
            columns = slice(self._start, self._end)
            for layer in self._layers:
                for buffer in (layer.key_buffer, layer.value_buffer):
                    live = buffer[:, :, columns]
                    live[to] = live[source]
            self._mask[to] = self._mask[source]
            self._positions[to] = self._positions[source]
        self._size = len(rows)
        used = self._mask[: self._size, self._start : self._end].any(dim=0)
        self._start += int(used.nonzero()[0])  # the first column some row still uses

    def states(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's (keys, values) of the rows, (size, kv_heads, tokens, head_dim), as
        transformers' DynamicCache takes them: for rows of one length, with no padding."""
        columns = slice(self._start, self._end)
        if not self._mask[: self._size, columns].all():
            raise ValueError("rows of different lengths have no states without padding")
        return [
            (
                layer.key_buffer[: self._size, :, columns],
                layer.value_buffer[: self._size, :, columns],
            )
            for layer in self._layers
        ]

    @torch.inference_mode()
    def decode(self, token_ids: Sequence[int]) -> torch.Tensor:
        rows = self._size
        self._reserve(rows, 0)
        end = self._end
        ids = torch.tensor(token_ids, dtype=torch.long, device=self._device)
        self._mask[:rows, end] = True
        mask = self._mask[:rows, self._start : end + 1]
        if self._fast is not None:
            buffers = [(layer.key_buffer, layer.value_buffer) for layer in self._layers]
            logits = self._fast.decode(ids, self._positions[:rows], mask, buffers, self._start, end)
            self._end = end + 1
            self._positions[:rows] += 1
            return logits
        out = self._model(
            input_ids=ids[:, None],
            attention_mask=self._attention_mask(mask),
            position_ids=self._positions[:rows, None],
            cache=self._cache,
            use_cache=True,
        )
        self._end = end + 1
        self._positions[:rows] += 1
        return out.logits[:, -1]

    def _attention_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The mask of a decode step (rows, columns) as the attention takes it: built here in
        one operation, as transformers would build it, for the attentions whose 4-D mask
        transformers passes on unchanged (eager: additive, sdpa: boolean); 2-D otherwise."""
        if self._attention == "sdpa":
            return mask[:, None, None, :]
        if self._attention == "eager":
            bias = torch.zeros(mask.shape, dtype=self._dtype, device=self._device)
            return bias.masked_fill_(~mask, torch.finfo(self._dtype).min)[:, None, None, :]
        return mask

    def _reserve(self, rows: int, before: int, like: Prefilled | None = None) -> None:
        """Room for `rows` rows, `before` columns before `_end` and one column from `_end` on.

        When the buffers are too small they are replaced by ones twice the size the batch
        needs, holding only the columns in use (the cache's one copy as a whole).
        """
        if self._size == 0:
            self._start = self._end = before
        row_capacity, column_capacity = self._mask.shape
        if self._layers and rows <= row_capacity and before <= self._end < column_capacity:
            return
        live = self._end - self._start
        end = max(live, before)
        row_capacity = max(rows, self.MIN_ROWS, row_capacity * (2 if rows > row_capacity else 1))
        column_capacity = max(self.MIN_COLUMNS, 2 * (end + 1))
        old, new = slice(self._start, self._end), slice(end - live, end)
        if self._layers:
            current = [(layer.key_buffer, layer.value_buffer) for layer in self._layers]
        else:
            current = list(zip(like.keys, like.values, strict=True))
        buffers = []
        for pair in current:
            grown = []
            for states in pair:
                buffer = states.new_zeros(
                    (row_capacity, states.shape[1], column_capacity, states.shape[3])
                )
                if self._layers:
                    buffer[: self._size, :, new] = states[: self._size, :, old]
                grown.append(buffer)
            buffers.append(grown)
        mask = torch.zeros((row_capacity, column_capacity), dtype=torch.bool, device=self._device)
        mask[: self._size, new] = self._mask[: self._size, old]
        positions = torch.zeros(row_capacity, dtype=torch.long, device=self._device)
        positions[: self._size] = self._positions[: self._size]
        # Every new tensor is built: only now do they replace the batch's.
        if self._layers:
            for layer, (keys, values) in zip(self._layers, buffers, strict=True):
                layer.key_buffer, layer.value_buffer = keys, values
        else:
            self._layers = [_SlotLayer(self, keys, values) for keys, values in buffers]
            self._cache = Cache(layers=self._layers)
        self._mask, self._positions = mask, positions
        self._start, self._end = end - live, end


class SequentialBatch:
    """Rows decoded one forward pass each: for caches that cannot be padded into one."""

    def __init__(self, model: PreTrainedModel) -> None:
        self._model = model
        self._device = next(model.parameters()).device
        self._caches: list[Cache] = []

    @property
    def size(self) -> int:
        return len(self._caches)

    def add(self, state: Prefilled | list[Prefilled]) -> None:
        states = state if isinstance(state, list) else [state]
        if any(s.rows != 1 for s in states):
            raise ValueError("a sequential batch takes sequences prefilled one by one")
        self._caches += [s.cache or self._cache_of(s) for s in states]

    def _cache_of(self, state: Prefilled) -> Cache:
        """transformers' cache holding a row `LlamaPath` prefilled (full attention only)."""
        cache = DynamicCache(config=self._model.config)
        for layer, (keys, values) in enumerate(zip(state.keys, state.values, strict=True)):
            cache.update(keys, values, layer)
        return cache

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
