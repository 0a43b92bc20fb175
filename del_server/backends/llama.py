"""Llama's forward pass in few torch operations, over `PaddedBatch`'s cache buffers.

A small model spends nearly all of a forward pass in Python: transformers' modules, hooks,
mask builders and a cache that concatenates. The same mathematics written as one function
of the model's own weights runs a decoding step two to three times faster on stories260K
(1.2 ms instead of 3.3 at one row). It is used only for `LlamaForCausalLM` with a static
rotary embedding, SiLU and eager or sdpa attention (`LlamaPath.supports`); tests check it
against transformers to 1e-4 and the golden greedy ids. Everything else (and anything it does
not cover) runs through transformers as before.

Numerics follow transformers' Llama: RMSNorm in float32 cast back, rotary tables in float32
cast to the model's dtype, the attention scale on the scores (as transformers' eager
attention: scaling the queries instead rounds differently in bfloat16 and float16, where it
changed greedy continuations of stories260K), softmax in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

# Rotary types whose frequencies are fixed at load time (dynamic and longrope rescale with
# the position, and are refused by the padded batch anyway).
STATIC_ROPE = {"default", "linear", "llama3"}


@dataclass(frozen=True)
class _Layer:
    norm1: torch.Tensor
    q: torch.nn.Linear
    k: torch.nn.Linear
    v: torch.nn.Linear
    o: torch.nn.Linear
    norm2: torch.Tensor
    gate: torch.nn.Linear
    up: torch.nn.Linear
    down: torch.nn.Linear
    scaling: float


class LlamaPath:
    """Prefill and decoding steps of a Llama model, exact to transformers' own."""

    @staticmethod
    def supports(model: PreTrainedModel) -> bool:
        from transformers import LlamaForCausalLM

        config = model.config
        rope = getattr(config, "rope_parameters", None) or {}
        return (
            type(model) is LlamaForCausalLM
            and config.hidden_act == "silu"
            and rope.get("rope_type", "default") in STATIC_ROPE
            and config._attn_implementation in {"eager", "sdpa"}
        )

    def __init__(self, model: PreTrainedModel) -> None:
        inner = model.model
        attention = inner.layers[0].self_attn
        self.heads = model.config.num_attention_heads
        self.kv_heads = model.config.num_key_value_heads
        self.head_dim = attention.head_dim
        self.groups = self.heads // self.kv_heads
        self.eps = inner.norm.variance_epsilon
        self.dtype = inner.embed_tokens.weight.dtype
        self.layers = [
            _Layer(
                norm1=layer.input_layernorm.weight,
                q=layer.self_attn.q_proj,
                k=layer.self_attn.k_proj,
                v=layer.self_attn.v_proj,
                o=layer.self_attn.o_proj,
                norm2=layer.post_attention_layernorm.weight,
                gate=layer.mlp.gate_proj,
                up=layer.mlp.up_proj,
                down=layer.mlp.down_proj,
                scaling=layer.self_attn.scaling,
            )
            for layer in inner.layers[: model.config.num_hidden_layers]
        ]
        self.embed = inner.embed_tokens.weight
        self.norm = inner.norm.weight
        self.head = model.lm_head
        self.inv_freq = inner.rotary_emb.inv_freq.float()
        self.rope_scaling = inner.rotary_emb.attention_scaling
        self.min = torch.finfo(self.dtype).min

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(self.dtype)

    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        cos = (angles.cos() * self.rope_scaling).to(self.dtype)
        sin = (angles.sin() * self.rope_scaling).to(self.dtype)
        return cos, sin

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def _softmax(self, scores: torch.Tensor) -> torch.Tensor:
        if self.dtype == torch.float32:
            return torch.softmax(scores, dim=-1)
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(self.dtype)

    def _mlp(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        h = self._rms_norm(x, layer.norm2)
        return x + layer.down(F.silu(layer.gate(h)) * layer.up(h))

    @torch.inference_mode()
    def prefill(
        self, inputs: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """[(T_i, d)] prompt embeddings, left-padded to the longest -> (next-token logits
        (n, V), keys and values per layer (n, kv_heads, width, head_dim), mask (n, width),
        lengths (n,))."""
        rows, width = len(inputs), max(x.shape[0] for x in inputs)
        device = self.embed.device
        x = torch.zeros((rows, width, self.embed.shape[1]), dtype=self.dtype, device=device)
        mask = torch.zeros((rows, width), dtype=torch.bool, device=device)
        for row, prompt in enumerate(inputs):
            x[row, width - prompt.shape[0] :] = prompt.to(device=device, dtype=self.dtype)
            mask[row, width - prompt.shape[0] :] = True
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cos, sin = (t[:, None] for t in self._rotary(positions))  # (n, 1, width, head_dim)
        causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
        allowed = causal[None] & mask[:, None, :]  # (n, query, key)
        bias = torch.zeros(allowed.shape, dtype=self.dtype, device=device)
        bias = bias.masked_fill_(~allowed, self.min)[:, None, None]  # (n, 1, 1, query, key)
        keys, values = [], []
        for layer in self.layers:
            h = self._rms_norm(x, layer.norm1)
            q = layer.q(h).view(rows, width, self.heads, self.head_dim).transpose(1, 2)
            k = layer.k(h).view(rows, width, self.kv_heads, self.head_dim).transpose(1, 2)
            v = layer.v(h).view(rows, width, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            keys.append(k)
            values.append(v)
            q = q.reshape(rows, self.kv_heads, self.groups, width, self.head_dim)
            scores = torch.matmul(q, k[:, :, None].transpose(-1, -2)) * layer.scaling + bias
            out = torch.matmul(
                self._softmax(scores), v[:, :, None]
            )  # (n, kv_heads, groups, width, head_dim)
            out = out.reshape(rows, self.heads, width, self.head_dim).transpose(1, 2)
            x = x + layer.o(out.reshape(rows, width, self.heads * self.head_dim))
            x = self._mlp(layer, x)
        logits = self.head(self._rms_norm(x[:, -1], self.norm))
        lengths = mask.sum(dim=1)
        return logits, keys, values, mask, lengths

    @torch.inference_mode()
    def decode(
        self,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        buffers: Sequence[tuple[torch.Tensor, torch.Tensor]],
        start: int,
        end: int,
    ) -> torch.Tensor:
        """One token for each of the first n rows of the cache `buffers` (per layer, keys and
        values (rows, kv_heads, columns, head_dim)): its keys and values are written at column
        `end`, it attends to columns `start`..`end` where `mask` (n, end + 1 - start) is True.
        Returns the next-token logits (n, V)."""
        rows = token_ids.shape[0]
        x = F.embedding(token_ids, self.embed)  # (n, d)
        cos, sin = (t[:, None] for t in self._rotary(positions))  # (n, 1, head_dim)
        bias = torch.zeros(mask.shape, dtype=self.dtype, device=mask.device)
        bias = bias.masked_fill_(~mask, self.min)[:, None, None]  # (n, 1, 1, columns)
        for layer, (key_buffer, value_buffer) in zip(self.layers, buffers, strict=True):
            h = self._rms_norm(x, layer.norm1)
            q = layer.q(h).view(rows, self.heads, self.head_dim)
            k = layer.k(h).view(rows, self.kv_heads, self.head_dim)
            key_buffer[:rows, :, end] = self._rotate(k, cos, sin)
            value_buffer[:rows, :, end] = layer.v(h).view(rows, self.kv_heads, self.head_dim)
            keys = key_buffer[:rows, :, start : end + 1]
            values = value_buffer[:rows, :, start : end + 1]
            q = self._rotate(q, cos, sin).view(rows, self.kv_heads, self.groups, self.head_dim)
            scores = torch.matmul(q, keys.transpose(-1, -2)) * layer.scaling + bias
            out = torch.matmul(self._softmax(scores), values)
            out = out.reshape(rows, self.heads * self.head_dim)
            x = self._mlp(layer, x + layer.o(out))
        return self.head(self._rms_norm(x, self.norm))
